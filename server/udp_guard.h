// What every UDP path (blocking_io.cc, readiness_shard.cc, uring_udp.cc) shares beyond
// RefuseDatagram (limits.h): the reflection guard against loops between two services on ordinary
// ports, the socket's receive buffer, and the count of datagrams the kernel dropped because that
// buffer was full.
//
// Loops. RefuseDatagram stops loops through well-known ports and through the server itself, but
// one datagram forged from one uppercase server's address and port to another's, both on
// ephemeral ports, bounces between the two for ever (tens of thousands of replies a second on
// loopback), and so does one forged between the server and any echo-like service on a high port
// (the "Loop DoS" class, CVE-2024-2169). Uppercasing is idempotent, so a loop shows itself: what
// arrives from a peer is byte for byte the reply this socket sent that very peer (address and
// port) moments ago. ReflectionGuard remembers, per peer, the length and a 64-bit hash of the last
// reply and when it was sent, in a small direct-mapped table (kSlots slots per socket, allocated
// once; a datagram allocates nothing), and a datagram that matches within kReflectionWindow is
// refused and counted in udp_refused. A request's bytes are hashed only when its peer, length and
// first 8 bytes match the last reply's, so the usual cost is one hash of each reply (tens of ns
// at 64 bytes, bench/udp_guard_bench.cc). A loop thus dies at its second round: at most two replies
// in all.
//
// The false positive: a client that sends, from the same socket and within the window, exactly
// the reply it just received -- it echoes the reply back, or repeats (retries) a request that
// holds no a..z, whose reply is itself. --udp-reflection-guard=off turns the guard off.
// The table forgets: a peer whose slot another peer took meanwhile (a busy server with many
// clients) is not recognised at that round; the loop is then caught at a later one.
//
// Kernel drops. A burst larger than the socket's receive buffer is dropped by the kernel before
// the server sees it (four 65,507-byte datagrams overflow Linux's default 208 KiB). The socket's
// buffer is --udp-rcvbuf (SetUdpReceiveBuffer), and SO_RXQ_OVFL makes the kernel attach to each
// datagram the socket's running count of drops; KernelDrops turns that into udp_kernel_drops, so
// that datagrams_in + udp_kernel_drops is what arrived. (The blocking path keeps the lab's
// recvfrom, which carries no control data: it takes the count from the socket when it stops.)
#ifndef UPCASE_SERVER_UDP_GUARD_H_
#define UPCASE_SERVER_UDP_GUARD_H_

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/stats.h"

namespace upcase {

// How long a reply is remembered: far longer than any round trip a loop could take (on loopback
// one takes microseconds), short enough that the false positive above stays rare.
inline constexpr absl::Duration kReflectionWindow = absl::Seconds(1);

// --udp-rcvbuf's default: room for a burst of dozens of datagrams of the largest size (the kernel
// charges a datagram for the memory it takes, up to twice its size), or thousands of small ones.
inline constexpr std::size_t kDefaultUdpRcvbuf = std::size_t{4} << 20;

class ReflectionGuard {
 public:
  // Slots of the table: a power of two (a slot is picked by the peer's hash).
  static constexpr std::size_t kSlots = 1024;

  // `enabled` false (--udp-reflection-guard=off): refuses nothing, keeps nothing.
  explicit ReflectionGuard(bool enabled);

  // The request `data` (`n` bytes) from `peer`: false when it is the reply this socket sent
  // `peer` less than kReflectionWindow ago (refuse it; `data` is untouched). Otherwise
  // uppercases it in place, which makes it the reply, remembers that reply as the last one to
  // `peer`, and returns true. One call does both, so that a datagram costs one lookup.
  bool UppercaseUnlessReflection(const sockaddr* peer, char* data, std::size_t n);

 private:
  // A peer's address and port, as compared: IPv4 as its 4 bytes, IPv6 as its 16.
  struct Peer {
    std::uint64_t high = 0;
    std::uint64_t low = 0;
    std::uint32_t port_and_family = 0;
    bool operator==(const Peer& other) const = default;
  };
  struct Slot {
    Peer peer;
    std::uint32_t length = 0;  // of the last reply to `peer`
    std::uint64_t head = 0;    // its first 8 bytes (zero-padded): most requests differ there
    std::uint64_t hash = 0;    // all of its bytes
    std::int64_t sent_ns = 0;  // when (CLOCK_MONOTONIC_COARSE); 0: never
  };
  static Peer PeerOf(const sockaddr* address);
  std::size_t SlotOf(const Peer& peer) const;

  std::unique_ptr<Slot[]> slots_;  // kSlots; null when the guard is off
  std::uint64_t seed_ = 0;         // random per socket: which peers share a slot is not guessable
};

// The control buffer a receive needs for the SO_RXQ_OVFL count (one uint32 message).
inline constexpr std::size_t kDropsControlBytes = CMSG_SPACE(sizeof(std::uint32_t));

// udp_kernel_drops of one socket. SO_RXQ_OVFL reports the socket's cumulative count of drops
// as it was when each datagram was queued (and nothing while it is 0), so the count rises by the
// difference to the last one seen. Drops after the last datagram received show in no datagram:
// Settle() reads the socket's own count (SO_MEMINFO) when serving ends.
class KernelDrops {
 public:
  // Counts into stats.udp_kernel_drops what the control data of one received datagram reports.
  void Count(const msghdr& received, ShardStats& stats);
  // At the end of serving: counts the drops no datagram has reported yet.
  void Settle(int fd, ShardStats& stats);

 private:
  void Saw(std::uint32_t total, ShardStats& stats);

  std::uint32_t seen_ = 0;  // the socket's count as last seen (the kernel's is 32 bits and wraps)
};

// Both guards of one UDP socket, for the path that serves it.
struct UdpGuards {
  explicit UdpGuards(bool reflection_guard) : reflections(reflection_guard) {}
  ReflectionGuard reflections;
  KernelDrops drops;
};

// Sets a UDP socket's receive buffer to `bytes` (0: leave the kernel's default) and enables
// SO_RXQ_OVFL. Root gets `bytes` (SO_RCVBUFFORCE); others get at most net.core.rmem_max.
// Returns the size obtained, in setsockopt's terms (getsockopt reports twice it: the kernel adds
// as much for its bookkeeping).
absl::StatusOr<std::size_t> SetUdpReceiveBuffer(int fd, std::size_t bytes);

}  // namespace upcase

#endif  // UPCASE_SERVER_UDP_GUARD_H_
