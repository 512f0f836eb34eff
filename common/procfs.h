// Reading the host's CPU accounting from /proc: per-CPU times (/proc/stat), the time and placement
// of a process's threads (/proc/PID/task/TID/stat and status), and the arithmetic that turns two
// samples into steal, interrupt and *foreign* shares of a CPU. The one place that parses /proc;
// every reader takes a root directory ("" for the real one) so tests point it at a fake tree.
//
// Attribution of a process's CPU time to CPUs (foreign = busy time not spent by the processes we
// know): the kernel keeps a thread's CPU time per thread, not per CPU. A thread whose affinity is
// a single CPU is exact: all its time goes to that CPU. Any other thread's time over an interval
// goes to the CPU it last ran on (field 39 of its stat) at the interval's end, an approximation
// that holds for threads that stay put and blurs for threads that migrate; the foreign share of a
// CPU is clamped at 0 where such a thread's time overshoots it, and a CPU such a thread may run on
// is marked inexact (CpuNoise::foreign_exact), so that no verdict rests on a guess. A thread that
// exits within an interval (upcase-load's workers at the window's end) leaves no stat of its own:
// what its process's time grew by beyond its living threads' goes to the CPU (or CPUs, as above)
// of the threads that vanished since the interval began.
//
// A thread's time comes from its schedstat runtime (ns) where the kernel has it, else from its
// utime + stime in whole ticks.
//
// Units: /proc/stat and /proc/PID/stat count clock ticks (USER_HZ, 100 per second), so a share
// over one second resolves 1 %; the per-CPU counters are sampled at ticks while a thread's times
// are derived from its exact runtime, so short intervals disagree by a tick or two.
#ifndef UPCASE_COMMON_PROCFS_H_
#define UPCASE_COMMON_PROCFS_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace upcase {

// Reads root + path whole; nullopt when it cannot be read (missing, no permission).
std::optional<std::string> ReadProcFile(const std::string& root, const std::string& path);

// One "cpuN ..." line of /proc/stat, in clock ticks. user includes guest, nice guest_nice.
struct CpuTicks {
  int cpu = 0;
  std::uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                steal = 0;
  std::uint64_t busy() const { return user + nice + system; }  // tasks' time, interrupts apart
  std::uint64_t total() const { return busy() + idle + iowait + irq + softirq + steal; }
};
// The per-CPU lines of /proc/stat (the aggregate "cpu" line is skipped), in file order.
absl::StatusOr<std::vector<CpuTicks>> ParseProcStat(absl::string_view text);

// One thread of a process, from its stat and status files.
struct TaskTicks {
  pid_t pid = 0;
  pid_t tid = 0;
  std::uint64_t ticks = 0;  // utime + stime
  // Time on a CPU from /proc/PID/task/TID/schedstat (its first field), in ns: exact, where
  // utime + stime is whole clock ticks, so a thread that runs a few µs at a time (a thread per
  // connection) reads 0 ticks for its first 10 ms, in every interval. Absent: not readable.
  std::optional<std::uint64_t> runtime_ns;
  int last_cpu = -1;              // the CPU it last ran on
  std::vector<int> allowed;       // Cpus_allowed_list (empty when unknown)
  std::uint64_t involuntary = 0;  // nonvoluntary_ctxt_switches
};
// /proc/PID/task/TID/stat: the command may hold spaces and parentheses, so fields are counted
// from the last ')'.
absl::Status ParseTaskStat(absl::string_view text, TaskTicks* task);
// /proc/PID/task/TID/status: Cpus_allowed_list and nonvoluntary_ctxt_switches (absent: unchanged).
void ParseTaskStatus(absl::string_view text, TaskTicks* task);
// Every thread of `pid` that could be read (a thread that exits meanwhile is skipped; a missing
// process gives none).
std::vector<TaskTicks> ReadProcessTasks(const std::string& root, pid_t pid);

// pids, each followed by its descendants (children by the parent PID in /proc/N/stat, theirs,
// and so on; each PID once): the fork backend serves every connection in a child process, whose
// CPU time is the server's own. A descendant that exits within an interval takes that interval's
// time with it (reaped, it moves to its parent's cutime, which no thread's stat shows).
std::vector<pid_t> WithDescendants(const std::string& root, const std::vector<pid_t>& pids);

// The host's CPU times and the threads of the known processes and their descendants at one
// moment.
struct HostSample {
  std::vector<CpuTicks> cpus;
  std::vector<TaskTicks> tasks;
  // utime + stime of each known process from /proc/PID/stat: its threads living and exited
  // (a thread's own stat vanishes when it exits; its time stays in the process's).
  std::map<pid_t, std::uint64_t> process_ticks;
};
HostSample SampleHost(const std::string& root, const std::vector<pid_t>& pids);

// One CPU over an interval, in percent of its time (0 when the interval had no ticks).
struct CpuNoise {
  int cpu = 0;
  double steal_pct = 0;     // the hypervisor ran something else (steal)
  double irq_pct = 0;       // hard and soft interrupts
  double foreign_pct = 0;   // tasks other than the known processes' threads
  double own_pct = 0;       // the known processes' threads (see the attribution above)
  std::uint64_t ticks = 0;  // the CPU's ticks in the interval
  // Every known thread that ran in the interval and may run on this CPU is pinned to one CPU, so
  // own_pct and foreign_pct are exact; false when a thread free to move could have run here (its
  // time went to the CPU it last ran on, which may be another one).
  bool foreign_exact = true;
};
// The CPUs `cpus` (in that order; a CPU absent from either sample is left out) between two
// samples, `before` taken first.
std::vector<CpuNoise> CpuNoiseBetween(const HostSample& before, const HostSample& after,
                                      const std::vector<int>& cpus);
// Involuntary context switches of pid's threads between two samples (a thread absent before
// counts from 0).
std::uint64_t InvoluntarySwitchesBetween(const HostSample& before, const HostSample& after,
                                         pid_t pid);

}  // namespace upcase

#endif  // UPCASE_COMMON_PROCFS_H_
