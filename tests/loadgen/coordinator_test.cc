// The interval hand-over between a load thread and the main thread (loadgen/coordinator.h), held
// to its structural promise rather than to a time: publishing an interval on the load thread
// allocates nothing, copies nothing and zeroes nothing. bench/loadgen_bench.cc measures what that
// costs (BM_IntervalBoundary).
//
// This binary replaces the global operator new to count the allocations made on one thread.
#include "loadgen/coordinator.h"

#include <cstdlib>
#include <new>
#include <set>
#include <thread>

#include "gtest/gtest.h"

namespace {

thread_local bool t_counting = false;
thread_local int t_allocations = 0;

}  // namespace

void* operator new(std::size_t n) {
  if (t_counting) ++t_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace upcase::load {
namespace {

// Heap allocations made by this thread during its lifetime.
class AllocationCounter {
 public:
  AllocationCounter() {
    t_allocations = 0;
    t_counting = true;
  }
  ~AllocationCounter() { t_counting = false; }
  int allocations() const { return t_allocations; }
};

// What a load thread records in an interval: latencies spread over many buckets.
void Fill(Stats* stats, int n) {
  for (int i = 0; i < n; ++i) {
    stats->latency.Record(1'000 + 7'919 * i);
    stats->latency_uncorrected.Record(500 + 4'001 * i);
    stats->send_lag.Record(i);
    ++stats->counters.requests;
  }
}

TEST(IntervalHandOverTest, PublishingNeitherAllocatesNorCopiesNorZeroes) {
  Coordinator coordinator(/*workers=*/1, /*intervals=*/2);
  Stats* stats = coordinator.FirstStats(0);
  Fill(stats, 10'000);
  Stats* const filled = stats;
  {
    AllocationCounter counter;
    coordinator.Publish(0, 1, &stats);
    EXPECT_EQ(counter.allocations(), 0);
  }
  // A different Stats, empty already: the load thread did not have to zero it ...
  ASSERT_NE(stats, filled);
  EXPECT_EQ(stats->latency.total_count(), 0u);
  EXPECT_EQ(stats->counters.requests, 0u);
  // ... and the one it handed over still holds its figures: not copied out, not reset there.
  EXPECT_EQ(filled->latency.total_count(), 10'000u);
  EXPECT_EQ(filled->counters.requests, 10'000u);

  // The main thread adds it up, resets it, and gives it back as a spare.
  Stats expected;
  Fill(&expected, 10'000);
  Stats sum;
  coordinator.TakeInterval(1, &sum);
  EXPECT_TRUE(sum.latency == expected.latency);
  EXPECT_TRUE(sum.latency_uncorrected == expected.latency_uncorrected);
  EXPECT_TRUE(sum.send_lag == expected.send_lag);
  EXPECT_EQ(sum.counters.requests, 10'000u);
  EXPECT_EQ(filled->latency.total_count(), 0u);
}

TEST(IntervalHandOverTest, SparesComeBackSoALongRunNeverAllocates) {
  // Many intervals, the main thread taking each one as it comes: the load thread cycles through
  // the same kSpares + 1 Stats and allocates nothing at any boundary.
  constexpr int kIntervals = 50;
  Coordinator coordinator(/*workers=*/2, kIntervals);
  std::uint64_t requests = 0;
  std::thread main_side([&] {
    for (int k = 1; k <= kIntervals; ++k) {
      Stats sum;
      coordinator.TakeInterval(k, &sum);
      requests += sum.counters.requests;
    }
  });
  int allocations = 0;
  std::thread second_worker([&] {
    coordinator.PublishNothingFrom(1, 1);  // a worker whose window was cut short at once
  });
  Stats* stats = coordinator.FirstStats(0);
  std::set<Stats*> seen;
  for (int k = 1; k <= kIntervals; ++k) {
    Fill(stats, 3);
    seen.insert(stats);
    AllocationCounter counter;
    coordinator.Publish(0, k, &stats);
    allocations += counter.allocations();
  }
  second_worker.join();
  main_side.join();
  EXPECT_EQ(allocations, 0);
  EXPECT_LE(seen.size(), static_cast<std::size_t>(Coordinator::kSpares + 1));
  EXPECT_EQ(requests, 3u * kIntervals);
}

}  // namespace
}  // namespace upcase::load
