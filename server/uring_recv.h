// Backpressure on the uring backend's reading path (backend_uring.cc): how much a connection may
// receive while its output waits, and which recv the shard arms for it.
//
// A connection's unsent output stays within its allowance: --conn-buffer or, over the shard's
// --output-budget, its fair share of it (OutputPool). Epoll simply stops reading at the cap; a
// multishot recv instead keeps filling provided buffers for as long as data arrives, so the shard
// arms no more than the room left (Choose):
//
//   - a multishot recv while what it may still fill (headroom()) fits. With Linux >= 6.17 it is
//     armed with a byte limit of the room left less one buffer (MultishotLimit), and the kernel
//     ends it there by itself;
//   - single-shot recvs of at most the room left (SingleSize) near the allowance;
//   - nothing at the allowance: the send completion that frees room arms the next recv.
//
// Kernels before 6.17 (and any kernel over the output budget) have no byte limit to rely on: a
// completion that finds the room short of what the recv may still deliver cancels it
// (MustCancel), and the shard continues with single-shot recvs. The cancel lands after up to a
// burst of kMultishotBurst buffers from one wake-up of the socket (MULTISHOT_MAX_RETRY, Linux >=
// 6.8; older kernels loop until the socket is empty, a looser bound), so the buffers must be
// smaller there (buffer_size) and the queue may overshoot its cap by up to that burst (its
// overflow, see OutputQueue). UPCASE_URING_RECV_LIMIT=off takes this path on any kernel. Over the
// budget, a connection's allowance shrinks below the byte limit its recv was armed with, so every
// kernel cancels then.
#ifndef UPCASE_SERVER_URING_RECV_H_
#define UPCASE_SERVER_URING_RECV_H_

#include <cstddef>
#include <cstdint>

#include "server/config.h"
#include "server/output_queue.h"

namespace upcase {

enum class RecvArm : std::uint8_t { kNone, kSingle, kMultishot };

class RecvPolicy {
 public:
  // How many buffers a multishot recv may still fill once the output queue decides it has had
  // enough. With the byte limit the completion that reaches it carries at most one buffer beyond
  // the limit, which is the room less one buffer: two. Without it, a burst.
  static constexpr std::size_t kLimitedRecvBuffers = 2;
  static constexpr std::size_t kMultishotBurst = 32;
  // The buffers' size: as large as --conn-buffer allows. A multishot recv stays armed while the
  // buffers it may still fill fit into the queue's free room, and that must hold at least while
  // the queue is half full, or every reply would end the recv that brought its request. So those
  // buffers must fit into half the cap: with the limit, 16 KiB from a 64 KiB cap on; without it,
  // 4 KiB at the default 256 KiB and 16 KiB from 1 MiB. A 16 KiB request is then one completion
  // instead of four.
  static constexpr std::uint32_t kMinBufferSize = 4 * 1024;
  static constexpr std::uint32_t kMaxBufferSize = 16 * 1024;

  // `byte_limit`: the kernel takes a multishot recv's byte limit (UseRecvLimit, uring_ring.h).
  RecvPolicy(const ServerConfig& config, const OutputPool& pool, bool byte_limit);

  bool byte_limit() const { return byte_limit_; }
  // The size of every provided receive buffer of the shard.
  std::uint32_t buffer_size() const { return buffer_size_; }
  // The free room that keeps a multishot recv armed: the buffers it may still fill.
  std::size_t headroom() const { return headroom_; }

  // How much unsent output a connection may hold, given its `unsent` bytes and the shard's `live`
  // connections: the pool's allowance and, with a budget, no more than an even split of it over
  // the live connections, so every recv armed at once brings in at most the budget, whatever its
  // state when each was armed. (With --output-budget=0, or a budget above conns x --conn-buffer,
  // as in most runs, the split changes nothing.)
  std::size_t Allowance(std::size_t unsent, std::size_t live) const;
  // The recv to arm for a connection that has none.
  RecvArm Choose(std::size_t unsent, std::size_t live) const;
  // The byte limit of a multishot recv armed now (only with byte_limit(): Choose left at least
  // two buffers of room).
  std::uint32_t MultishotLimit(std::size_t unsent, std::size_t live) const;
  // The length of a single-shot recv armed now: never more than the queue can still take, so it
  // stays within its allowance exactly.
  std::size_t SingleSize(std::size_t unsent, std::size_t live) const;
  // After a completion of a multishot recv that stays armed: whether it must be cancelled.
  bool MustCancel(std::size_t unsent, std::size_t live) const;

 private:
  const std::size_t budget_;
  const OutputPool& pool_;
  const bool byte_limit_;
  const std::uint32_t buffer_size_;
  const std::size_t headroom_;
};

}  // namespace upcase

#endif  // UPCASE_SERVER_URING_RECV_H_
