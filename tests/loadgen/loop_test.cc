// Pieces of a load thread's loop, without sockets: the hybrid wait's decisions (loadgen/pacer.h)
// and the window accounting of LoopContext (loadgen/channel.h).
#include <cstdint>

#include "gtest/gtest.h"
#include "loadgen/channel.h"
#include "loadgen/pacer.h"
#include "loadgen/schedule.h"

namespace upcase::load {
namespace {

constexpr std::int64_t kUs = 1'000;

Config OpenLoop(SpinMode spin, absl::Duration fixed = absl::ZeroDuration()) {
  Config c;
  c.rate = 1000;
  c.spin = spin;
  c.spin_fixed = fixed;
  return c;
}

TEST(PacerTest, OffSleepsAllTheWay) {
  Pacer pacer(OpenLoop(SpinMode::kOff));
  const Pacer::Wait w = pacer.Next(0, 200 * kUs, 5'000 * kUs);
  EXPECT_EQ(w.timeout_ns, 200 * kUs);
  EXPECT_FALSE(w.spinning);
  EXPECT_EQ(pacer.Next(0, 3 * kUs, 5'000 * kUs).timeout_ns, 3 * kUs);
}

TEST(PacerTest, SleepsUntilTheSpinWindowThenPolls) {
  Pacer pacer(OpenLoop(SpinMode::kFixed, absl::Microseconds(50)));
  // Due in 200 us: sleep 150, then spin the last 50.
  EXPECT_EQ(pacer.Next(0, 200 * kUs, 5'000 * kUs).timeout_ns, 150 * kUs);
  const Pacer::Wait spin = pacer.Next(160 * kUs, 200 * kUs, 5'000 * kUs);
  EXPECT_EQ(spin.timeout_ns, 0);
  EXPECT_TRUE(spin.spinning);
  // Another deadline first (housekeeping, an interval's end): sleep until it, no spinning.
  EXPECT_EQ(pacer.Next(0, 200 * kUs, 40 * kUs).timeout_ns, 40 * kUs);
  // No send due (closed loop, or the drain): sleep until the other deadline.
  EXPECT_EQ(pacer.Next(0, INT64_MAX, 40 * kUs).timeout_ns, 40 * kUs);
  // A deadline already passed is a poll, but not spinning.
  const Pacer::Wait late = pacer.Next(300 * kUs, 200 * kUs, 5'000 * kUs);
  EXPECT_EQ(late.timeout_ns, 0);
  EXPECT_FALSE(late.spinning);
}

TEST(PacerTest, AutoLearnsTheWindowFromTheOversleepsItSees) {
  Pacer pacer(OpenLoop(SpinMode::kAuto));
  EXPECT_EQ(pacer.spin_window_ns(), Pacer::kInitialNs);
  auto oversleep = [&](std::int64_t ns, int times) {
    for (int i = 0; i < times; ++i) pacer.LearnOversleep(1'000'000, 1'000'000 + ns);
  };
  // A VM that wakes 30 us late: the window covers that, plus the margin.
  oversleep(30 * kUs, Pacer::kSamples);
  EXPECT_EQ(pacer.spin_window_ns(), 30 * kUs + Pacer::kMarginNs);
  // One wake-up in 128 that is 5 ms late is not worth spinning for ...
  oversleep(5'000 * kUs, 1);
  oversleep(30 * kUs, Pacer::kRecomputeEvery - 1);
  EXPECT_EQ(pacer.spin_window_ns(), 30 * kUs + Pacer::kMarginNs);
  // ... but when they are the rule the window grows, up to its bound.
  oversleep(5'000 * kUs, Pacer::kSamples);
  EXPECT_EQ(pacer.spin_window_ns(), Pacer::kMaxNs);
  // A machine that wakes on time spins only the minimum.
  oversleep(0, Pacer::kSamples);
  EXPECT_EQ(pacer.spin_window_ns(), std::max(Pacer::kMinNs, Pacer::kMarginNs));
  // A fixed window never moves.
  Pacer fixed(OpenLoop(SpinMode::kFixed, absl::Microseconds(7)));
  for (int i = 0; i < Pacer::kSamples; ++i) fixed.LearnOversleep(0, 90 * kUs);
  EXPECT_EQ(fixed.spin_window_ns(), 7 * kUs);
}

TEST(PacerTest, AutoRelearnsAWindowThatLeavesNoSleep) {
  // Sends every 200 us (5,000 req/s on one thread); the VM wakes 30 us late, but twice in 128
  // wake-ups 5 ms late: the window goes to its bound, longer than the time between sends.
  Pacer pacer(OpenLoop(SpinMode::kAuto));
  std::int64_t now = 0;
  auto sleep_and_send = [&](std::int64_t oversleep) {
    const Pacer::Wait w = pacer.Next(now, now + 200 * kUs, now + 10'000 * kUs);
    if (w.timeout_ns > 0) {
      pacer.LearnOversleep(now + w.timeout_ns, now + w.timeout_ns + oversleep);
      return true;
    }
    return false;
  };
  for (int i = 0; i < Pacer::kSamples - 2; ++i, now += 200 * kUs) sleep_and_send(30 * kUs);
  sleep_and_send(5'000 * kUs);
  now += 200 * kUs;
  sleep_and_send(5'000 * kUs);
  ASSERT_EQ(pacer.spin_window_ns(), Pacer::kMaxNs);
  // From now on every wait is a spin, so no sleep measures anything ...
  int slept = 0;
  std::int64_t first_sleep = -1;
  for (int i = 0; i < 5'000; ++i, now += 200 * kUs) {
    if (sleep_and_send(30 * kUs)) {
      if (first_sleep < 0) first_sleep = now;
      ++slept;
    }
  }
  // ... until the stale window has halved below the 200 us between sends (1000 -> 500 -> 250
  // -> 125 us: three kStaleNs); then the thread sleeps again and learns from fresh samples only:
  // the two 5 ms wake-ups are forgotten.
  ASSERT_GT(first_sleep, 0);
  EXPECT_LE(first_sleep, 4 * Pacer::kStaleNs);
  EXPECT_GT(slept, 3'000);
  EXPECT_EQ(pacer.spin_window_ns(), 30 * kUs + Pacer::kMarginNs);
}

TEST(ScheduleTest, ARateTooLowForAnyRunNeverComesDue) {
  // --rate=1e-300 over 16 connections: a period of ~1e310 ns, infinite as a double.
  Rng rng(1);
  for (Arrival arrival : {Arrival::kUniform, Arrival::kPoisson}) {
    ArrivalSchedule schedule(arrival, 1e-300 / 16, 5'000, 0.0);
    EXPECT_EQ(schedule.Next(rng), 5'000 + ArrivalSchedule::kNeverNs);
    EXPECT_EQ(schedule.Next(rng), 5'000 + ArrivalSchedule::kNeverNs);
  }
  ArrivalSchedule usual(Arrival::kUniform, 1000, 5'000, 0.5);
  EXPECT_EQ(usual.Next(rng), 5'000 + 500'000);
  EXPECT_EQ(usual.Next(rng), 5'000 + 1'500'000);
}

struct ContextFixture {
  explicit ContextFixture(bool open_loop) {
    config.rate = open_loop ? 1000 : 0;
    ctx.config = &config;
    ctx.stats = &stats;
    ctx.phase = Phase::kRunning;
    ctx.measure_start = 1'000 * kUs;
    ctx.measure_end = 2'000 * kUs;
  }
  Config config;
  Stats stats;
  LoopContext ctx;
};

TEST(LoopContextTest, RepliesAfterTheWindowCountInOpenLoopOnly) {
  for (bool open_loop : {true, false}) {
    SCOPED_TRACE(open_loop ? "open loop" : "closed loop");
    ContextFixture f(open_loop);
    f.ctx.now = 1'500 * kUs;
    f.ctx.RecordReply(1'400 * kUs, 1'410 * kUs, 64);  // inside the window
    f.ctx.RecordReply(900 * kUs, 950 * kUs, 64);      // a warmup request: never counted
    f.ctx.now = 2'300 * kUs;                          // the drain
    f.ctx.RecordReply(1'900 * kUs, 1'910 * kUs, 64);
    EXPECT_EQ(f.stats.counters.requests, 1u);
    EXPECT_EQ(f.stats.counters.bytes_received, 64u);
    EXPECT_EQ(f.stats.counters.drain_replies, open_loop ? 1u : 0u);
    EXPECT_EQ(f.stats.latency.total_count(), open_loop ? 2u : 1u);
    EXPECT_EQ(f.stats.latency.max(), open_loop ? 400 * kUs : 100 * kUs);
    EXPECT_EQ(f.stats.latency_uncorrected.max(), open_loop ? 390 * kUs : 90 * kUs);
  }
}

TEST(LoopContextTest, UnansweredRequestsAreLowerBoundsInOpenLoop) {
  for (bool open_loop : {true, false}) {
    SCOPED_TRACE(open_loop ? "open loop" : "closed loop");
    ContextFixture f(open_loop);
    f.ctx.phase = Phase::kDraining;
    f.ctx.now = 3'000 * kUs;  // the drain's end
    f.ctx.RecordUnanswered(1'900 * kUs, /*sent=*/true);
    f.ctx.RecordUnanswered(1'950 * kUs, /*sent=*/false);
    f.ctx.RecordUnanswered(900 * kUs, /*sent=*/true);  // warmup
    f.ctx.RecordUnanswered(0, /*sent=*/false);         // closed loop's unsent: no time yet
    const Counters& c = f.stats.counters;
    EXPECT_EQ(c.unanswered, 2u);
    EXPECT_EQ(c.unfinished, 1u);
    EXPECT_EQ(c.unsent, 1u);
    if (open_loop) {
      EXPECT_EQ(f.stats.latency.total_count(), 2u);
      EXPECT_EQ(f.stats.latency.max(), 1'100 * kUs);
      EXPECT_EQ(c.unanswered_min_age_ns, 1'050 * kUs);
    } else {
      EXPECT_EQ(f.stats.latency.total_count(), 0u);
      EXPECT_EQ(c.unanswered_min_age_ns, INT64_MAX);
    }
    EXPECT_EQ(f.stats.latency_uncorrected.total_count(), 0u);  // unknown: never a lower bound
  }
}

TEST(LoopContextTest, AFloodOfErrorsBuildsOneMessage) {
  // queue_full comes once per scheduled request when the generator is far behind: count them all,
  // format only the one the report keeps.
  ContextFixture f(true);
  int built = 0;
  for (int i = 0; i < 1000; ++i) {
    f.ctx.NoteError(ErrorKind::kQueueFull, [&] {
      ++built;
      return absl::ResourceExhaustedError("queue full");
    });
  }
  EXPECT_EQ(built, 1);
  EXPECT_EQ(f.stats.counters.errors[static_cast<int>(ErrorKind::kQueueFull)], 1000u);
  EXPECT_EQ(f.ctx.first_error, "queue full");
}

}  // namespace
}  // namespace upcase::load
