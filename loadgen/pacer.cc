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
      window_ns_ = std::max(kMinNs, window_ns_ / 2);
      seen_ = 0;
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
  if (++seen_ % kRecomputeEvery != 0) return;
  // A copy, so that the ring keeps its order of arrival; 128 values, every 32 sleeps.
  std::array<std::int64_t, kSamples> sorted = samples_;
  const auto filled = static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(seen_, kSamples));
  const std::ptrdiff_t rank = filled * kCoveredRank / kSamples;
  std::nth_element(sorted.begin(), sorted.begin() + rank, sorted.begin() + filled);
  window_ns_ = std::clamp(sorted[rank] + kMarginNs, kMinNs, kMaxNs);
}

}  // namespace upcase::load
