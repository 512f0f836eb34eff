// deny-io-uring: runs a program in a process where io_uring_setup(2) fails, the way it does on a
// kernel built without io_uring (ENOSYS) or under a container runtime's seccomp policy (EPERM).
// Test-only: it lets the fallback from `uring` be tested on a machine that has io_uring, with no
// test hook in the server.
//
//   deny-io-uring [--errno=ENOSYS|EPERM] PROGRAM [ARGS...]
//
// Installs a seccomp filter (inherited across execve, irrevocable) that makes io_uring_setup
// return the chosen errno and allows every other system call, then execs PROGRAM.
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

#if defined(__x86_64__)
constexpr unsigned kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr unsigned kAuditArch = AUDIT_ARCH_AARCH64;
#else
#error "deny-io-uring: add this architecture's AUDIT_ARCH_* value"
#endif

int Usage() {
  std::fprintf(stderr, "usage: deny-io-uring [--errno=ENOSYS|EPERM] PROGRAM [ARGS...]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int err = ENOSYS;
  int first = 1;
  if (argc > 1 && std::strncmp(argv[1], "--errno=", 8) == 0) {
    const std::string name = argv[1] + 8;
    if (name == "ENOSYS") {
      err = ENOSYS;
    } else if (name == "EPERM") {
      err = EPERM;
    } else {
      return Usage();
    }
    first = 2;
  }
  if (first >= argc) return Usage();

  sock_filter filter[] = {
      // A foreign-architecture call has other numbers: let it through rather than misjudge it.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K,
               SECCOMP_RET_ERRNO | (static_cast<unsigned>(err) & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
  // Without privileges, a filter may only be installed by a process that can gain none.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    std::fprintf(stderr, "deny-io-uring: prctl(PR_SET_NO_NEW_PRIVS): %s\n", std::strerror(errno));
    return 1;
  }
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
    std::fprintf(stderr, "deny-io-uring: prctl(PR_SET_SECCOMP): %s\n", std::strerror(errno));
    return 1;
  }
  execvp(argv[first], argv + first);
  std::fprintf(stderr, "deny-io-uring: exec %s: %s\n", argv[first], std::strerror(errno));
  return 127;
}
