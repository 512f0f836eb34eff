// One load thread: its event loop, its channels, its counters (see worker.cc), and the
// Coordinator through which the threads and the main thread meet: once at start, once per
// progress interval, once at the end.
#ifndef UPCASE_LOADGEN_WORKER_H_
#define UPCASE_LOADGEN_WORKER_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "common/net.h"
#include "loadgen/config.h"
#include "loadgen/stats.h"

namespace upcase::load {

class Coordinator {
 public:
  Coordinator(int workers, int intervals) : workers_(workers), intervals_(intervals) {}

  // Worker side. ReportReady after setup; AwaitStart returns the CLOCK_MONOTONIC start time, or
  // nullopt when the run was called off.
  void ReportReady(const absl::Status& status);
  std::optional<std::int64_t> AwaitStart();
  // Adds a thread's figures for interval k (1-based) to the board.
  void Publish(int k, const Stats& stats);

  // Main side. AwaitReady returns the first setup error of any thread.
  absl::Status AwaitReady();
  void Start(std::int64_t start_ns);
  void Abort();
  // Blocks until every thread published interval k, then hands over their sum.
  Stats TakeInterval(int k);

  int intervals() const { return intervals_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int workers_;
  const int intervals_;
  int ready_ = 0;
  absl::Status setup_error_;
  bool started_ = false;
  bool aborted_ = false;
  std::int64_t start_ns_ = 0;
  struct Board {
    int reports = 0;
    Stats stats;
  };
  std::map<int, Board> board_;
};

// A thread's share of the load and what it hands back.
struct WorkerPlan {
  int index = 0;
  int first_channel = 0;  // global index of its first channel (open-loop phase offsets)
  int channels = 0;
  std::optional<int> cpu;
  SocketAddress target;
};

struct WorkerResult {
  Stats total;
  double cpu_seconds = 0;  // thread CPU time inside the measurement window
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
std::int64_t IntervalEndNs(const Config& config, int k);
int IntervalCount(const Config& config);

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_WORKER_H_
