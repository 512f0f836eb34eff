// The result of a run (or of several, merged): the summary table, the JSON document
// (docs/upcase-load.md, "The JSON result"), and reading that document back for `upcase-load merge`.
//
// The JSON carries both histograms in HdrHistogram's V2 compressed encoding plus their exact
// count/min/max/sum, so merging reports is exact: merging two runs' JSON gives the same
// histograms as one run over the union of their samples.
#ifndef UPCASE_LOADGEN_REPORT_H_
#define UPCASE_LOADGEN_REPORT_H_

#include <algorithm>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loadgen/histogram.h"
#include "loadgen/host.h"
#include "loadgen/stats.h"
#include "nlohmann/json.hpp"

namespace upcase::load {

// Exit statuses of upcase-load (2, a bad command line, comes from FlagSet).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;    // could not start, or not a single reply measured
inline constexpr int kExitMismatch = 3;  // a reply differed from uppercase(request)

// An open-loop run "kept up" when the replies measured reach this share of the requested rate.
inline constexpr double kKeptUpRatio = 0.97;
// Above this share of its threads' time on the CPU, the load generator is (near) saturated: replies
// wait in its sockets until it gets to them, and a closed loop measures its limit as much as the
// server's.
inline constexpr double kBusyRatio = 0.9;

struct Report {
  nlohmann::json config;  // the (first) run's configuration, Config::ToJson()
  int instances = 1;
  std::vector<std::string> sources;  // merged files
  double start_unix_s = 0;           // measurement start (earliest, when merged)
  double duration_s = 0;             // measurement window (longest, when merged)
  bool stopped_early = false;        // a signal ended the window before --duration
  double warmup_s = 0;
  std::int64_t threads = 0;  // summed over instances
  std::int64_t connections = 0;
  bool open_loop = false;
  // Rates add up across instances running side by side.
  double requested_rps = 0;
  double throughput_rps = 0;
  double bytes_per_s = 0;
  double sent_rps = 0;
  Counters counters;
  Histogram latency;
  Histogram latency_uncorrected;
  Histogram send_lag;             // actual minus intended send time (see Stats)
  double client_cpu_s = 0;        // worker threads' CPU inside the window (getrusage)
  double client_spin_s = 0;       // of which spent spinning for send times (open loop)
  double client_cpu_total_s = 0;  // the whole process, start to exit (getrusage)
  std::string first_error;
  std::string first_mismatch;
  HostFigures host;    // hiccups, steal, foreign CPU and the verdict (loadgen/host.h)
  nlohmann::json env;  // the environment fingerprint (common/env.h); null when unknown

  bool kept_up() const { return !open_loop || throughput_rps >= kKeptUpRatio * requested_rps; }
  // client_cpu_s less the spinning, as a share of the window times the threads (0 when either is
  // unknown): how close the threads came to having no time left for replies.
  double client_busy() const {
    return duration_s > 0 && threads > 0 ? std::max(0.0, client_cpu_s - client_spin_s) /
                                               (duration_s * static_cast<double>(threads))
                                         : 0.0;
  }
  int ExitCode() const;
  // One line naming why ExitCode() is not 0 (empty when it is).
  std::string FailureReason() const;

  nlohmann::json ToJson() const;
  static absl::StatusOr<Report> FromJson(const nlohmann::json& j);
  // Adds another instance's run: counts and histograms add, rates add, the window widens. An
  // error (and no change) when a sum would overflow, which only crafted files reach.
  absl::Status Merge(const Report& other);
  // The human summary printed at the end of a run.
  std::string Table() const;
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_REPORT_H_
