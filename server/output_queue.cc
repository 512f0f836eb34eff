#include "server/output_queue.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "common/uppercase.h"

namespace upcase {

void ChunkUnmap::operator()(char* p) const {
  // munmap fails only for an address range that is not a mapping: a bug, not a condition.
  if (::munmap(p, size) != 0) std::abort();
}

OutputPool::OutputPool(std::size_t cap, std::size_t budget)
    : cap_(cap),
      chunk_size_(std::clamp<std::size_t>(cap, 1, kMaxChunk)),
      max_spares_(std::max<std::size_t>(1, kMaxSpareBytes / chunk_size_)),
      budget_(budget),
      low_water_(budget / 4 * 3) {}

std::size_t OutputPool::OverBudgetAllowance(std::size_t size) const {
  const std::size_t share = budget_ / std::max<std::size_t>(holders_, 1);
  const std::size_t ceiling = 2 * budget_;
  const std::size_t left = queued_ < ceiling ? ceiling - queued_ : 0;
  std::size_t allowed = std::min({cap_, share, size + left});
  if (size == 0) allowed = std::max(allowed, std::min(cap_, kMinShare));
  return allowed;
}

Chunk OutputPool::Take() {
  ++chunks_held_;
  if (!spares_.empty()) {
    Chunk chunk = std::move(spares_.back());
    spares_.pop_back();
    return chunk;
  }
  // Mapped, not malloc'd: an unmapped chunk's memory goes back to the system at once.
  void* p =
      ::mmap(nullptr, chunk_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();  // out of memory, as operator new would say
  return Chunk(static_cast<char*>(p), ChunkUnmap{chunk_size_});
}

void OutputPool::Give(Chunk chunk) {
  --chunks_held_;
  if (spares_.size() < max_spares_) spares_.push_back(std::move(chunk));
}

void OutputQueue::Add(const char* data, std::size_t n, bool uppercase) {
  if (n == 0) return;
  if (size_ == 0) ++pool_->holders_;
  pool_->Added(n);
  size_ += n;
  const std::size_t chunk = pool_->chunk_size();
  while (n > 0) {
    if (chunks_.empty() || tail_ == chunk) {
      chunks_.push_back(pool_->Take());
      tail_ = 0;
    }
    const std::size_t take = std::min(n, chunk - tail_);
    char* to = chunks_.back().get() + tail_;
    if (uppercase) {
      Uppercase(reinterpret_cast<const std::uint8_t*>(data), reinterpret_cast<std::uint8_t*>(to),
                take);
    } else {
      std::memcpy(to, data, take);
    }
    tail_ += take;
    data += take;
    n -= take;
  }
}

void OutputQueue::Consume(std::size_t n) {
  if (n == 0) return;
  pool_->Removed(n);
  size_ -= n;
  head_ += n;
  if (size_ == 0) {
    Clear();
    return;
  }
  if (head_ == pool_->chunk_size()) {  // the first chunk is done: it goes back at once
    pool_->Give(std::move(chunks_.front()));
    chunks_.erase(chunks_.begin());
    head_ = 0;
  }
}

void OutputQueue::Clear() {
  pool_->Removed(size_);
  if (!chunks_.empty()) --pool_->holders_;
  for (Chunk& c : chunks_) pool_->Give(std::move(c));
  chunks_.clear();  // keeps its capacity: the next reply does not allocate
  head_ = tail_ = size_ = 0;
}

}  // namespace upcase
