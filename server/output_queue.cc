#include "server/output_queue.h"

#include <cstring>
#include <utility>

#include "common/uppercase.h"

namespace upcase {

OutputPool::OutputPool(std::size_t buffer_size, std::size_t budget)
    : buffer_size_(buffer_size),
      max_spares_(std::max<std::size_t>(1, kMaxSpareBytes / std::max<std::size_t>(buffer_size, 1))),
      budget_(budget),
      low_water_(budget / 4 * 3) {}

std::size_t OutputPool::OverBudgetAllowance(std::size_t size) const {
  const std::size_t share = budget_ / std::max<std::size_t>(holders_, 1);
  const std::size_t ceiling = 2 * budget_;
  const std::size_t left = queued_ < ceiling ? ceiling - queued_ : 0;
  std::size_t allowed = std::min({buffer_size_, share, size + left});
  if (size == 0) allowed = std::max(allowed, std::min(buffer_size_, kMinShare));
  return allowed;
}

std::unique_ptr<char[]> OutputPool::Take() {
  ++holders_;
  if (spares_.empty()) return std::make_unique_for_overwrite<char[]>(buffer_size_);
  std::unique_ptr<char[]> buffer = std::move(spares_.back());
  spares_.pop_back();
  return buffer;
}

void OutputPool::Give(std::unique_ptr<char[]> buffer) {
  --holders_;
  if (spares_.size() < max_spares_) spares_.push_back(std::move(buffer));
}

void OutputQueue::Add(const char* data, std::size_t n, bool uppercase) {
  if (n == 0) return;
  if (ring_ == nullptr) {
    ring_ = pool_->Take();
    head_ = 0;
  }
  pool_->Added(n);
  const std::size_t cap = pool_->buffer_size();
  const std::size_t into_ring = overflow_.empty() ? std::min(n, cap - ring_size_) : 0;
  CopyIn(data, into_ring, uppercase);
  if (into_ring == n) return;
  const std::size_t at = overflow_.size();
  overflow_.insert(overflow_.end(), data + into_ring, data + n);
  if (uppercase) UppercaseInPlace(overflow_.data() + at, n - into_ring);
}

void OutputQueue::CopyIn(const char* data, std::size_t n, bool uppercase) {
  const std::size_t cap = pool_->buffer_size();
  std::size_t tail = head_ + ring_size_;
  if (tail >= cap) tail -= cap;
  const std::size_t first = std::min(n, cap - tail);
  char* ring = ring_.get();
  if (uppercase) {
    Uppercase(reinterpret_cast<const std::uint8_t*>(data),
              reinterpret_cast<std::uint8_t*>(ring + tail), first);
    Uppercase(reinterpret_cast<const std::uint8_t*>(data + first),
              reinterpret_cast<std::uint8_t*>(ring), n - first);
  } else {
    std::memcpy(ring + tail, data, first);
    std::memcpy(ring, data + first, n - first);
  }
  ring_size_ += n;
}

void OutputQueue::Consume(std::size_t n) {
  pool_->Removed(n);
  const std::size_t cap = pool_->buffer_size();
  head_ += n;
  if (head_ >= cap) head_ -= cap;
  ring_size_ -= n;
  if (ring_size_ == 0) head_ = 0;  // request/response traffic keeps using the first page
  if (!overflow_.empty()) {
    const std::size_t moved = std::min(overflow_.size(), cap - ring_size_);
    CopyIn(overflow_.data(), moved, /*uppercase=*/false);
    overflow_.erase(overflow_.begin(), overflow_.begin() + static_cast<std::ptrdiff_t>(moved));
    if (overflow_.empty()) std::vector<char>().swap(overflow_);  // rare: give its memory back
  }
  if (ring_size_ == 0) pool_->Give(std::move(ring_));
}

void OutputQueue::Clear() {
  pool_->Removed(size());
  if (ring_ != nullptr) pool_->Give(std::move(ring_));
  head_ = ring_size_ = 0;
  std::vector<char>().swap(overflow_);
}

}  // namespace upcase
