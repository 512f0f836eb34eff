// A connection's output that the kernel has not taken yet: the one capped queue the reactors
// (epoll, uring, poll, select) keep per connection, and the per-shard pool its storage comes from.
//
// Why a queue at all: a reactor never blocks in send(), so when a client reads slower than it
// writes, the replies the socket cannot take must wait somewhere. --conn-buffer caps that place,
// and the reactors stop reading a connection whose queue has no room (backpressure), so a client
// that never reads costs at most the cap here.
//
// Why chunks: uring's send reads front() in place while it is in flight, so nothing may move under
// it; new output only goes into free space. The queue is a list of fixed-size chunks (kMaxChunk,
// or --conn-buffer when smaller), each handed back as soon as its last byte is consumed. So the
// memory a queue holds follows what it holds -- its bytes, plus at most the unused ends of its
// first and last chunk -- and never --conn-buffer: a ring of --conn-buffer bytes that a slow
// reader keeps non-empty while data streams through would have its write position travel the
// whole ring and touch every page of it, so its resident memory approached --conn-buffer whatever
// share of the budget it held. A queue that empties hands its chunk back, and the next reply takes
// the same chunk from the pool, so request/response traffic keeps touching only its first page.
//
// Why a pool: chunks are taken when a connection first has output waiting and handed back as they
// drain, so an idle or keeping-up connection holds none. Handed back, a chunk goes to its shard's
// OutputPool, which keeps up to kMaxSpareBytes of spares, so streaming through a queue reuses the
// same few chunks instead of mapping and faulting in fresh ones; beyond that, chunks are unmapped
// (munmap: the memory goes back to the system at once, which a malloc'd block in the middle of the
// heap would not). So memory stays bounded: a shard's unsent output, plus two chunks per queue
// holding output, plus the spares.
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

// A chunk of output storage: mapped memory of the pool's chunk size, unmapped when released.
struct ChunkUnmap {
  std::size_t size = 0;
  void operator()(char* p) const;
};
using Chunk = std::unique_ptr<char, ChunkUnmap>;

// One shard's storage for its connections' output queues: chunks of chunk_size() bytes, queues
// capped at cap() bytes (--conn-buffer). Owned by one thread, like everything of a shard.
class OutputPool {
 public:
  // The largest chunk: big enough that a bulk send of one chunk costs one system call per 256 KiB,
  // small enough that the unused ends of a queue's chunks stay small beside a budget's share.
  static constexpr std::size_t kMaxChunk = 256 << 10;
  // Spare chunks are kept while they total at most this many bytes (and always one).
  static constexpr std::size_t kMaxSpareBytes = 4 << 20;

  // `cap`: --conn-buffer. `budget`: the unsent output of all queues above which they are held to
  // a fair share; 0: none.
  explicit OutputPool(std::size_t cap, std::size_t budget = 0);
  OutputPool(const OutputPool&) = delete;
  OutputPool& operator=(const OutputPool&) = delete;

  std::size_t cap() const { return cap_; }
  std::size_t chunk_size() const { return chunk_size_; }
  std::size_t max_spares() const { return max_spares_; }
  std::size_t spares() const { return spares_.size(); }
  // Chunks taken and not handed back: held by queues.
  std::size_t chunks_held() const { return chunks_held_; }
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
    if (!over_budget_) return cap_;
    return OverBudgetAllowance(size);
  }

  // A spare chunk, or a newly mapped one whose pages stay out of the resident set until written.
  Chunk Take();
  // Keeps `chunk` as a spare, or unmaps it when there are enough.
  void Give(Chunk chunk);

 private:
  friend class OutputQueue;
  std::size_t OverBudgetAllowance(std::size_t size) const;
  // Queues report what they took in and handed on, and when they start and stop holding output.
  void Added(std::size_t n) {
    queued_ += n;
    if (budget_ != 0 && queued_ > budget_) over_budget_ = true;
  }
  void Removed(std::size_t n) {
    queued_ -= n;
    if (queued_ <= low_water_) over_budget_ = false;
  }

  const std::size_t cap_;
  const std::size_t chunk_size_;
  const std::size_t max_spares_;
  const std::size_t budget_;     // 0: none
  const std::size_t low_water_;  // 3/4 of the budget
  std::vector<Chunk> spares_;
  std::size_t chunks_held_ = 0;
  std::size_t queued_ = 0;   // sum of the queues' size()
  std::size_t holders_ = 0;  // queues holding output
  bool over_budget_ = false;
};

// Unsent output of one connection, in order. Holds chunks from its pool only while non-empty.
//
// Invariants: chunks_ is empty iff size() == 0; the bytes are chunks_[0][head_..], the full chunks
// between, and chunks_.back()[..tail_] (one chunk: [head_, tail_)); head_ < chunk size.
//
// The cap is the pool's cap(). Append() never refuses: bytes beyond the cap take more chunks.
// Callers keep within it by appending no more than room(): epoll exactly; uring's cancel fallback
// for kernels before 6.8 may overshoot by one burst of receive buffers.
class OutputQueue {
 public:
  explicit OutputQueue(OutputPool* pool) : pool_(pool) {}
  OutputQueue(const OutputQueue&) = delete;
  OutputQueue& operator=(const OutputQueue&) = delete;
  ~OutputQueue() { Clear(); }

  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }
  // How much more fits under the cap, or over the output budget under the fair share.
  std::size_t room() const {
    const std::size_t allowed = pool_->Allowance(size_);
    return size_ < allowed ? allowed - size_ : 0;
  }

  // Appends n bytes as they are.
  void Append(const char* data, std::size_t n) { Add(data, n, /*uppercase=*/false); }
  // Appends n bytes uppercased (the copy is the uppercasing pass: no second one).
  void AppendUppercased(const char* data, std::size_t n) { Add(data, n, /*uppercase=*/true); }

  // The oldest unsent bytes, as one contiguous run (the rest follows after Consume).
  const char* front() const { return chunks_.empty() ? nullptr : chunks_.front().get() + head_; }
  std::size_t front_size() const {
    if (chunks_.empty()) return 0;
    return (chunks_.size() == 1 ? tail_ : pool_->chunk_size()) - head_;
  }

  // The kernel took the first n <= front_size() bytes. No send from front() may be in flight.
  void Consume(std::size_t n);

  // Drops everything (the connection is closed) and hands the storage back.
  void Clear();

 private:
  void Add(const char* data, std::size_t n, bool uppercase);

  OutputPool* pool_;
  std::vector<Chunk> chunks_;  // oldest first
  std::size_t head_ = 0;       // first unsent byte of chunks_.front()
  std::size_t tail_ = 0;       // end of the bytes written into chunks_.back()
  std::size_t size_ = 0;
};

}  // namespace upcase

#endif  // UPCASE_SERVER_OUTPUT_QUEUE_H_
