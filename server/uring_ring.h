// The io_uring machinery under the uring backend (backend_uring.cc), apart from its I/O model:
//
//   - probing what the running kernel offers (UringAvailable, UseRecvLimit);
//   - a ring created with the richest setup flags the kernel accepts, enabled by the thread that
//     submits to it (Ring);
//   - provided-buffer rings the kernel picks receive buffers from (BufferRing);
//   - the 64-bit user_data every request carries, encoded and decoded in one place (UserData).
//
// Built only with liburing (2.3, Debian 12's). Everything here is owned by one shard thread.
#ifndef UPCASE_SERVER_URING_RING_H_
#define UPCASE_SERVER_URING_RING_H_

#include <liburing.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/sys.h"

namespace upcase {

// ---- user_data: the one place it is encoded and decoded ----
//
// Every submission carries a 64-bit user_data that comes back in its completions:
//
//    63        56 55                  32 31                                  0
//   +------------+----------------------+-------------------------------------+
//   |   op (8)   |  generation (24)     |  index: connection slot, buffer id  |
//   +------------+----------------------+-------------------------------------+
//
// `Op` is the backend's enum of request kinds (8 bits). The generation is a slot's reuse count,
// so a completion for a slot's earlier occupant can be told from one for its current occupant.
template <typename Op>
struct UserData {
  static constexpr std::uint32_t kGenMask = 0xFF'FFFF;

  Op op;
  std::uint32_t gen = 0;    // 24 bits used
  std::uint32_t index = 0;  // connection slot or buffer id

  constexpr std::uint64_t Encode() const {
    return (static_cast<std::uint64_t>(static_cast<std::uint8_t>(op)) << 56) |
           (static_cast<std::uint64_t>(gen & kGenMask) << 32) | index;
  }
  static constexpr UserData Decode(std::uint64_t data) {
    return {static_cast<Op>(static_cast<std::uint8_t>(data >> 56)),
            static_cast<std::uint32_t>(data >> 32) & kGenMask, static_cast<std::uint32_t>(data)};
  }
};

// ---- What the running kernel offers ----

// OK when this kernel runs the uring backend (Linux >= 6.0: the opcodes it uses, multishot recv,
// provided buffer rings); else why not, e.g. "io_uring_setup: Operation not permitted (sysctl
// kernel.io_uring_disabled=2)". Probed once per process, on a thread of its own.
absl::Status UringAvailable();

// Whether multishot recvs get a total-bytes limit (Linux 6.17): when the kernel has it, unless
// UPCASE_URING_RECV_LIMIT=off asks for the older cancel-based backpressure (to compare the two,
// and so that tests cover both on a new kernel).
bool UseRecvLimit();

// The levers (uring_levers.h) this kernel supports: each probed once per process, with the recv
// limit. `sqpoll`: the ring has a kernel thread submitting for it (--sqpoll).
unsigned UringLeversSupported(bool sqpoll);

// Linux 6.17 takes a total-bytes limit for a multishot recv in sqe->optlen, the 32 bits that
// liburing 2.3's io_uring_sqe still calls file_index. The kernel ends the recv (no
// IORING_CQE_F_MORE) with the completion that reaches the limit, which may carry up to a buffer
// less one byte beyond it. 0: no limit.
inline void SetMultishotLimit(io_uring_sqe* sqe, std::uint32_t limit) { sqe->file_index = limit; }

// The ring is broken beyond what a shard can recover from, in the middle of a handler: says so on
// stderr and aborts.
[[noreturn]] void DieOnRingError(const absl::Status& status);

// A timeout request completes with -ETIME (expired, as intended) or -ECANCELED (cancelled at
// exit); anything else is a bug (DieOnRingError, naming `what`).
void CheckTimeout(const io_uring_cqe& cqe, const char* what);

// ---- The ring ----

struct RingOptions {
  unsigned sq_entries = 0;         // submission queue entries
  unsigned cq_entries = 0;         // completion queue entries
  bool sqpoll = false;             // a kernel thread polls the submission queue
  unsigned sq_thread_idle_ms = 0;  // with sqpoll: how long it spins on an empty queue
};

// One io_uring instance and the count of requests it holds.
//
// Setup flags, richest first, falling back when the kernel answers EINVAL:
//   SINGLE_ISSUER | DEFER_TASKRUN (6.1) -> COOP_TASKRUN (5.19) -> none;
//   with sqpoll: SQPOLL | SINGLE_ISSUER -> SQPOLL (DEFER_TASKRUN cannot be combined with it).
// The ring is created disabled, so that Create() can run where resources are checked (before the
// ready line) and Enable() on the thread that will submit, which SINGLE_ISSUER binds it to.
class Ring {
 public:
  Ring() = default;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring() { Close(); }

  absl::Status Create(const RingOptions& options);
  // On the submitting thread: enables the ring and, with `register_fd` (the ring-fd lever),
  // registers its fd with this thread, which spares the kernel a file table lookup in every
  // io_uring_enter(). False in registered_fd() when the kernel refused it (its table is full).
  absl::Status Enable(bool register_fd);
  bool registered_fd() const { return registered_fd_; }
  void Close();  // io_uring_queue_exit; also cancels whatever is still in flight

  io_uring* get() { return &ring_; }
  bool open() const { return open_; }
  // Requests submitted whose final completion (one without IORING_CQE_F_MORE) has not arrived.
  std::uint64_t in_flight() const { return in_flight_; }

  // A free submission entry, counted as in flight. When the SQ is full mid-batch it is submitted
  // early; a ring that cannot take any more is fatal (DieOnRingError).
  io_uring_sqe* GetSqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) sqe = GetSqeAfterSubmitting();
    ++in_flight_;
    return sqe;
  }

  // A request submitted with IOSQE_CQE_SKIP_SUCCESS that succeeded (so posted no completion) is
  // no longer in flight: the caller knows it by other means.
  void CompletedWithoutCqe() { --in_flight_; }
  // Whether every entry queued so far has been submitted to the kernel.
  bool AllSubmitted() { return io_uring_sq_ready(&ring_) == 0; }
  // Whether completions wait in the kernel because the CQ was full (they reach it in the next
  // io_uring_enter).
  bool CqOverflowed() const { return IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_CQ_OVERFLOW; }

  // A timeout request that completes with `data` after `d`. `ts` holds the time the kernel reads,
  // and must stay until the completion.
  void AddTimeout(__kernel_timespec* ts, absl::Duration d, std::uint64_t data);
  // Cancels the request whose user_data is `target`; the cancel's own completion carries `data`.
  void AddCancel(std::uint64_t target, std::uint64_t data) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, data);
  }

  // Submits everything queued and sleeps until at least one completion: one io_uring_enter().
  // Interruptions (EINTR, EAGAIN, EBUSY, ETIME) are not errors.
  absl::Status SubmitAndWait();
  // Lever min-wait (Linux 6.12): the same io_uring_enter(), but once a completion has arrived it
  // sleeps on until `wait_nr` have, or `min_wait` has passed since the call. Fewer wake-ups and
  // larger batches below saturation, for up to `min_wait` more latency.
  absl::Status SubmitAndWaitBatch(unsigned wait_nr, absl::Duration min_wait);

  // Calls handle(cqe) for every completion that has arrived, then marks them seen.
  template <typename F>
  void ForEachCompletion(F&& handle) {
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (!(cqe->flags & IORING_CQE_F_MORE)) --in_flight_;
      handle(*cqe);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
  }

  // Cancels every request still in flight and reaps (through `reap`, which calls
  // ForEachCompletion) until the kernel confirmed them all or `timeout` passed, so that no
  // request outlives the memory it points into.
  template <typename Reap>
  void CancelEverything(absl::Duration timeout, Reap&& reap) {
    if (in_flight_ > 0) {
      io_uring_sqe* sqe = GetSqe();
      io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data64(sqe, cancel_all_data_);
    }
    const std::int64_t deadline = MonotonicNanos() + absl::ToInt64Nanoseconds(timeout);
    while (in_flight_ > 0 && MonotonicNanos() < deadline) {
      if (!WaitBriefly()) break;
      reap();
    }
  }
  // The user_data of CancelEverything's own request (a value the backend's handler ignores).
  void set_cancel_all_data(std::uint64_t data) { cancel_all_data_ = data; }

 private:
  io_uring_sqe* GetSqeAfterSubmitting();
  bool WaitBriefly();  // false on a real error

  io_uring ring_{};
  bool open_ = false;
  bool sqpoll_ = false;
  bool registered_fd_ = false;
  std::uint64_t in_flight_ = 0;
  std::uint64_t cancel_all_data_ = 0;
};

// ---- Provided buffers ----

// A provided-buffer ring: up to `count` buffers of `size` bytes that the kernel picks from for
// requests with IOSQE_BUFFER_SELECT in group `group`. `initial` of them are given at first, Grow()
// gives more. Buffers handed back with Return() become visible to the kernel at Commit() (once
// per loop iteration). liburing 2.3 has no io_uring_setup_buf_ring, so the ring is mmap'ed (it
// must be page aligned) and registered by hand with io_uring_register_buf_ring.
class BufferRing {
 public:
  BufferRing() = default;
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;
  // The io_uring must be gone (or the group unregistered) first: the kernel holds these pages.
  ~BufferRing();

  // `count` must be a power of two (the ring's index is masked).
  absl::Status Init(io_uring* uring, std::uint16_t group, std::uint32_t count, std::uint32_t size,
                    std::uint32_t initial);

  // Gives the kernel up to n buffers it never had (visible at the next Commit()). False when all
  // `count` are given already.
  bool Grow(std::uint32_t n);
  std::uint32_t given() const { return given_; }
  std::uint64_t given_bytes() const { return std::uint64_t{given_} * size_; }
  // Returned since the last Commit(): not visible to the kernel yet.
  int pending_returns() const { return returned_; }

  char* Buffer(std::uint16_t bid) const { return buffers_ + std::size_t{bid} * size_; }
  std::uint32_t size() const { return size_; }

  void Return(std::uint16_t bid) {
    io_uring_buf_ring_add(ring_, Buffer(bid), size_, bid, io_uring_buf_ring_mask(count_),
                          returned_++);
  }
  void Commit() {
    if (returned_ == 0) return;
    io_uring_buf_ring_advance(ring_, returned_);
    returned_ = 0;
  }

 private:
  io_uring_buf_ring* ring_ = nullptr;
  std::size_t ring_bytes_ = 0;
  char* buffers_ = nullptr;
  std::size_t buffer_bytes_ = 0;
  std::uint32_t count_ = 0;
  std::uint32_t size_ = 0;
  std::uint32_t given_ = 0;  // buffers [0, given_) belong to the kernel or are in use
  int returned_ = 0;         // added since the last Commit()
};

}  // namespace upcase

#endif  // UPCASE_SERVER_URING_RING_H_
