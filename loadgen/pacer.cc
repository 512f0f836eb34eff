#include "loadgen/pacer.h"

#include <algorithm>

namespace upcase::load {

Pacer::Pacer(const Config& config)
    : mode_(config.spin),
      window_ns_(config.spin == SpinMode::kFixed  ? absl::ToInt64Nanoseconds(config.spin_fixed)
                 : config.spin == SpinMode::kAuto ? kInitialNs
                                                  : 0) {}

Pacer::Wait Pacer::Next(std::int64_t now, std::int64_t send_due, std::int64_t other) {
  if (mode_ == SpinMode::kAuto) {
    if (last_learnt_ == INT64_MIN) {
      last_learnt_ = now;
    } else if (now - last_learnt_ >= kStaleNs) {
      ForgetTheLargest();
      last_learnt_ = now;
    }
  }
  const std::int64_t wake = std::min(send_due, other);
  if (wake <= now) return {0, false};
  if (mode_ == SpinMode::kOff || send_due == INT64_MAX) return {wake - now, false};
  // Both are below a year (the flags' bound) past the start, so nothing here overflows.
  const std::int64_t spin_from = send_due - window_ns_;
  if (now >= spin_from) return {0, true};
  return {std::min(spin_from, other) - now, false};
}

void Pacer::LearnOversleep(std::int64_t deadline, std::int64_t woke) {
  if (mode_ != SpinMode::kAuto) return;
  samples_[seen_ % kSamples] = std::max<std::int64_t>(0, woke - deadline);
  last_learnt_ = woke;
  if (++seen_ % kRecomputeEvery == 0) Recompute();
}

std::ptrdiff_t Pacer::Filled() const {
  return static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(seen_, kSamples));
}

void Pacer::Recompute() {
  // A copy, so that the ring keeps its order of arrival; 128 values, every 32 sleeps.
  std::array<std::int64_t, kSamples> sorted = samples_;
  const std::ptrdiff_t filled = Filled();
  const std::ptrdiff_t rank = filled * kCoveredRank / kSamples;
  std::nth_element(sorted.begin(), sorted.begin() + rank, sorted.begin() + filled);
  window_ns_ = std::clamp(sorted[rank] + kMarginNs, kMinNs, kMaxNs);
}

void Pacer::ForgetTheLargest() {
  // The ring in order of arrival, less the samples that made the window what it is.
  const std::ptrdiff_t filled = Filled();
  const std::uint64_t oldest = seen_ >= kSamples ? seen_ % kSamples : 0;
  std::array<std::int64_t, kSamples> kept{};
  std::ptrdiff_t n = 0;
  for (std::ptrdiff_t i = 0; i < filled; ++i) {
    const std::int64_t sample = samples_[(oldest + static_cast<std::uint64_t>(i)) % kSamples];
    if (sample + kMarginNs < window_ns_) kept[n++] = sample;
  }
  // Nothing learnt yet, or nothing below the window: keep spinning, it is the safe side.
  if (n == 0) return;
  samples_ = kept;
  seen_ = static_cast<std::uint64_t>(n);
  Recompute();
}

}  // namespace upcase::load
