// upcase-server --hiccups: a hiccup recorder (common/hiccup.h) on each CPU the server runs on,
// so a run's latency tail can be told apart from the host's stalls on the server's side too.
// Each recorder thread owns its histogram; they are joined and summed at exit, like the shards'
// counters.
#ifndef UPCASE_SERVER_HICCUPS_H_
#define UPCASE_SERVER_HICCUPS_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "loadgen/histogram.h"
#include "nlohmann/json_fwd.hpp"

namespace upcase {

class ServerHiccups {
 public:
  ServerHiccups() = default;
  ServerHiccups(const ServerHiccups&) = delete;
  ServerHiccups& operator=(const ServerHiccups&) = delete;
  ~ServerHiccups() { Stop(); }

  // One recorder pinned to each of `cpus`. An error when a recorder could not be set up (it names
  // the call); the others are stopped then.
  absl::Status Start(const std::vector<int>& cpus);
  // Stops and joins the recorders and sums their histograms (idempotent).
  void Stop();

  const std::vector<int>& cpus() const { return cpus_; }
  const load::Histogram& total() const { return total_; }
  // "hiccups: cpus=0-1 count=.. p50_us=.. p99_us=.. p999_us=.. max_us=.." (the exit summary).
  std::string Format() const;
  // {"cpus": [..], "p50": .., "p99": .., "p999": .., "max": .., "count": ..} in µs.
  nlohmann::json ToJson() const;

 private:
  struct Recorder {
    load::Histogram hiccups;  // written by the recorder thread only, read after the join
    absl::Status setup;
    std::thread thread;
  };
  std::vector<int> cpus_;
  std::atomic<bool> stop_{false};
  std::vector<std::unique_ptr<Recorder>> recorders_;
  load::Histogram total_;
};

}  // namespace upcase

#endif  // UPCASE_SERVER_HICCUPS_H_
