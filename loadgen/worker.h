// One load thread: its event loop, its channels, its counters (see worker.cc).
#ifndef UPCASE_LOADGEN_WORKER_H_
#define UPCASE_LOADGEN_WORKER_H_

#include <cstdint>
#include <optional>
#include <string>

#include "common/net.h"
#include "loadgen/config.h"
#include "loadgen/coordinator.h"
#include "loadgen/stats.h"

namespace upcase::load {

// A thread's share of the load and what it hands back.
struct WorkerPlan {
  int index = 0;
  int first_channel = 0;  // global index of its first channel (open-loop phase offsets)
  int channels = 0;
  std::optional<int> cpu;
  SocketAddress target;
};

// The thread's figures go to the Coordinator, interval by interval; this is the rest.
struct WorkerResult {
  double cpu_seconds = 0;   // thread CPU time inside the measurement window
  double spin_seconds = 0;  // of which spent spinning for send times (open loop, pacer.h)
  std::string first_error;
  std::string first_mismatch;
};

// The thread body: sets up, waits for the start, runs the load, drains; fills `result`.
void RunWorker(const Config& config, const WorkerPlan& plan, Coordinator& coordinator,
               WorkerResult* result);

// Ends the run early, as if --duration had ended at `monotonic_ns` (Ctrl-C). Async-signal-safe.
void RequestStop(std::int64_t monotonic_ns);
// The time passed to RequestStop, or 0.
std::int64_t StopRequestedAt();

// The end of interval k (1-based) relative to the measurement start, in ns.
std::int64_t IntervalEndNs(const Config& config, std::int64_t k);
std::int64_t IntervalCount(const Config& config);

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_WORKER_H_
