#include "loadgen/hiccup_recorder.h"

#include <algorithm>

#include "common/hiccup.h"
#include "loadgen/worker.h"

namespace upcase::load {

void RunHiccupRecorder(const Config& c, int lane, std::optional<int> cpu,
                       Coordinator& coordinator) {
  HiccupTimer timer(c.hiccup_period);
  coordinator.ReportReady(timer.SetUpThread(cpu));
  const std::optional<std::int64_t> start = coordinator.AwaitStart();
  if (!start.has_value()) return;
  const std::int64_t measure_start = *start + absl::ToInt64Nanoseconds(c.warmup);
  std::int64_t measure_end = measure_start + absl::ToInt64Nanoseconds(c.duration);
  const std::int64_t intervals = coordinator.intervals();
  std::int64_t k = 1;
  std::int64_t boundary = measure_start + IntervalEndNs(c, 1);
  Stats* stats = coordinator.FirstStats(lane);
  while (true) {
    std::int64_t woke = 0;
    const std::int64_t late = timer.Sleep(&woke);
    if (const std::int64_t stop = StopRequestedAt(); stop != 0 && stop < measure_end) {
      measure_end = std::max(stop, measure_start);
    }
    // An oversleep belongs to the interval its wakeup was due in.
    const std::int64_t due = woke - late;
    while (k < intervals && due >= boundary && boundary < measure_end) {
      coordinator.Publish(lane, k++, &stats);
      boundary = measure_start + IntervalEndNs(c, k);
    }
    if (due >= measure_start && due < measure_end) stats->hiccups.Record(late);
    if (due >= measure_end) break;
  }
  coordinator.Publish(lane, k, &stats);
  if (k < intervals) coordinator.PublishNothingFrom(lane, k + 1);
}

}  // namespace upcase::load
