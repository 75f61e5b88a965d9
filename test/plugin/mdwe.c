/*
 * Runs a program with the kernel's memory-deny-write-execute restriction (prctl PR_SET_MDWE,
 * Linux >= 6.3): the same effect as systemd's MemoryDenyWriteExecute=true, which auditd's unit
 * sets and its plugins inherit. A JIT-compiling V8 aborts under it; `node --jitless` must not.
 */
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: mdwe PROGRAM [ARGS...]\n");
    return 2;
  }
  if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0) {
    perror("prctl(PR_SET_MDWE)");
    return 125;
  }
  execv(argv[1], argv + 1);
  perror("execv");
  return 126;
}
