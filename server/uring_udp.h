// UDP on io_uring, for one shard of the uring backend (backend_uring.cc): one multishot recvmsg
// into provided buffers, and one sendmsg per reply, sent back to its source from the very buffer
// its request arrived in (uppercased in place). So the number of buffers also bounds the replies
// in flight, and a reply the socket cannot take at once is dropped and counted, never queued: UDP
// promises nothing more, and a queue would grow without bound under a flood.
#ifndef UPCASE_SERVER_URING_UDP_H_
#define UPCASE_SERVER_URING_UDP_H_

#include <liburing.h>
#include <sys/socket.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/net.h"
#include "server/stats.h"
#include "server/udp_guard.h"
#include "server/uring_ring.h"

namespace upcase {

class UringUdp {
 public:
  // The user_data of this socket's requests: the recvmsg, each sendmsg (with the buffer id in the
  // low 32 bits, the index field of UserData), and cancels (whose completions need nothing).
  struct Tags {
    std::uint64_t recv = 0;
    std::uint64_t send = 0;
    std::uint64_t cancel = 0;
  };

  // Buffers: a power of two. Each holds what recvmsg writes: its header, the source address and
  // a payload of up to kMaxDatagram bytes.
  static constexpr std::uint32_t kBuffers = 64;

  // `reflection_guard`: --udp-reflection-guard (server/udp_guard.h).
  UringUdp(Ring* ring, ShardStats* stats, Tags tags, bool reflection_guard)
      : ring_(ring), stats_(stats), tags_(tags), guards_(reflection_guard) {}

  // Takes the shard's UDP socket (invalid: UDP is not served) and registers its buffers as
  // `group`.
  absl::Status Init(Fd socket, std::uint16_t group);
  bool serving() const { return fd_.valid(); }
  // Requests still in the kernel: the recvmsg, or replies in flight.
  bool busy() const { return recv_armed_ || sends_ > 0; }
  std::uint64_t buffer_bytes() const { return buffers_.given_bytes(); }

  void Start() { AddRecv(); }
  void HandleRecv(const io_uring_cqe& cqe);
  void HandleSend(const io_uring_cqe& cqe, std::uint16_t bid);
  // Shutdown: answers the datagrams already queued (the cancel would strand them), then cancels
  // the recvmsg. Replies in flight complete as usual.
  void Stop();
  // Once per loop iteration: returned buffers become the kernel's again.
  void Commit() { buffers_.Commit(); }
  void Close() { fd_.reset(); }

 private:
  struct Reply {
    msghdr msg;
    iovec iov;
  };

  void AddRecv();
  void AddSend(std::uint16_t bid, void* peer, socklen_t peer_len, void* payload, std::size_t len);
  void MaybeRearm();
  void CountDrops(io_uring_recvmsg_out& out);

  Ring* const ring_;
  ShardStats* const stats_;
  const Tags tags_;
  Fd fd_;
  std::uint16_t group_ = 0;
  BufferRing buffers_;
  UdpGuards guards_;
  msghdr recv_msg_{};           // layout template for multishot recvmsg: name, the drop count
  std::vector<Reply> replies_;  // indexed by buffer id
  std::uint32_t sends_ = 0;     // replies in flight, each holding its buffer
  std::uint16_t own_port_ = 0;  // the socket's port: datagrams from it are refused (limits.h)
  bool recv_armed_ = false;     // a multishot recvmsg is in the kernel
  bool stopped_ = false;
};

}  // namespace upcase

#endif  // UPCASE_SERVER_URING_UDP_H_
