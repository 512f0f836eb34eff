// Where the load threads and the main thread meet: once at start, once per --interval, at the end.
//
// Interval figures change hands without stalling a load thread. Every thread records into a Stats
// the Coordinator owns; at an interval boundary it hands that Stats over and takes an empty spare
// in exchange, under the lock for a pointer swap only: no allocation, no copy, no zeroing or
// merging of histograms on the load thread. The main thread adds the interval's Stats up, resets
// them and gives them back as spares. With kSpares spares a thread waits for the main thread only
// when that is kSpares intervals behind (its stderr a pipe nobody reads, say), so memory stays
// bounded: kSpares + 1 Stats per thread, allocated before the run.
#ifndef UPCASE_LOADGEN_COORDINATOR_H_
#define UPCASE_LOADGEN_COORDINATOR_H_

#include <array>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "loadgen/stats.h"

namespace upcase::load {

class Coordinator {
 public:
  static constexpr int kSpares = 2;

  // `intervals`: how many each worker publishes (1-based, in order).
  Coordinator(int workers, std::int64_t intervals);

  // Worker side. ReportReady after setup; AwaitStart returns the CLOCK_MONOTONIC start time, or
  // nullopt when the run was called off.
  void ReportReady(const absl::Status& status);
  std::optional<std::int64_t> AwaitStart();
  // The Stats worker `w` records into until its first Publish.
  Stats* FirstStats(int w);
  // Hands *stats over as worker w's figures for interval k and replaces it with an empty spare.
  void Publish(int w, std::int64_t k, Stats** stats);
  // Worker w has nothing to publish for interval k and after (its window was cut short).
  void PublishNothingFrom(int w, std::int64_t k);

  // Main side. AwaitReady returns the first setup error of any thread.
  absl::Status AwaitReady();
  void Start(std::int64_t start_ns);
  void Abort();
  // Blocks until every worker has published interval k, then adds their figures to *sum and
  // recycles them as spares.
  void TakeInterval(std::int64_t k, Stats* sum);

  std::int64_t intervals() const { return intervals_; }

 private:
  static constexpr int kStatsPerWorker = kSpares + 1;
  // One worker's Stats: the one it records into, spares, and those published but not yet taken
  // (a FIFO of interval numbers).
  struct Lane {
    std::array<std::unique_ptr<Stats>, kStatsPerWorker> owned;
    std::array<Stats*, kStatsPerWorker> spares{};
    int spare_count = 0;
    std::array<std::pair<std::int64_t, Stats*>, kStatsPerWorker> published{};
    int published_first = 0;
    int published_count = 0;
    std::int64_t nothing_from = INT64_MAX;
  };
  // Every lane has interval k at the front of its FIFO, or nothing for it. mu_ held.
  bool IntervalReady(std::int64_t k) const;

  std::mutex mu_;
  std::condition_variable cv_;        // readiness, start, and interval k complete
  std::condition_variable spare_cv_;  // a spare came back
  const int workers_;
  const std::int64_t intervals_;
  int ready_ = 0;
  absl::Status setup_error_;
  bool started_ = false;
  bool aborted_ = false;
  std::int64_t start_ns_ = 0;
  std::int64_t main_waits_for_ = 0;  // the interval TakeInterval waits for; 0 when not waiting
  std::vector<Lane> lanes_;
  std::vector<Stats*> taken_;  // TakeInterval's scratch, one per worker
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_COORDINATOR_H_
