#include "common/hiccup.h"

#include <pthread.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <cerrno>

#include "common/net.h"
#include "common/sys.h"

namespace upcase {

HiccupTimer::HiccupTimer(absl::Duration period)
    : period_ns_(std::max<std::int64_t>(1, absl::ToInt64Nanoseconds(period))) {}

absl::Status HiccupTimer::SetUpThread(std::optional<int> cpu) {
  if (cpu.has_value()) {
    if (absl::Status s = PinCurrentThread(*cpu); !s.ok()) return s;
  }
  if (::prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0) != 0) {
    return ErrnoError("prctl PR_SET_TIMERSLACK", errno);
  }
  pthread_setname_np(pthread_self(), "hiccup");  // cosmetic: a failure changes nothing measured
  return absl::OkStatus();
}

std::int64_t HiccupTimer::Sleep(std::int64_t* woke_ns) {
  if (last_wake_ns_ == 0) last_wake_ns_ = MonotonicNanos();
  const std::int64_t due = last_wake_ns_ + period_ns_;
  timespec ts{static_cast<time_t>(due / 1'000'000'000), static_cast<long>(due % 1'000'000'000)};
  // EINTR: a signal woke it early; sleep the rest (its handling delay is part of a hiccup too).
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
  last_wake_ns_ = MonotonicNanos();
  *woke_ns = last_wake_ns_;
  return std::max<std::int64_t>(0, last_wake_ns_ - due);
}

}  // namespace upcase
