// The platform's own stalls, measured as jHiccup does: a thread sleeps a short, fixed period on
// CLOCK_MONOTONIC and records how much later than asked it woke up. Whatever delays that thread
// -- the hypervisor stealing the CPU, another process on it, an interrupt storm, a frequency
// change -- delays a server or load thread on the same CPU as well, so the oversleeps are the
// host's share of any latency measured beside them.
//
// Cost: one wakeup per period (a timer interrupt and two context switches, about 2-5 us of CPU on
// a VM), so 1 ms costs well under 1 % of a CPU. The thread's timer slack is set to 1 ns: with the
// default 50 us every wakeup would be up to 50 us late by design, hiding the host's noise.
#ifndef UPCASE_COMMON_HICCUP_H_
#define UPCASE_COMMON_HICCUP_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace upcase {

// The hiccup recorder's sleep, and the range a flag may set it to.
inline constexpr absl::Duration kHiccupPeriod = absl::Milliseconds(1);
inline constexpr absl::Duration kMinHiccupPeriod = absl::Microseconds(100);
inline constexpr absl::Duration kMaxHiccupPeriod = absl::Seconds(1);

class HiccupTimer {
 public:
  explicit HiccupTimer(absl::Duration period = kHiccupPeriod);

  // On the recording thread, before the first Sleep: pins it to `cpu` (when given), sets its
  // timer slack and names it "hiccup" (for top -H). The error names the call that failed.
  absl::Status SetUpThread(std::optional<int> cpu);

  // Sleeps until one period after the previous wakeup (the first call: after now) and returns how
  // late it woke, in ns (>= 0). `*woke_ns` receives the CLOCK_MONOTONIC wakeup time.
  std::int64_t Sleep(std::int64_t* woke_ns);

 private:
  std::int64_t period_ns_;
  std::int64_t last_wake_ns_ = 0;
};

}  // namespace upcase

#endif  // UPCASE_COMMON_HICCUP_H_
