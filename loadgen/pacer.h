// How an open-loop thread waits for its next send time: the hybrid wait.
//
// A timer wakes a thread late. On the reference VM an epoll_pwait2 of 500 us returns 30 to 70 us
// after its deadline (the hypervisor's wake-up latency; timer slack is already 1 ns), and in open
// loop every microsecond of that is send lag, charged to the server by the corrected latency. So
// the thread sleeps only until a *spin window* before the send is due, then polls epoll with a
// zero timeout -- handling replies as they arrive -- until the clock reaches it.
//
// --spin=auto sizes the window from the oversleeps the thread measures itself (every sleep that
// ended by its timeout is one sample): a high percentile of the recent ones plus a margin, within
// bounds. A quiet machine then spins a few microseconds per send and a VM its wake-up latency.
// A window as long as the time between sends leaves no sleep to learn from: two wake-ups a
// millisecond late among 128 would pin it at kMaxNs, spinning away the thread's CPU for the rest
// of the run. So a window that has learnt nothing for kStaleNs forgets the samples that set it
// and is recomputed from the rest, step by step, until the thread sleeps and measures again.
// Where spinning throughout is right (sends closer than the oversleeps) the fresh samples soon
// set it back; with no sample at all (kInitialNs longer than the time between sends) it stays.
// Spinning is CPU time: it is in client_cpu_s, and client_spin_s says how much of it was spent so.
#ifndef UPCASE_LOADGEN_PACER_H_
#define UPCASE_LOADGEN_PACER_H_

#include <array>
#include <cstddef>
#include <cstdint>

#include "loadgen/config.h"

namespace upcase::load {

class Pacer {
 public:
  // --spin=auto: recent oversleeps kept, and how often the window is recomputed from them.
  static constexpr int kSamples = 128;
  static constexpr int kRecomputeEvery = 32;
  // The window covers this rank among the kSamples recent oversleeps (126 of 0..127: ~p99) ...
  static constexpr int kCoveredRank = kSamples - 2;
  // ... plus this margin for the loop's own work between waking and sending ...
  static constexpr std::int64_t kMarginNs = 2'000;
  // ... within these bounds; it starts at kInitialNs until kRecomputeEvery samples are in.
  static constexpr std::int64_t kMinNs = 2'000;
  static constexpr std::int64_t kMaxNs = 1'000'000;
  static constexpr std::int64_t kInitialNs = 100'000;
  // No sample for this long: the samples that set the window are forgotten (see above).
  static constexpr std::int64_t kStaleNs = 100'000'000;

  explicit Pacer(const Config& config);

  struct Wait {
    std::int64_t timeout_ns;  // for epoll_pwait2; 0 = poll
    bool spinning;            // the zero timeout is the spin window's, not a deadline passed
  };
  // How to wait at `now` when the next send is due at `send_due` (INT64_MAX: none) and the
  // thread's other deadlines (housekeeping, interval, window end) are at `other`. In auto mode
  // it also ages a window that has learnt nothing for kStaleNs.
  Wait Next(std::int64_t now, std::int64_t send_due, std::int64_t other);

  // A sleep meant to end at `deadline` ended, by its timeout, at `woke`.
  void LearnOversleep(std::int64_t deadline, std::int64_t woke);

  std::int64_t spin_window_ns() const { return window_ns_; }

 private:
  std::ptrdiff_t Filled() const;
  void Recompute();
  void ForgetTheLargest();

  const SpinMode mode_;
  std::int64_t window_ns_;
  std::array<std::int64_t, kSamples> samples_{};
  std::uint64_t seen_ = 0;
  std::int64_t last_learnt_ = INT64_MIN;  // when a sample last came (or aging last began)
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_PACER_H_
