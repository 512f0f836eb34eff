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
  // Sends every `gap` on one thread; every sleep that ends by its timeout wakes `oversleep` late.
  Pacer pacer(OpenLoop(SpinMode::kAuto));
  std::int64_t now = 0;
  auto send = [&](std::int64_t gap, std::int64_t oversleep) {
    const Pacer::Wait w = pacer.Next(now, now + gap, now + 10'000 * kUs);
    if (w.timeout_ns > 0) pacer.LearnOversleep(now + w.timeout_ns, now + w.timeout_ns + oversleep);
    now += gap;
    return w.timeout_ns > 0;
  };
  // 5,000 req/s; the VM wakes 30 us late, but twice in 128 wake-ups 5 ms late: the window goes
  // to its bound, longer than the 200 us between sends.
  for (int i = 0; i < Pacer::kSamples - 2; ++i) send(200 * kUs, 30 * kUs);
  send(200 * kUs, 5'000 * kUs);
  send(200 * kUs, 5'000 * kUs);
  ASSERT_EQ(pacer.spin_window_ns(), Pacer::kMaxNs);
  const std::int64_t pinned = now;
  // From now on every wait is a spin, so no sleep measures anything ... until the window has
  // learnt nothing for kStaleNs: the two 5 ms samples are forgotten and the thread sleeps again.
  std::int64_t first_sleep = -1;
  int slept = 0;
  for (int i = 0; i < 5'000; ++i) {
    if (send(200 * kUs, 30 * kUs)) {
      if (first_sleep < 0) first_sleep = now;
      ++slept;
    }
  }
  ASSERT_GT(first_sleep, 0);
  // (The last sample was taken at its 5 ms late wake-up, which this clock does not advance to.)
  EXPECT_LE(first_sleep - pinned, Pacer::kStaleNs + 5'000 * kUs + 400 * kUs);
  EXPECT_GT(slept, 4'000);
  EXPECT_EQ(pacer.spin_window_ns(), 30 * kUs + Pacer::kMarginNs);

  // 20,000 req/s with a fresh pacer: its first window is longer than the 50 us between sends and
  // it has nothing to forget, so it spins throughout rather than probe with late sends.
  Pacer fresh(OpenLoop(SpinMode::kAuto));
  for (std::int64_t t = 0; t < 10 * Pacer::kStaleNs; t += 50 * kUs) {
    EXPECT_TRUE(fresh.Next(t, t + 50 * kUs, t + 10'000 * kUs).spinning);
  }
  EXPECT_EQ(fresh.spin_window_ns(), Pacer::kInitialNs);
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

TEST(LoopContextTest, RepliesAfterTheWindowAreRecordedInOpenLoopOnly) {
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
    // Counted in both loops (sent = requests + drain_replies + unfinished + failed), recorded in
    // open loop only.
    EXPECT_EQ(f.stats.counters.drain_replies, 1u);
    EXPECT_EQ(f.stats.latency.total_count(), open_loop ? 2u : 1u);
    EXPECT_EQ(f.stats.latency.max(), open_loop ? 400 * kUs : 100 * kUs);
    EXPECT_EQ(f.stats.latency_uncorrected.max(), open_loop ? 390 * kUs : 90 * kUs);
  }
}

TEST(LoopContextTest, FailedRequestsAreLowerBoundsInOpenLoop) {
  for (bool open_loop : {true, false}) {
    SCOPED_TRACE(open_loop ? "open loop" : "closed loop");
    ContextFixture f(open_loop);
    f.ctx.now = 1'800 * kUs;  // the connection failed
    f.ctx.RecordFailed(1'500 * kUs);
    f.ctx.RecordFailed(1'700 * kUs);
    f.ctx.RecordFailed(900 * kUs);  // warmup
    const Counters& c = f.stats.counters;
    EXPECT_EQ(c.failed, 2u);
    EXPECT_EQ(c.unanswered, 0u);
    if (open_loop) {
      EXPECT_EQ(f.stats.latency.total_count(), 2u);
      EXPECT_EQ(f.stats.latency.max(), 300 * kUs);
      EXPECT_EQ(c.failed_min_age_ns, 100 * kUs);
      EXPECT_EQ(c.lower_bounds_from(), 100 * kUs);
    } else {
      EXPECT_EQ(f.stats.latency.total_count(), 0u);
      EXPECT_EQ(c.failed_min_age_ns, INT64_MAX);
    }
    EXPECT_EQ(f.stats.latency_uncorrected.total_count(), 0u);
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
