// upcase-load's per-request user-space work, in isolation: recording a latency, verifying a reply,
// the open-loop schedule (next intended send time, and the per-thread min-heap that picks the
// channel due next), and the per-interval costs (merging and encoding a histogram, and what a load
// thread pays at an interval boundary). These are what the load generator adds on top of the
// kernel's send and receive, so they bound how cheap a request can be.
//
//   build/release/bin/loadgen_bench --benchmark_format=json
#include <algorithm>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

#include "benchmark/benchmark.h"
#include "loadgen/coordinator.h"
#include "loadgen/histogram.h"
#include "loadgen/payload.h"
#include "loadgen/schedule.h"

namespace upcase::load {
namespace {

std::vector<std::int64_t> Latencies(std::size_t n) {
  std::mt19937_64 rng(4);
  std::lognormal_distribution<double> d(std::log(30e3), 1.0);  // ~30 us with a tail
  std::vector<std::int64_t> v(n);
  for (auto& x : v) x = static_cast<std::int64_t>(d(rng));
  return v;
}

void BM_HistogramRecord(benchmark::State& state) {
  const std::vector<std::int64_t> values = Latencies(4096);
  Histogram h;
  std::size_t i = 0;
  for (auto _ : state) {
    h.Record(values[i++ & 4095]);
  }
  benchmark::DoNotOptimize(h.total_count());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HistogramRecord);

// One channel's next intended send time: uniform (arithmetic) or Poisson (one log per request).
void BM_ScheduleNext(benchmark::State& state) {
  const Arrival arrival = state.range(0) == 0 ? Arrival::kUniform : Arrival::kPoisson;
  ArrivalSchedule schedule(arrival, 1000.0, 0, 0.25);
  Rng rng(7);
  for (auto _ : state) benchmark::DoNotOptimize(schedule.Next(rng));
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(arrival == Arrival::kUniform ? "uniform" : "poisson");
}
BENCHMARK(BM_ScheduleNext)->Arg(0)->Arg(1);

// What a worker thread does per open-loop request: pop the channel due first from a min-heap of
// (intended time, channel), draw its next time, push it back. Argument: channels per thread.
void BM_ScheduleDispatch(benchmark::State& state) {
  const auto channels = static_cast<std::size_t>(state.range(0));
  Rng rng(11);
  std::vector<ArrivalSchedule> schedules;
  std::vector<std::pair<std::int64_t, std::size_t>> heap;
  for (std::size_t i = 0; i < channels; ++i) {
    schedules.emplace_back(Arrival::kPoisson, 100.0, 0, static_cast<double>(i) / channels);
    heap.emplace_back(schedules.back().Next(rng), i);
  }
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  for (auto _ : state) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const std::size_t i = heap.back().second;
    heap.back().first = schedules[i].Next(rng);
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  }
  benchmark::DoNotOptimize(heap.front());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ScheduleDispatch)->Arg(64)->Arg(512)->Arg(4096);

void BM_VerifyReply(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const PayloadPool pool(size, 1);
  Rng rng(2);
  // Replies as they would sit in the receive buffer: copies, not the pool's own bytes.
  constexpr std::size_t kReplies = 256;
  std::vector<std::uint32_t> offsets(kReplies);
  std::vector<std::vector<char>> replies(kReplies);
  for (std::size_t i = 0; i < kReplies; ++i) {
    offsets[i] = pool.RandomOffset(rng, size);
    replies[i].assign(pool.expected(offsets[i]), pool.expected(offsets[i]) + size);
  }
  std::size_t i = 0;
  for (auto _ : state) {
    const std::size_t k = i++ % kReplies;
    benchmark::DoNotOptimize(pool.Matches(offsets[k], replies[k].data(), size));
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * size));
}
BENCHMARK(BM_VerifyReply)->Arg(64)->Arg(1024)->Arg(16384);

void BM_HistogramAdd(benchmark::State& state) {
  Histogram a, b;
  for (std::int64_t v : Latencies(100'000)) b.Record(v);
  for (auto _ : state) {
    a.Add(b);
    benchmark::DoNotOptimize(a.total_count());
  }
}
BENCHMARK(BM_HistogramAdd);

void BM_HistogramEncodeBase64(benchmark::State& state) {
  Histogram h;
  for (std::int64_t v : Latencies(100'000)) h.Record(v);
  for (auto _ : state) benchmark::DoNotOptimize(h.EncodeBase64());
}
BENCHMARK(BM_HistogramEncodeBase64);

// What a load thread pays when an interval ends, the only moment its loop stops for the
// figures (the main thread's merge is not timed: the worker does not wait for it). An interval's
// worth of latencies is recorded first, untimed.
void FillInterval(Stats* stats, const std::vector<std::int64_t>& values) {
  for (std::int64_t v : values) {
    stats->latency.Record(v);
    stats->latency_uncorrected.Record(v / 2);
    stats->send_lag.Record(v / 64);
  }
  stats->counters.requests += values.size();
}

// The shape before the spares (52b3522): the thread added its Stats to a board entry it created
// under the coordinator's lock (allocating and zeroing three histograms), added them to its own
// run total, and reset them.
void BM_IntervalBoundaryMergeOnWorker(benchmark::State& state) {
  const std::vector<std::int64_t> values = Latencies(2'000);
  std::mutex mu;
  std::map<std::int64_t, Stats> board;
  Stats stats, total;
  std::int64_t k = 0;
  for (auto _ : state) {
    state.PauseTiming();
    FillInterval(&stats, values);
    board.erase(k - 1);  // the main thread's TakeInterval, untimed
    state.ResumeTiming();
    {
      std::lock_guard<std::mutex> lock(mu);
      board[k].Add(stats);
    }
    total.Add(stats);
    stats.Reset();
    ++k;
  }
  benchmark::DoNotOptimize(total.counters.requests);
}
BENCHMARK(BM_IntervalBoundaryMergeOnWorker);

// Now: the thread swaps its Stats for a spare under the lock (Coordinator::Publish).
void BM_IntervalBoundarySwapSpare(benchmark::State& state) {
  const std::vector<std::int64_t> values = Latencies(2'000);
  const std::int64_t intervals = std::max<std::int64_t>(state.max_iterations, 1);
  Coordinator coordinator(1, intervals);
  Stats* stats = coordinator.FirstStats(0);
  Stats sum;
  std::int64_t k = 1;
  for (auto _ : state) {
    state.PauseTiming();
    FillInterval(stats, values);
    if (k > 1) coordinator.TakeInterval(k - 1, &sum);  // the main thread's side, untimed
    state.ResumeTiming();
    coordinator.Publish(0, k, &stats);
    ++k;
  }
  benchmark::DoNotOptimize(sum.counters.requests);
}
BENCHMARK(BM_IntervalBoundarySwapSpare);

// The main thread's side of one boundary (TakeInterval: add up, reset, recycle) for one load
// thread. It is not the load thread's time, but where the two share a CPU (taskset -c 1) it
// preempts the load thread for this long.
void BM_IntervalTakenByMainThread(benchmark::State& state) {
  const std::vector<std::int64_t> values = Latencies(2'000);
  Coordinator coordinator(1, std::max<std::int64_t>(state.max_iterations, 1));
  Stats* stats = coordinator.FirstStats(0);
  Stats sum;
  std::int64_t k = 1;
  for (auto _ : state) {
    state.PauseTiming();
    FillInterval(stats, values);
    coordinator.Publish(0, k, &stats);
    state.ResumeTiming();
    coordinator.TakeInterval(k++, &sum);
    sum.Reset();
  }
  benchmark::DoNotOptimize(sum.counters.requests);
}
BENCHMARK(BM_IntervalTakenByMainThread);

}  // namespace
}  // namespace upcase::load

BENCHMARK_MAIN();
