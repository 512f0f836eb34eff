#include "loadgen/coordinator.h"

namespace upcase::load {

Coordinator::Coordinator(int workers, std::int64_t intervals)
    : workers_(workers),
      intervals_(intervals),
      lanes_(static_cast<std::size_t>(workers)),
      taken_(static_cast<std::size_t>(workers)) {
  for (Lane& lane : lanes_) {
    for (auto& stats : lane.owned) stats = std::make_unique<Stats>();
    // owned[0] is the first one recorded into; the others start as spares.
    for (int i = 1; i < kStatsPerWorker; ++i) lane.spares[lane.spare_count++] = lane.owned[i].get();
  }
}

void Coordinator::ReportReady(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++ready_;
  if (!status.ok() && setup_error_.ok()) setup_error_ = status;
  cv_.notify_all();
}

std::optional<std::int64_t> Coordinator::AwaitStart() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return started_ || aborted_; });
  if (aborted_) return std::nullopt;
  return start_ns_;
}

Stats* Coordinator::FirstStats(int w) { return lanes_[static_cast<std::size_t>(w)].owned[0].get(); }

void Coordinator::Publish(int w, std::int64_t k, Stats** stats) {
  bool complete = false;
  {
    std::unique_lock<std::mutex> lock(mu_);
    Lane& lane = lanes_[static_cast<std::size_t>(w)];
    spare_cv_.wait(lock, [&] { return lane.spare_count > 0; });
    lane.published[(lane.published_first + lane.published_count++) % kStatsPerWorker] = {k, *stats};
    *stats = lane.spares[--lane.spare_count];
    complete = main_waits_for_ == k && IntervalReady(k);
  }
  // Woken after the unlock, the main thread does not block on the mutex at once.
  if (complete) cv_.notify_all();
}

void Coordinator::PublishNothingFrom(int w, std::int64_t k) {
  bool complete = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    lanes_[static_cast<std::size_t>(w)].nothing_from = k;
    complete = main_waits_for_ != 0 && IntervalReady(main_waits_for_);
  }
  if (complete) cv_.notify_all();
}

bool Coordinator::IntervalReady(std::int64_t k) const {
  for (const Lane& lane : lanes_) {
    const bool front_is_k =
        lane.published_count > 0 && lane.published[lane.published_first].first == k;
    if (!front_is_k && k < lane.nothing_from) return false;
  }
  return true;
}

absl::Status Coordinator::AwaitReady() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return ready_ == workers_; });
  return setup_error_;
}

void Coordinator::Start(std::int64_t start_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  started_ = true;
  start_ns_ = start_ns;
  cv_.notify_all();
}

void Coordinator::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

void Coordinator::TakeInterval(std::int64_t k, Stats* sum) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    main_waits_for_ = k;
    cv_.wait(lock, [&] { return IntervalReady(k); });
    main_waits_for_ = 0;
    for (std::size_t w = 0; w < lanes_.size(); ++w) {
      Lane& lane = lanes_[w];
      taken_[w] = nullptr;
      if (lane.published_count > 0 && lane.published[lane.published_first].first == k) {
        taken_[w] = lane.published[lane.published_first].second;
        lane.published_first = (lane.published_first + 1) % kStatsPerWorker;
        --lane.published_count;
      }
    }
  }
  // The expensive part, outside the lock and on this thread: the workers never wait for it.
  for (Stats* stats : taken_) {
    if (stats == nullptr) continue;
    sum->Add(*stats);
    stats->Reset();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (std::size_t w = 0; w < lanes_.size(); ++w) {
      if (taken_[w] != nullptr) lanes_[w].spares[lanes_[w].spare_count++] = taken_[w];
    }
  }
  spare_cv_.notify_all();
}

}  // namespace upcase::load
