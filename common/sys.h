// Clocks, CPU time and thread placement, shared by the servers and the load generator.
#ifndef UPCASE_COMMON_SYS_H_
#define UPCASE_COMMON_SYS_H_

#include <sys/resource.h>
#include <time.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace upcase {

// Nanoseconds on CLOCK_MONOTONIC: never jumps with wall-clock changes. Via the vDSO, no syscall.
inline std::int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// User + system CPU seconds from getrusage: `who` is RUSAGE_SELF (the whole process, all
// threads) or RUSAGE_THREAD (the calling thread).
double CpuSeconds(int who);

// Number of CPUs online now (sysconf), at least 1.
int OnlineCpus();

// The CPUs this process may run on (sched_getaffinity), in increasing order: in a container
// limited to CPUs 4-7 that is {4, 5, 6, 7}, whatever the machine has online.
absl::StatusOr<std::vector<int>> AllowedCpus();

// The inverse of ParseCpuList: {0, 1, 2, 5} -> "0-2,5".
std::string FormatCpuList(const std::vector<int>& cpus);

// Restricts the calling thread to one CPU. The error names the CPU and the errno text.
absl::Status PinCurrentThread(int cpu);

// Parses a CPU list such as "0", "1,3" or "0-3,6".
absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text);

// Raises RLIMIT_NOFILE's soft limit to the hard limit, so many connections fit; returns the
// resulting soft limit.
std::uint64_t RaiseFdLimit();

}  // namespace upcase

#endif  // UPCASE_COMMON_SYS_H_
