// What the host did to a run, and the verdict on it: hiccups (common/hiccup.h) recorded by a
// thread per load CPU, and steal, interrupt and foreign CPU shares (common/procfs.h) of the load's
// and the server's CPUs, sampled at every interval boundary. The verdict says when that noise can
// explain the latency tail: a line starting "HOST NOISE:" and JSON host.noisy.
//
// The thresholds are for the whole window. They sit above what a quiet run of a small cloud VM
// shows (its hypervisor steals 2-4 % of a busy vCPU in millisecond slices, and hiccups reach
// 2-4 ms; see docs/host-noise.md for the measurements), so that the verdict marks runs where
// something beyond that floor happened: a process sharing a CPU, a busier neighbour VM, an
// interrupt storm.
#ifndef UPCASE_LOADGEN_HOST_H_
#define UPCASE_LOADGEN_HOST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/procfs.h"
#include "loadgen/histogram.h"
#include "nlohmann/json.hpp"

namespace upcase::load {

// Steal above this share of an involved CPU over the window.
inline constexpr double kNoisyStealPct = 5.0;
// Foreign CPU (tasks other than upcase-load's and the server's) above this share of a CPU, judged
// only where it is exact (CpuNoise::foreign_exact: every own thread that may run there is pinned);
// elsewhere an own thread's time may have been charged to the wrong CPU, and foreign is reported
// but not judged.
// Interrupt time (irq_pct) is reported but not judged: soft interrupts include the run's own
// network processing (loopback's receive path runs as a softirq on the sending CPU).
inline constexpr double kNoisyForeignPct = 10.0;
// A hiccup (oversleep of the recorder) longer than this.
inline constexpr std::int64_t kNoisyHiccupNs = 5'000'000;

// One CPU over the window and what runs on it ("load", "server" or "load+server").
struct HostCpu {
  CpuNoise noise;
  std::string role;
};

// The host's side of a run: in Report, summed over instances when merged.
struct HostFigures {
  bool present = false;  // the run recorded host figures (older results: false)
  bool hiccups_on = false;
  Histogram hiccups;  // oversleeps in ns, over the window
  std::vector<HostCpu> cpus;
  std::uint64_t involuntary_switches = 0;  // upcase-load's own threads, over the window
  nlohmann::json intervals = nlohmann::json::array();

  // Reasons the host explains the tail, one phrase each (empty: quiet).
  std::vector<std::string> NoiseReasons() const;
  bool noisy() const { return !NoiseReasons().empty(); }
  // "HOST NOISE: ..." or empty.
  std::string VerdictLine() const;
  // host.{hiccup_us, cpus, involuntary_switches, intervals, noisy, noise} (the histogram itself
  // goes with the others, histograms.hiccups).
  nlohmann::json ToJson() const;
  // Reads ToJson()'s keys back (the histogram is set by the caller).
  static absl::StatusOr<HostFigures> FromJson(const nlohmann::json& j);
  void Merge(const HostFigures& other);
};

// {"p50","p99","p999","max","count"} in µs: the summary JSON host.hiccup_us uses.
nlohmann::json HiccupSummaryJson(const Histogram& h);

// The CPUs to watch: the load's and the server's, each with its role, in increasing order.
std::vector<std::pair<int, std::string>> WatchedCpus(const std::vector<int>& load_cpus,
                                                     const std::vector<int>& server_cpus);

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_HOST_H_
