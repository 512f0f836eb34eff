// A connection's output that the kernel has not taken yet: the one capped queue both reactors
// (epoll and uring) keep per connection, and the per-shard pool its storage comes from.
//
// Why a queue at all: a reactor never blocks in send(), so when a client reads slower than it
// writes, the replies the socket cannot take must wait somewhere. --conn-buffer caps that place,
// and the reactors stop reading a connection whose queue has no room (backpressure), so a client
// that never reads costs at most the cap here.
//
// Why a ring: uring's send reads front() in place while it is in flight, so nothing may move under
// it; new output only goes into free space. Writing restarts at offset 0 whenever the queue
// empties, so request/response traffic keeps touching only the first page of the storage.
//
// Why a pool: storage is taken when a connection first has output waiting and handed back when
// the queue drains, so an idle or keeping-up connection holds none. Handed back, it goes to its
// shard's OutputPool, which keeps a few spares, so a bulk client whose queue fills and drains over
// and over does not free and fault in --conn-buffer bytes each time. Spares are bounded in bytes,
// so memory stays bounded: at most one buffer per connection with output waiting, plus the spares.
//
// Why a budget (--output-budget): --conn-buffer bounds one connection, but thousands of clients
// that never read would each fill theirs. The pool counts the unsent output of all its queues;
// above the budget, a queue may hold no more than a fair share of it (the budget divided by the
// queues holding output), so the connections holding the most stop being read (their room() is
// 0) while those holding little, or none, are still served; and all of them together stop at
// twice the budget. The budget applies until the total falls to three quarters of it
// (hysteresis, so reading does not flap at the line). An empty queue may always take a few KiB
// (kMinShare): its connection would otherwise never be woken again. So a shard's unsent output
// stays below twice the budget, plus kMinShare for each queue that was empty at that ceiling.
#ifndef UPCASE_SERVER_OUTPUT_QUEUE_H_
#define UPCASE_SERVER_OUTPUT_QUEUE_H_

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

namespace upcase {

// One shard's storage for its connections' output queues: buffers of `buffer_size` bytes
// (--conn-buffer). Owned by one thread, like everything of a shard.
class OutputPool {
 public:
  // Spare buffers are kept while they total at most this many bytes (and always one).
  static constexpr std::size_t kMaxSpareBytes = 4 << 20;

  // `budget`: the unsent output of all queues above which they are held to a fair share; 0: none.
  explicit OutputPool(std::size_t buffer_size, std::size_t budget = 0);
  OutputPool(const OutputPool&) = delete;
  OutputPool& operator=(const OutputPool&) = delete;

  std::size_t buffer_size() const { return buffer_size_; }
  std::size_t max_spares() const { return max_spares_; }
  std::size_t spares() const { return spares_.size(); }
  // Unsent bytes in all queues of this pool, and the queues holding some.
  std::size_t queued() const { return queued_; }
  std::size_t holders() const { return holders_; }
  // Set when queued() went above the budget; cleared once it is down to 3/4 of it.
  bool over_budget() const { return over_budget_; }

  // What an empty queue may always take, over the budget too (see the file comment).
  static constexpr std::size_t kMinShare = 4096;

  // How much a queue holding `size` bytes may hold now: the cap; over the budget, its fair share
  // when smaller, and no more than the shard's total may still grow under twice the budget.
  std::size_t Allowance(std::size_t size) const {
    if (!over_budget_) return buffer_size_;
    return OverBudgetAllowance(size);
  }

  // A spare buffer, or a new one whose pages stay out of the resident set until written.
  std::unique_ptr<char[]> Take();
  // Keeps `buffer` as a spare, or frees it when there are enough.
  void Give(std::unique_ptr<char[]> buffer);

 private:
  friend class OutputQueue;
  std::size_t OverBudgetAllowance(std::size_t size) const;
  // Queues report what they took in and handed on.
  void Added(std::size_t n) {
    queued_ += n;
    if (budget_ != 0 && queued_ > budget_) over_budget_ = true;
  }
  void Removed(std::size_t n) {
    queued_ -= n;
    if (queued_ <= low_water_) over_budget_ = false;
  }

  const std::size_t buffer_size_;
  const std::size_t max_spares_;
  const std::size_t budget_;     // 0: none
  const std::size_t low_water_;  // 3/4 of the budget
  std::vector<std::unique_ptr<char[]>> spares_;
  std::size_t queued_ = 0;   // sum of the queues' size()
  std::size_t holders_ = 0;  // buffers taken and not given back: queues holding output
  bool over_budget_ = false;
};

// Unsent output of one connection, in order. Holds storage from its pool only while non-empty.
//
// Invariants: size() == ring bytes + overflow bytes; the overflow is non-empty only while the ring
// is full; head_ < capacity whenever the ring holds a buffer.
//
// The cap is the pool's buffer size. Append() never refuses: bytes beyond the cap wait in an
// overflow that grows. Callers keep it empty by appending no more than room(): epoll exactly;
// uring's cancel fallback for kernels before 6.8 may overshoot by one burst of receive buffers.
class OutputQueue {
 public:
  explicit OutputQueue(OutputPool* pool) : pool_(pool) {}
  OutputQueue(const OutputQueue&) = delete;
  OutputQueue& operator=(const OutputQueue&) = delete;
  ~OutputQueue() { Clear(); }

  bool empty() const { return size() == 0; }
  std::size_t size() const { return ring_size_ + overflow_.size(); }
  // How much more fits under the cap, or over the output budget under the fair share.
  std::size_t room() const {
    const std::size_t allowed = pool_->Allowance(size());
    return size() < allowed ? allowed - size() : 0;
  }

  // Appends n bytes as they are.
  void Append(const char* data, std::size_t n) { Add(data, n, /*uppercase=*/false); }
  // Appends n bytes uppercased (the copy is the uppercasing pass: no second one).
  void AppendUppercased(const char* data, std::size_t n) { Add(data, n, /*uppercase=*/true); }

  // The oldest unsent bytes, as one contiguous run (the rest follows after Consume).
  const char* front() const { return ring_.get() + head_; }
  std::size_t front_size() const { return std::min(ring_size_, pool_->buffer_size() - head_); }

  // The kernel took the first n <= front_size() bytes. No send from front() may be in flight.
  void Consume(std::size_t n);

  // Drops everything (the connection is closed) and hands the storage back.
  void Clear();

 private:
  void Add(const char* data, std::size_t n, bool uppercase);
  // Copies n bytes that fit into the ring's free space, wrapping at its end.
  void CopyIn(const char* data, std::size_t n, bool uppercase);

  OutputPool* pool_;
  std::unique_ptr<char[]> ring_;  // from pool_; set iff ring_size_ > 0
  std::size_t head_ = 0;          // first unsent byte
  std::size_t ring_size_ = 0;     // unsent bytes in the ring, from head_, wrapping
  std::vector<char> overflow_;    // beyond the cap, in order after the ring's bytes
};

}  // namespace upcase

#endif  // UPCASE_SERVER_OUTPUT_QUEUE_H_
