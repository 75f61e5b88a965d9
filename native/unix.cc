// auditrelay_unix: AF_UNIX datagrams for Node, which has none: sd_notify ($NOTIFY_SOCKET) and syslog (/dev/log).
//
//   sendDatagram(path: string, data: Buffer): void
//       One datagram to `path` from a fresh socket (sd_notify). '@name' is the abstract socket "\0name".
//   connectDatagram(path: string): number
//       A connected, non-blocking, close-on-exec datagram socket (syslog's /dev/log); close it with fs.closeSync.
//   sendOn(fd: number, data: Buffer): void
//       send() on such a socket.
//
// Every send is non-blocking (MSG_DONTWAIT) and never raises SIGPIPE: a receiver that does not keep up (its queue
// is full) yields EAGAIN instead of stalling Node's event loop. Failures throw an Error whose `errno` is the
// (positive) errno and `syscall` the failing call; src/service/unix-dgram.ts turns them into Node-style errors.
// Linux only (abstract sockets, SOCK_CLOEXEC, MSG_NOSIGNAL). No library beyond libc: it builds wherever a C++
// compiler is installed, independently of the optional GSS-API binding.

#include <napi.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

namespace {

Napi::Error SystemError(Napi::Env env, int err, const char* syscall, const std::string& path) {
  std::string message = std::string(syscall) + " " + path + ": " + std::strerror(err);
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.Set("path", Napi::String::New(env, path));
  return e;
}

// Fills `addr` for a path or an '@abstract' name; returns the address length, 0 when the name does not fit.
socklen_t Address(const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  // A path needs its terminating NUL inside sun_path; an abstract name does not (its length is the address length).
  const bool abstract = !path.empty() && path[0] == '@';
  if (path.empty() || path.size() > sizeof addr->sun_path - (abstract ? 0 : 1)) return 0;
  std::memcpy(addr->sun_path, path.data(), path.size());
  if (abstract) addr->sun_path[0] = '\0';
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
}

bool Args(const Napi::CallbackInfo& info, bool firstIsNumber) {
  Napi::Env env = info.Env();
  const bool ok = info.Length() >= 2 && (firstIsNumber ? info[0].IsNumber() : info[0].IsString()) &&
                  info[1].IsBuffer();
  if (!ok) {
    Napi::TypeError::New(env, firstIsNumber ? "expected (fd: number, data: Buffer)" : "expected (path: string, data: Buffer)")
        .ThrowAsJavaScriptException();
  }
  return ok;
}

Napi::Value SendDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!Args(info, false)) return env.Undefined();
  const std::string path = info[0].As<Napi::String>();
  Napi::Buffer<char> data = info[1].As<Napi::Buffer<char>>();
  sockaddr_un addr;
  const socklen_t len = Address(path, &addr);
  if (len == 0) {
    SystemError(env, ENAMETOOLONG, "sendto", path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    SystemError(env, errno, "socket", path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ssize_t n;
  do {
    n = sendto(fd, data.Data(), data.Length(), MSG_NOSIGNAL | MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&addr), len);
  } while (n < 0 && errno == EINTR);
  const int err = errno;
  close(fd);
  if (n < 0) SystemError(env, err, "sendto", path).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ConnectDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "expected (path: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string path = info[0].As<Napi::String>();
  sockaddr_un addr;
  const socklen_t len = Address(path, &addr);
  if (len == 0) {
    SystemError(env, ENAMETOOLONG, "connect", path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    SystemError(env, errno, "socket", path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int rc;
  do {
    rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), len);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    const int err = errno;  // EPROTOTYPE: a stream socket (the caller falls back to SOCK_STREAM, as glibc does)
    close(fd);
    SystemError(env, err, "connect", path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SendOn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!Args(info, true)) return env.Undefined();
  const int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<char> data = info[1].As<Napi::Buffer<char>>();
  ssize_t n;
  do {
    n = send(fd, data.Data(), data.Length(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) SystemError(env, errno, "send", "fd " + std::to_string(fd)).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("sendDatagram", Napi::Function::New(env, SendDatagram, "sendDatagram"));
  exports.Set("connectDatagram", Napi::Function::New(env, ConnectDatagram, "connectDatagram"));
  exports.Set("sendOn", Napi::Function::New(env, SendOn, "sendOn"));
  return exports;
}

}  // namespace

NODE_API_MODULE(auditrelay_unix, Init)
