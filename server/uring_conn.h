// A TCP connection of the uring backend (backend_uring.cc): its slot, the two state machines of
// the requests the kernel holds for it, its life cycle, and its two output paths.
#ifndef UPCASE_SERVER_URING_CONN_H_
#define UPCASE_SERVER_URING_CONN_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "server/limits.h"
#include "server/output_queue.h"
#include "server/uring_ring.h"

namespace upcase {

// Input held in the provided buffer it arrived in, uppercased in place, until a direct send takes
// it (see AddDirectSend in backend_uring.cc).
struct Held {
  std::uint16_t bid;
  std::uint32_t len;
};

// Which recv the kernel holds for a connection:
//
//   kNone --ArmRecv--> kMultishot --completion without F_MORE--> kNone
//                          |
//                          +--AddCancelRecv--> kCancelling --its last completion--> kNone
//   kNone --ArmRecv--> kSingle --its completion--> kNone
//   (kSingle may be cancelled too, when input is over)
enum class RecvState : std::uint8_t { kNone, kSingle, kMultishot, kCancelling };

// Which send the kernel holds: at most one, so bytes leave in order.
enum class SendState : std::uint8_t { kNone, kFromQueue, kDirect };

// A connection's life:
//
//   kServing --client's FIN, or shutdown's read limit reached--> kInputOver
//   kInputOver --everything sent; not shutting down--> kClosing
//   kInputOver --everything sent; shutting down: FIN sent--> kLingering
//   kLingering --client acknowledged everything, or closed--> kClosing
//   any --error, reset, grace over--> kClosing
//   kClosing --AddCancelAll (a recv or send still in flight)--> kCancelled
//   kClosing, kCancelled --no request left (ops == 0)--> slot released
enum class Life : std::uint8_t { kServing, kInputOver, kLingering, kClosing, kCancelled };

// One TCP connection, owned by the shard that accepted it. Slots are reused; `ops` counts the
// requests of this connection the kernel still holds, and a slot is freed only when it is 0.
//
// Its output takes one of two paths, never both at once, so bytes leave in arrival order:
//   - direct (`out` empty): replies are sent straight from the provided buffers their requests
//     arrived in (`held`), without waiting (MSG_DONTWAIT). The kernel normally takes them at
//     once and the buffers go back to the ring within the same loop iteration: no copy, and no
//     per-connection memory touched, which matters for large requests.
//   - queued: when the socket cannot take everything (a slow or stuck reader), what is left is
//     copied into `out` and the buffers are returned at once, so a client that does not read
//     never holds buffers the whole shard shares. Everything after goes through `out` until it
//     is empty again.
struct Conn {
  explicit Conn(OutputPool* pool) : out(pool) {}

  int fd = -1;  // -1: the slot is free
  // Lever fixed-files: fd is also in the shard's registered file table, at `index`, and the
  // connection's requests name it there (Shard::SetFile).
  bool fixed = false;
  std::uint32_t index = 0;
  std::uint32_t gen = 0;
  std::uint32_t ops = 0;  // submitted requests whose final completion has not arrived
  RecvState recv = RecvState::kNone;
  SendState send = SendState::kNone;
  Life life = Life::kServing;
  bool touched = false;             // in Shard::touched_: handled after this batch
  OutputQueue out;                  // size() <= --conn-buffer (the exception: uring_recv.h)
  std::vector<Held> held;           // direct path only: non-empty only while `out` is empty
  std::size_t held_sent = 0;        // bytes of held.front() already sent
  std::size_t held_bytes = 0;       // bytes in `held` not sent yet
  std::size_t direct_len = 0;       // bytes the direct send in flight covers (more may arrive)
  std::uint32_t send_seq = 0;       // counts direct sends: which one a SkippedSend entry means
  bool send_skips_success = false;  // the direct send in flight posts a completion only if short
  std::vector<iovec> iov;        // a direct send of several buffers; stable while it is in flight
  msghdr msg{};                  // ... pointing at `iov`
  std::uint64_t read_total = 0;  // bytes received on this connection
  std::uint64_t read_limit = UINT64_MAX;  // shutdown: what the kernel held when Stop() came
  PeerKey peer;                           // the client's address: its slot in the per-address table
  std::uint32_t last_progress = 0;        // IdleClock tick of the last byte received or sent
  OutputWatch output_watch;               // --idle-timeout: is a slow reader taking its output?

  std::size_t Unsent() const { return out.size() + held_bytes; }
  bool closing() const { return life == Life::kClosing || life == Life::kCancelled; }

  // Direct path: fills iov and msg for one sendmsg of everything held (more than one buffer).
  void GatherHeld(const BufferRing& buffers);
  // Direct path: keeps n bytes that arrived in buffer `bid` for the next direct send.
  void Hold(std::uint16_t bid, std::uint32_t n) {
    held.push_back({bid, n});
    held_bytes += n;
  }
  // The direct send in flight took `sent` bytes: buffers sent in full go back to `buffers`.
  void DirectSent(std::size_t sent, BufferRing& buffers);
  // Moves what `held` has not sent into `out` (empty until now, so order is kept) and returns the
  // buffers: a client that does not read holds none of the buffers the shard shares.
  void SpillHeld(BufferRing& buffers);
  // The slot is released (no request of it is in flight): back to a fresh connection's state.
  void Reset(BufferRing& buffers);
};

// A shard's connection slots. Slots are reused (a free list), and live in a deque, so references
// stay valid as it grows; a slot's index is part of its requests' user_data.
class ConnSlots {
 public:
  explicit ConnSlots(OutputPool* pool) : pool_(pool) {}

  std::size_t live() const { return live_; }
  // The live connection in slot `index` of generation `gen`, or null.
  Conn* Find(std::uint32_t index, std::uint32_t gen) {
    if (index >= slots_.size()) return nullptr;
    Conn& c = slots_[index];
    return c.fd >= 0 && c.gen == gen ? &c : nullptr;
  }
  Conn& operator[](std::uint32_t index) { return slots_[index]; }
  // A free slot (a new one if none), now serving `fd`.
  Conn& Add(int fd);
  // Frees the slot of `c`, already Reset(), whose descriptor is closed: its generation moves on.
  void Remove(Conn& c, std::uint32_t gen_mask);

  // Every live connection.
  template <typename F>
  void ForEach(F&& f) {
    for (Conn& c : slots_) {
      if (c.fd >= 0) f(c);
    }
  }

 private:
  OutputPool* pool_;
  std::deque<Conn> slots_;
  std::vector<std::uint32_t> free_;
  std::size_t live_ = 0;
};

}  // namespace upcase

#endif  // UPCASE_SERVER_URING_CONN_H_
