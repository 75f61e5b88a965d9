// auditrelay_gssapi: a small Node-API binding over MIT krb5's GSS-API, just enough for auditd's krb5 transport
// (audit-remote-protocol.md section 4): credentials from a keytab, a mutual-auth context, gss_wrap/gss_unwrap with
// confidentiality.
//
// Threading: calls that may talk to the KDC (gss_acquire_cred_from + gss_inquire_cred, gss_init_sec_context) run
// on the libuv thread pool through Napi::AsyncWorker and return Promises. gss_accept_sec_context, gss_wrap and
// gss_unwrap never contact the KDC and are synchronous. A handle that is in use by a worker is pinned (a persistent
// reference keeps the JS object alive, a counter defers dispose()) so it is never freed under a running call.
//
// Error texts: MIT keeps the detailed krb5 message for a minor code in thread-local storage, so
// gss_display_status is always called on the thread that made the failing call.

#include <napi.h>

#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5.h>

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr OM_uint32 kContextFlags = GSS_C_MUTUAL_FLAG | GSS_C_REPLAY_FLAG | GSS_C_INTEG_FLAG | GSS_C_CONF_FLAG;

// ---------------------------------------------------------------------------------------------------------------
// Errors

std::string Hex32(OM_uint32 v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", static_cast<unsigned>(v));
  return buf;
}

// All the messages gss_display_status has for one status code, joined with "; ".
std::string DisplayStatus(OM_uint32 code, int type) {
  std::string out;
  OM_uint32 messageContext = 0;
  for (int guard = 0; guard < 16; guard++) {
    OM_uint32 minor = 0;
    gss_buffer_desc text = GSS_C_EMPTY_BUFFER;
    OM_uint32 major = gss_display_status(&minor, code, type, GSS_C_NO_OID, &messageContext, &text);
    if (GSS_ERROR(major)) break;
    if (text.length > 0) {
      std::string part(static_cast<const char*>(text.value), text.length);
      while (!part.empty() && (part.back() == '.' || part.back() == ' ')) part.pop_back();
      if (!part.empty()) {
        if (!out.empty()) out += "; ";
        out += part;
      }
    }
    gss_release_buffer(&minor, &text);
    if (messageContext == 0) break;
  }
  return out;
}

// A failed GSS call, captured (with its texts) on the thread that made it.
struct GssFailure {
  bool failed = false;
  std::string operation;
  OM_uint32 major = 0;
  OM_uint32 minor = 0;
  std::string majorText;
  std::string minorText;
  std::string detail;          // extra context added by us (e.g. which name was being imported)
  std::vector<uint8_t> token;  // error token produced by the mechanism, if any (accept side)
  std::string plain;           // non-GSS failure found by us: message and code only
  std::string plainCode;

  void Set(const char* op, OM_uint32 maj, OM_uint32 min, std::string extra = {}) {
    failed = true;
    operation = op;
    major = maj;
    minor = min;
    detail = std::move(extra);
    majorText = DisplayStatus(maj, GSS_C_GSS_CODE);
    minorText = min != 0 ? DisplayStatus(min, GSS_C_MECH_CODE) : std::string();
  }
  void SetPlain(std::string message, std::string code) {
    failed = true;
    plain = std::move(message);
    plainCode = std::move(code);
  }
  std::string Message() const {
    if (!plain.empty()) return plain;
    std::string m = operation + " failed";
    if (!detail.empty()) m += " (" + detail + ")";
    m += ": " + (majorText.empty() ? std::string("unknown GSS error") : majorText) + " [major " + Hex32(major) + "]";
    if (minor != 0) {
      m += ": " + (minorText.empty() ? std::string("unknown mechanism error") : minorText) + " [minor " +
           Hex32(minor) + "]";
    }
    return m;
  }
  Napi::Error ToError(Napi::Env env) const {
    Napi::Error err = Napi::Error::New(env, Message());
    Napi::Object o = err.Value();
    if (plain.empty()) {
      o.Set("code", "ERR_GSSAPI");
      o.Set("operation", operation);
      o.Set("major", Napi::Number::New(env, major));
      o.Set("minor", Napi::Number::New(env, minor));
      o.Set("majorText", majorText);
      o.Set("minorText", minorText);
      if (!token.empty()) o.Set("token", Napi::Buffer<uint8_t>::Copy(env, token.data(), token.size()));
    } else {
      o.Set("code", plainCode);
    }
    return err;
  }
};

// Misuse of the API (wrong argument, disposed or busy handle): a TypeError with code ERR_GSSAPI_USAGE.
[[noreturn]] void ThrowUsage(Napi::Env env, const std::string& message) {
  Napi::TypeError err = Napi::TypeError::New(env, message);
  err.Value().Set("code", "ERR_GSSAPI_USAGE");
  throw err;
}

[[noreturn]] void ThrowGss(Napi::Env env, const char* op, OM_uint32 major, OM_uint32 minor,
                           std::string detail = {}) {
  GssFailure f;
  f.Set(op, major, minor, std::move(detail));
  throw f.ToError(env);
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

std::string DisplayName(gss_name_t name, GssFailure* failure) {
  if (name == GSS_C_NO_NAME) return {};
  OM_uint32 minor = 0;
  gss_buffer_desc text = GSS_C_EMPTY_BUFFER;
  OM_uint32 major = gss_display_name(&minor, name, &text, nullptr);
  if (GSS_ERROR(major)) {
    if (failure) failure->Set("gss_display_name", major, minor);
    return {};
  }
  std::string out(static_cast<const char*>(text.value), text.length);
  gss_release_buffer(&minor, &text);
  return out;
}

gss_OID NameTypeOid(const std::string& type) {
  if (type == "hostbased") return GSS_C_NT_HOSTBASED_SERVICE;
  if (type == "user") return GSS_C_NT_USER_NAME;
  return GSS_C_NO_OID;
}

bool ImportName(const std::string& text, gss_OID type, gss_name_t* out, GssFailure* failure) {
  OM_uint32 minor = 0;
  gss_buffer_desc buf;
  buf.value = const_cast<char*>(text.data());
  buf.length = text.size();
  OM_uint32 major = gss_import_name(&minor, &buf, type, out);
  if (GSS_ERROR(major)) {
    failure->Set("gss_import_name", major, minor, "name '" + text + "'");
    return false;
  }
  return true;
}

// GSS lifetimes in seconds; GSS_C_INDEFINITE becomes +Infinity.
double LifetimeValue(OM_uint32 seconds) {
  return seconds == GSS_C_INDEFINITE ? std::numeric_limits<double>::infinity() : static_cast<double>(seconds);
}

std::vector<uint8_t> CopyBuffer(const gss_buffer_desc& b) {
  const auto* p = static_cast<const uint8_t*>(b.value);
  return std::vector<uint8_t>(p, p + b.length);
}

Napi::Buffer<uint8_t> ToBuffer(Napi::Env env, const std::vector<uint8_t>& v) {
  return Napi::Buffer<uint8_t>::Copy(env, v.data(), v.size());
}

std::atomic<unsigned long> ccacheCounter{0};

// Destroys a MEMORY ccache we created (MIT keeps a MEMORY cache's contents until it is destroyed, so releasing
// the credential alone would leak one TGT per acquisition).
void DestroyCcache(const std::string& name) {
  krb5_context kctx = nullptr;
  if (krb5_init_context(&kctx) != 0) return;
  krb5_ccache cc = nullptr;
  if (krb5_cc_resolve(kctx, name.c_str(), &cc) == 0) krb5_cc_destroy(kctx, cc);
  krb5_free_context(kctx);
}

class Addon;

// ---------------------------------------------------------------------------------------------------------------
// Credential

class Credential : public Napi::ObjectWrap<Credential> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Credential",
                       {
                           InstanceMethod<&Credential::Dispose>("dispose"),
                           InstanceAccessor<&Credential::GetDisposed>("disposed"),
                           InstanceAccessor<&Credential::GetUsage>("usage"),
                       });
  }

  explicit Credential(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Credential>(info) {
    // Only created from native code: New(External<Payload>)
    if (info.Length() != 1 || !info[0].IsExternal()) {
      ThrowUsage(info.Env(), "Credential cannot be constructed directly; use acquireCredentials()");
    }
    auto* payload = info[0].As<Napi::External<Payload>>().Data();
    cred_ = payload->cred;
    ownedCcache_ = payload->ownedCcache;
    usage_ = payload->usage;
    payload->cred = GSS_C_NO_CREDENTIAL;
  }

  ~Credential() override { Release(); }

  struct Payload {
    gss_cred_id_t cred = GSS_C_NO_CREDENTIAL;
    std::string ownedCcache;
    std::string usage;
  };

  gss_cred_id_t Handle() const { return cred_; }
  bool Disposed() const { return disposed_; }
  void Pin() { inFlight_++; }
  void Unpin() {
    if (--inFlight_ == 0 && disposed_) Release();
  }

 private:
  void Release() {
    if (cred_ != GSS_C_NO_CREDENTIAL) {
      OM_uint32 minor = 0;
      gss_release_cred(&minor, &cred_);
      cred_ = GSS_C_NO_CREDENTIAL;
    }
    if (!ownedCcache_.empty()) {
      DestroyCcache(ownedCcache_);
      ownedCcache_.clear();
    }
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    disposed_ = true;
    if (inFlight_ == 0) Release();
    return info.Env().Undefined();
  }
  Napi::Value GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }
  Napi::Value GetUsage(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), usage_); }

  gss_cred_id_t cred_ = GSS_C_NO_CREDENTIAL;
  std::string ownedCcache_;
  std::string usage_;
  bool disposed_ = false;
  int inFlight_ = 0;
};

// ---------------------------------------------------------------------------------------------------------------
// Security context

class SecContext : public Napi::ObjectWrap<SecContext> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SecContext",
                       {
                           InstanceMethod<&SecContext::WrapMethod>("wrap"),
                           InstanceMethod<&SecContext::UnwrapMethod>("unwrap"),
                           InstanceMethod<&SecContext::WrapSizeLimit>("wrapSizeLimit"),
                           InstanceMethod<&SecContext::PeerName>("peerName"),
                           InstanceMethod<&SecContext::LocalName>("localName"),
                           InstanceMethod<&SecContext::Lifetime>("lifetime"),
                           InstanceMethod<&SecContext::Flags>("flags"),
                           InstanceMethod<&SecContext::Dispose>("dispose"),
                           InstanceAccessor<&SecContext::GetComplete>("complete"),
                           InstanceAccessor<&SecContext::GetInitiator>("initiator"),
                           InstanceAccessor<&SecContext::GetDisposed>("disposed"),
                       });
  }

  explicit SecContext(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SecContext>(info) {
    if (info.Length() != 1 || !info[0].IsBoolean()) {
      ThrowUsage(info.Env(), "SecContext cannot be constructed directly; use initSecContext()/acceptSecContext()");
    }
    initiator_ = info[0].As<Napi::Boolean>().Value();
  }

  ~SecContext() override { Release(); }

  // State shared with the init worker. Only touched by one thread at a time (busy_ guards it).
  gss_ctx_id_t ctx_ = GSS_C_NO_CONTEXT;
  gss_name_t target_ = GSS_C_NO_NAME;
  std::string targetText_;
  bool initiator_ = false;
  bool complete_ = false;
  bool failed_ = false;
  bool busy_ = false;
  bool disposed_ = false;
  OM_uint32 retFlags_ = 0;

  void Release() {
    OM_uint32 minor = 0;
    if (ctx_ != GSS_C_NO_CONTEXT) gss_delete_sec_context(&minor, &ctx_, GSS_C_NO_BUFFER);
    ctx_ = GSS_C_NO_CONTEXT;
    if (target_ != GSS_C_NO_NAME) gss_release_name(&minor, &target_);
    target_ = GSS_C_NO_NAME;
  }

  // Throws unless the context can take another handshake step.
  void CheckSteppable(Napi::Env env, bool wantInitiator) const {
    if (disposed_) ThrowUsage(env, "security context has been disposed");
    if (busy_) ThrowUsage(env, "security context is busy (a previous initSecContext() step has not settled)");
    if (failed_) ThrowUsage(env, "security context failed during establishment; start a new one");
    if (complete_) ThrowUsage(env, "security context is already established");
    if (initiator_ != wantInitiator) {
      ThrowUsage(env, wantInitiator ? "this is an acceptor context; pass it to acceptSecContext()"
                                    : "this is an initiator context; pass it to initSecContext()");
    }
  }

 private:
  void CheckUsable(Napi::Env env, bool needComplete) const {
    if (disposed_) ThrowUsage(env, "security context has been disposed");
    if (busy_) ThrowUsage(env, "security context is busy (initSecContext() step in progress)");
    if (failed_) ThrowUsage(env, "security context failed during establishment");
    if (ctx_ == GSS_C_NO_CONTEXT) ThrowUsage(env, "security context has no GSS context");
    if (needComplete && !complete_) ThrowUsage(env, "security context is not established yet");
  }

  static gss_buffer_desc InputBuffer(const Napi::CallbackInfo& info, size_t index, const char* what) {
    if (info.Length() <= index || !info[index].IsBuffer()) {
      ThrowUsage(info.Env(), std::string(what) + " must be a Buffer");
    }
    auto buf = info[index].As<Napi::Buffer<uint8_t>>();
    gss_buffer_desc in;
    in.value = buf.Data();
    in.length = buf.Length();
    return in;
  }

  Napi::Value WrapMethod(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckUsable(env, true);
    gss_buffer_desc in = InputBuffer(info, 0, "data");
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    OM_uint32 minor = 0;
    int confState = 0;
    OM_uint32 major = gss_wrap(&minor, ctx_, 1, GSS_C_QOP_DEFAULT, &in, &confState, &out);
    if (GSS_ERROR(major)) ThrowGss(env, "gss_wrap", major, minor);
    if (confState == 0) {
      gss_release_buffer(&minor, &out);
      Napi::Error err = Napi::Error::New(env, "gss_wrap did not apply confidentiality (conf_state = 0); "
                                              "refusing to send an unencrypted token");
      err.Value().Set("code", "ERR_GSSAPI_NO_CONFIDENTIALITY");
      throw err;
    }
    Napi::Buffer<uint8_t> result =
        Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(out.value), out.length);
    gss_release_buffer(&minor, &out);
    return result;
  }

  Napi::Value UnwrapMethod(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckUsable(env, true);
    gss_buffer_desc in = InputBuffer(info, 0, "token");
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    OM_uint32 minor = 0;
    int confState = 0;
    gss_qop_t qop = 0;
    OM_uint32 major = gss_unwrap(&minor, ctx_, &in, &out, &confState, &qop);
    if (GSS_ERROR(major)) ThrowGss(env, "gss_unwrap", major, minor);
    // Supplementary bits are not errors for GSS_ERROR(), but a replayed or too-old token must not be accepted:
    // over an ordered TCP stream neither can happen legitimately.
    if (major & (GSS_S_DUPLICATE_TOKEN | GSS_S_OLD_TOKEN)) {
      OM_uint32 ignored = 0;
      gss_release_buffer(&ignored, &out);
      ThrowGss(env, "gss_unwrap", major, minor, "token rejected as a replay");
    }
    Napi::Object result = Napi::Object::New(env);
    result.Set("data", Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(out.value), out.length));
    result.Set("confidential", Napi::Boolean::New(env, confState != 0));
    gss_release_buffer(&minor, &out);
    return result;
  }

  Napi::Value WrapSizeLimit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckUsable(env, true);
    if (info.Length() < 1 || !info[0].IsNumber()) ThrowUsage(env, "maxTokenSize must be a number");
    double req = info[0].As<Napi::Number>().DoubleValue();
    if (!(req >= 0 && req <= 0xffffffff) || std::floor(req) != req) {
      ThrowUsage(env, "maxTokenSize must be an integer between 0 and 2^32-1");
    }
    OM_uint32 minor = 0;
    OM_uint32 maxInput = 0;
    OM_uint32 major =
        gss_wrap_size_limit(&minor, ctx_, 1, GSS_C_QOP_DEFAULT, static_cast<OM_uint32>(req), &maxInput);
    if (GSS_ERROR(major)) ThrowGss(env, "gss_wrap_size_limit", major, minor);
    return Napi::Number::New(env, maxInput);
  }

  // gss_inquire_context for names; which = 0 source (initiator), 1 target (acceptor).
  std::string InquireName(Napi::Env env, int which) {
    OM_uint32 minor = 0;
    gss_name_t src = GSS_C_NO_NAME;
    gss_name_t targ = GSS_C_NO_NAME;
    OM_uint32 major = gss_inquire_context(&minor, ctx_, which == 0 ? &src : nullptr,
                                          which == 1 ? &targ : nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
    if (GSS_ERROR(major)) ThrowGss(env, "gss_inquire_context", major, minor);
    gss_name_t name = which == 0 ? src : targ;
    GssFailure failure;
    std::string text = DisplayName(name, &failure);
    if (name != GSS_C_NO_NAME) gss_release_name(&minor, &name);
    if (failure.failed) throw failure.ToError(env);
    return text;
  }

  Napi::Value PeerName(const Napi::CallbackInfo& info) {
    CheckUsable(info.Env(), true);
    return Napi::String::New(info.Env(), InquireName(info.Env(), initiator_ ? 1 : 0));
  }

  Napi::Value LocalName(const Napi::CallbackInfo& info) {
    CheckUsable(info.Env(), true);
    return Napi::String::New(info.Env(), InquireName(info.Env(), initiator_ ? 0 : 1));
  }

  Napi::Value Lifetime(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckUsable(env, true);
    OM_uint32 minor = 0;
    OM_uint32 seconds = 0;
    OM_uint32 major = gss_context_time(&minor, ctx_, &seconds);
    if (major == GSS_S_CONTEXT_EXPIRED) return Napi::Number::New(env, 0);
    if (GSS_ERROR(major)) ThrowGss(env, "gss_context_time", major, minor);
    return Napi::Number::New(env, LifetimeValue(seconds));
  }

  Napi::Value Flags(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckUsable(env, true);
    Napi::Object o = Napi::Object::New(env);
    o.Set("delegation", Napi::Boolean::New(env, retFlags_ & GSS_C_DELEG_FLAG));
    o.Set("mutual", Napi::Boolean::New(env, retFlags_ & GSS_C_MUTUAL_FLAG));
    o.Set("replay", Napi::Boolean::New(env, retFlags_ & GSS_C_REPLAY_FLAG));
    o.Set("sequence", Napi::Boolean::New(env, retFlags_ & GSS_C_SEQUENCE_FLAG));
    o.Set("confidentiality", Napi::Boolean::New(env, retFlags_ & GSS_C_CONF_FLAG));
    o.Set("integrity", Napi::Boolean::New(env, retFlags_ & GSS_C_INTEG_FLAG));
    o.Set("anonymous", Napi::Boolean::New(env, retFlags_ & GSS_C_ANON_FLAG));
    o.Set("transferable", Napi::Boolean::New(env, retFlags_ & GSS_C_TRANS_FLAG));
    return o;
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    disposed_ = true;
    if (!busy_) Release();  // else the init worker releases it when it settles
    return info.Env().Undefined();
  }

  Napi::Value GetComplete(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), complete_); }
  Napi::Value GetInitiator(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), initiator_); }
  Napi::Value GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }
};

// ---------------------------------------------------------------------------------------------------------------
// Addon with per-instance constructors

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports) {
    Napi::Function credential = Credential::Define(env);
    Napi::Function context = SecContext::Define(env);
    credentialCtor_ = Napi::Persistent(credential);
    contextCtor_ = Napi::Persistent(context);
    DefineAddon(exports, {
                             InstanceMethod<&Addon::AcquireCredentials>("acquireCredentials"),
                             InstanceMethod<&Addon::InitSecContext>("initSecContext"),
                             InstanceMethod<&Addon::AcceptSecContext>("acceptSecContext"),
                             InstanceValue("Credential", credential),
                             InstanceValue("SecContext", context),
                         });
  }

  Napi::FunctionReference credentialCtor_;
  Napi::FunctionReference contextCtor_;

 private:
  Napi::Value AcquireCredentials(const Napi::CallbackInfo& info);
  Napi::Value InitSecContext(const Napi::CallbackInfo& info);
  Napi::Value AcceptSecContext(const Napi::CallbackInfo& info);
};

// Optional string property; throws on a non-string value.
bool OptionalString(Napi::Object opts, const char* key, std::string* out) {
  Napi::Value v = opts.Get(key);
  if (v.IsUndefined() || v.IsNull()) return false;
  if (!v.IsString()) ThrowUsage(opts.Env(), std::string("options.") + key + " must be a string");
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

Credential* UnwrapCredential(Napi::Env env, Napi::Value v, Addon* addon, bool allowNull) {
  if (allowNull && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(addon->credentialCtor_.Value())) {
    ThrowUsage(env, "credential must be a Credential returned by acquireCredentials()");
  }
  Credential* c = Credential::Unwrap(v.As<Napi::Object>());
  if (c->Disposed()) ThrowUsage(env, "credential has been disposed");
  return c;
}

// ---------------------------------------------------------------------------------------------------------------
// acquireCredentials (async)

class AcquireWorker : public Napi::AsyncWorker {
 public:
  AcquireWorker(Napi::Env env, Addon* addon)
      : Napi::AsyncWorker(env, "auditrelay:gss_acquire_cred_from"), deferred_(Napi::Promise::Deferred::New(env)),
        addon_(addon) {}

  ~AcquireWorker() override {
    OM_uint32 minor = 0;
    if (cred_ != GSS_C_NO_CREDENTIAL) gss_release_cred(&minor, &cred_);
    if (!ownedCcache_.empty()) DestroyCcache(ownedCcache_);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  std::string usage;
  std::string principal;
  bool hasPrincipal = false;
  std::string nameType = "user";
  std::string keytab;
  std::string ccache;
  std::string rcache;
  std::string ownedCcache_;

 protected:
  void Execute() override {
    // MIT reports a missing client keytab as "No credentials cache found"; say what is actually wrong.
    if (!keytab.empty()) {
      std::string file = keytab.rfind("FILE:", 0) == 0 ? keytab.substr(5) : keytab;
      if (keytab.find(':') == std::string::npos || keytab.rfind("FILE:", 0) == 0) {
        if (access(file.c_str(), R_OK) != 0) {
          failure_.SetPlain("cannot read keytab " + file + ": " + std::strerror(errno), "ERR_KRB5_KEYTAB");
          return;
        }
      }
    }
    gss_name_t desired = GSS_C_NO_NAME;
    if (hasPrincipal && !ImportName(principal, NameTypeOid(nameType), &desired, &failure_)) return;

    std::vector<gss_key_value_element_desc> elements;
    auto add = [&elements](const char* key, const std::string& value) {
      gss_key_value_element_desc e;
      e.key = key;
      e.value = value.c_str();
      elements.push_back(e);
    };
    gss_cred_usage_t gssUsage = usage == "initiate" ? GSS_C_INITIATE : GSS_C_ACCEPT;
    if (gssUsage == GSS_C_INITIATE) {
      if (!keytab.empty()) add("client_keytab", keytab);
      if (!ccache.empty()) add("ccache", ccache);
    } else {
      if (!keytab.empty()) add("keytab", keytab);
      if (!rcache.empty()) add("rcache", rcache);
    }
    gss_key_value_set_desc store;
    store.count = static_cast<OM_uint32>(elements.size());
    store.elements = elements.data();

    OM_uint32 minor = 0;
    // Restricted to the krb5 mechanism: with GSS_C_NO_OID_SET an acceptor would also speak SPNEGO, IAKERB and
    // any mechanism plugged in via /etc/gss/mech (an empty first token, for instance, gets a SPNEGO reply).
    OM_uint32 major = gss_acquire_cred_from(&minor, desired, GSS_C_INDEFINITE, gss_mech_set_krb5, gssUsage,
                                            elements.empty() ? GSS_C_NO_CRED_STORE : &store, &cred_, nullptr,
                                            nullptr);
    std::string what = usage == "initiate" ? "initiator" : "acceptor";
    if (hasPrincipal) what += " '" + principal + "'";
    if (!keytab.empty()) what += " from keytab " + keytab;
    if (GSS_ERROR(major)) {
      failure_.Set("gss_acquire_cred_from", major, minor, what);
    } else {
      // For an initiator with a client keytab, MIT may fetch the TGT lazily; gss_inquire_cred resolves the
      // credential (getting the TGT now, so KDC/key errors surface here) and reports the remaining lifetime.
      gss_name_t name = GSS_C_NO_NAME;
      OM_uint32 lifetime = 0;
      major = gss_inquire_cred(&minor, cred_, &name, &lifetime, nullptr, nullptr);
      if (GSS_ERROR(major)) {
        failure_.Set("gss_inquire_cred", major, minor, what);
      } else {
        lifetime_ = LifetimeValue(lifetime);
        name_ = DisplayName(name, nullptr);
        hasName_ = name != GSS_C_NO_NAME;
        if (name != GSS_C_NO_NAME) gss_release_name(&minor, &name);
        if (gssUsage == GSS_C_INITIATE && lifetime == 0) {
          failure_.SetPlain("initiator credential " + what + " has already expired", "ERR_KRB5_EXPIRED");
        }
      }
    }
    if (desired != GSS_C_NO_NAME) gss_release_name(&minor, &desired);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (failure_.failed) {
      deferred_.Reject(failure_.ToError(env).Value());
      return;
    }
    Credential::Payload payload;
    payload.cred = cred_;
    payload.ownedCcache = ownedCcache_;
    payload.usage = usage;
    Napi::Object credential = addon_->credentialCtor_.New({Napi::External<Credential::Payload>::New(env, &payload)});
    cred_ = GSS_C_NO_CREDENTIAL;  // owned by the Credential now
    ownedCcache_.clear();
    Napi::Object result = Napi::Object::New(env);
    result.Set("credential", credential);
    result.Set("lifetime", Napi::Number::New(env, lifetime_));
    result.Set("name", hasName_ ? Napi::Value(Napi::String::New(env, name_)) : env.Null());
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Addon* addon_;
  GssFailure failure_;
  gss_cred_id_t cred_ = GSS_C_NO_CREDENTIAL;
  double lifetime_ = 0;
  std::string name_;
  bool hasName_ = false;
};

Napi::Value Addon::AcquireCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) ThrowUsage(env, "acquireCredentials(options): options required");
  Napi::Object opts = info[0].As<Napi::Object>();
  auto* worker = new AcquireWorker(env, this);
  try {
    if (!OptionalString(opts, "usage", &worker->usage) ||
        (worker->usage != "initiate" && worker->usage != "accept")) {
      ThrowUsage(env, "options.usage must be 'initiate' or 'accept'");
    }
    worker->hasPrincipal = OptionalString(opts, "principal", &worker->principal);
    if (OptionalString(opts, "nameType", &worker->nameType) && NameTypeOid(worker->nameType) == GSS_C_NO_OID) {
      ThrowUsage(env, "options.nameType must be 'hostbased' or 'user'");
    }
    OptionalString(opts, "keytab", &worker->keytab);
    OptionalString(opts, "ccache", &worker->ccache);
    OptionalString(opts, "rcache", &worker->rcache);
    if (worker->usage == "accept" && !worker->ccache.empty()) {
      ThrowUsage(env, "options.ccache only applies to usage 'initiate'");
    }
    if (worker->usage == "initiate" && !worker->rcache.empty()) {
      ThrowUsage(env, "options.rcache only applies to usage 'accept'");
    }
    // A client keytab without an explicit ccache gets its own MEMORY ccache, destroyed with the credential.
    if (worker->usage == "initiate" && !worker->keytab.empty() && worker->ccache.empty()) {
      worker->ccache = "MEMORY:auditrelay-" + std::to_string(getpid()) + "-" + std::to_string(++ccacheCounter);
      worker->ownedCcache_ = worker->ccache;
    }
  } catch (...) {
    delete worker;
    throw;
  }
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// ---------------------------------------------------------------------------------------------------------------
// initSecContext (async)

class InitWorker : public Napi::AsyncWorker {
 public:
  InitWorker(Napi::Env env, Napi::Object contextObj, SecContext* context, Napi::Value credObj, Credential* cred,
             std::vector<uint8_t> input, bool hasInput)
      : Napi::AsyncWorker(env, "auditrelay:gss_init_sec_context"), deferred_(Napi::Promise::Deferred::New(env)),
        context_(context), cred_(cred), input_(std::move(input)), hasInput_(hasInput) {
    contextRef_ = Napi::Persistent(contextObj);
    if (cred_ != nullptr) {
      credRef_ = Napi::Persistent(credObj.As<Napi::Object>());
      credHandle_ = cred_->Handle();
      cred_->Pin();
    }
    context_->busy_ = true;
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    SecContext* c = context_;
    OM_uint32 minor = 0;
    if (c->target_ == GSS_C_NO_NAME &&
        !ImportName(c->targetText_, GSS_C_NT_HOSTBASED_SERVICE, &c->target_, &failure_)) {
      return;
    }
    gss_buffer_desc in = GSS_C_EMPTY_BUFFER;
    if (hasInput_) {
      in.value = input_.data();
      in.length = input_.size();
    }
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    OM_uint32 retFlags = 0;
    // gss_mech_krb5 explicitly: auditd passes the default mechanism, which is krb5 in MIT; the tokens are the same.
    OM_uint32 major = gss_init_sec_context(&minor, credHandle_, &c->ctx_, c->target_, gss_mech_krb5, kContextFlags,
                                           0, GSS_C_NO_CHANNEL_BINDINGS, hasInput_ ? &in : GSS_C_NO_BUFFER,
                                           nullptr, &out, &retFlags, nullptr);
    if (GSS_ERROR(major)) failure_.Set("gss_init_sec_context", major, minor, "target '" + c->targetText_ + "'");
    if (out.length > 0) output_ = CopyBuffer(out);
    OM_uint32 ignored = 0;
    gss_release_buffer(&ignored, &out);
    if (failure_.failed) return;
    complete_ = !(major & GSS_S_CONTINUE_NEEDED);
    retFlags_ = retFlags;
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    SecContext* c = context_;
    c->busy_ = false;
    if (cred_ != nullptr) cred_->Unpin();
    if (c->disposed_) {
      c->Release();
      Napi::Error err = Napi::Error::New(env, "security context was disposed during initSecContext()");
      err.Value().Set("code", "ERR_GSSAPI_USAGE");
      deferred_.Reject(err.Value());
      return;
    }
    if (failure_.failed) {
      c->failed_ = true;
      c->Release();
      deferred_.Reject(failure_.ToError(env).Value());
      return;
    }
    c->complete_ = complete_;
    c->retFlags_ = retFlags_;
    Napi::Object result = Napi::Object::New(env);
    result.Set("token", ToBuffer(env, output_));
    result.Set("complete", Napi::Boolean::New(env, complete_));
    result.Set("context", contextRef_.Value());
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error& e) override {
    context_->busy_ = false;
    if (cred_ != nullptr) cred_->Unpin();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  SecContext* context_;
  Credential* cred_;
  gss_cred_id_t credHandle_ = GSS_C_NO_CREDENTIAL;
  Napi::ObjectReference contextRef_;
  Napi::ObjectReference credRef_;
  std::vector<uint8_t> input_;
  bool hasInput_;
  std::vector<uint8_t> output_;
  bool complete_ = false;
  OM_uint32 retFlags_ = 0;
  GssFailure failure_;
};

std::vector<uint8_t> OptionalToken(Napi::Env env, Napi::Value v, bool* present) {
  *present = false;
  if (v.IsUndefined() || v.IsNull()) return {};
  if (!v.IsBuffer()) ThrowUsage(env, "input token must be a Buffer or null");
  auto b = v.As<Napi::Buffer<uint8_t>>();
  *present = true;
  return std::vector<uint8_t>(b.Data(), b.Data() + b.Length());
}

SecContext* ExistingContext(Napi::Env env, Napi::Value v, Addon* addon) {
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(addon->contextCtor_.Value())) {
    ThrowUsage(env, "context must be a SecContext returned by a previous step");
  }
  return SecContext::Unwrap(v.As<Napi::Object>());
}

// initSecContext(credential | null, target: string, input: Buffer | null, context?: SecContext)
Napi::Value Addon::InitSecContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Credential* cred = UnwrapCredential(env, info[0], this, true);
  SecContext* existing = ExistingContext(env, info[3], this);
  bool hasInput = false;
  std::vector<uint8_t> input = OptionalToken(env, info[2], &hasInput);
  Napi::Object contextObj;
  SecContext* context;
  if (existing == nullptr) {
    if (!info[1].IsString() || info[1].As<Napi::String>().Utf8Value().empty()) {
      ThrowUsage(env, "target must be a host-based service name such as 'auditd@collector.example.org'");
    }
    if (hasInput) ThrowUsage(env, "the first initSecContext() step takes no input token (pass null)");
    contextObj = contextCtor_.New({Napi::Boolean::New(env, true)});
    context = SecContext::Unwrap(contextObj);
    context->targetText_ = info[1].As<Napi::String>().Utf8Value();
  } else {
    existing->CheckSteppable(env, true);
    if (!hasInput) ThrowUsage(env, "a continuation initSecContext() step needs the peer's token");
    if (info[1].IsString() && info[1].As<Napi::String>().Utf8Value() != existing->targetText_) {
      ThrowUsage(env, "target differs from the one this context was started with");
    }
    contextObj = info[3].As<Napi::Object>();
    context = existing;
  }
  auto* worker = new InitWorker(env, contextObj, context, info[0], cred, std::move(input), hasInput);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// ---------------------------------------------------------------------------------------------------------------
// acceptSecContext (sync)

// acceptSecContext(credential, input: Buffer, context?: SecContext)
Napi::Value Addon::AcceptSecContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // An acceptor credential is required: GSS_C_NO_CREDENTIAL would accept every mechanism (see AcquireWorker).
  Credential* cred = UnwrapCredential(env, info[0], this, false);
  if (info.Length() < 2 || !info[1].IsBuffer()) ThrowUsage(env, "input token must be a Buffer");
  if (info[1].As<Napi::Buffer<uint8_t>>().Length() == 0) {
    ThrowUsage(env, "empty input token (auditd's client sends an empty token first: skip zero-length tokens)");
  }
  SecContext* existing = ExistingContext(env, info[2], this);
  Napi::Object contextObj;
  SecContext* c;
  if (existing == nullptr) {
    contextObj = contextCtor_.New({Napi::Boolean::New(env, false)});
    c = SecContext::Unwrap(contextObj);
  } else {
    existing->CheckSteppable(env, false);
    contextObj = info[2].As<Napi::Object>();
    c = existing;
  }
  auto buf = info[1].As<Napi::Buffer<uint8_t>>();
  gss_buffer_desc in;
  in.value = buf.Data();
  in.length = buf.Length();
  gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
  gss_name_t src = GSS_C_NO_NAME;
  OM_uint32 minor = 0;
  OM_uint32 retFlags = 0;
  OM_uint32 major =
      gss_accept_sec_context(&minor, &c->ctx_, cred->Handle(), &in,
                             GSS_C_NO_CHANNEL_BINDINGS, &src, nullptr, &out, &retFlags, nullptr, nullptr);
  if (GSS_ERROR(major)) {
    GssFailure failure;
    failure.Set("gss_accept_sec_context", major, minor);
    if (out.length > 0) failure.token = CopyBuffer(out);
    OM_uint32 m = 0;
    gss_release_buffer(&m, &out);
    if (src != GSS_C_NO_NAME) gss_release_name(&m, &src);
    c->failed_ = true;
    c->Release();
    throw failure.ToError(env);
  }
  bool complete = !(major & GSS_S_CONTINUE_NEEDED);
  c->complete_ = complete;
  c->retFlags_ = retFlags;
  Napi::Object result = Napi::Object::New(env);
  result.Set("token", Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(out.value), out.length));
  result.Set("complete", Napi::Boolean::New(env, complete));
  result.Set("context", contextObj);
  GssFailure nameFailure;
  std::string source = complete ? DisplayName(src, &nameFailure) : std::string();
  result.Set("sourceName", complete && src != GSS_C_NO_NAME ? Napi::Value(Napi::String::New(env, source))
                                                            : env.Null());
  gss_release_buffer(&minor, &out);
  if (src != GSS_C_NO_NAME) gss_release_name(&minor, &src);
  if (nameFailure.failed) throw nameFailure.ToError(env);
  return result;
}

}  // namespace

NODE_API_ADDON(Addon)
