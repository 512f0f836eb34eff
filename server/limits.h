// What keeps one client, or a loop between two services, from taking the whole server: the
// pieces of the README's "Security defaults" that every backend shares.
//
//   - UDP: datagrams from a source port below 1024 (echo, chargen, daytime... and port 0) or
//     from the server's own port are dropped, never answered. Uppercasing is idempotent, so a
//     reply to another uppercase server (one forged datagram from A's address to B's) or to an
//     echo service would bounce between the two forever; a reply to itself likewise. Loops
//     between ordinary ports are stopped by the reflection guard (server/udp_guard.h).
//   - TCP: --max-conns-per-ip, counted server-wide in one table all shards share, touched only
//     when a connection is taken into service and when it closes.
//   - TCP: --idle-timeout, on a coarse clock of ticks that a shard advances from a timer, so the
//     request path only stores the current tick (IdleClock).
//   - The default --output-budget, from the machine's memory.
#ifndef UPCASE_SERVER_LIMITS_H_
#define UPCASE_SERVER_LIMITS_H_

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace upcase {

// Source ports below this are well-known services (echo 7, chargen 19, ...) and never clients.
inline constexpr std::uint16_t kFirstClientPort = 1024;

// Whether a datagram from `source` must not be answered by a server on `own_port` (see above).
// An address that is neither IPv4 nor IPv6 is refused too.
bool RefuseDatagram(const sockaddr* source, std::uint16_t own_port);

// How much of a client's address names "one host" for --max-conns-per-ip (--per-ip-prefix): a
// host with an IPv6 /64 has 2^64 addresses, so IPv6 peers are keyed by their prefix.
struct PeerPrefix {
  int ipv4_bits = 32;  // 0..32
  int ipv6_bits = 64;  // 0..128
};

// A client's address as a table key: the IPv6 address cut to prefix.ipv6_bits; IPv4 (and
// IPv4-mapped IPv6, ::ffff:a.b.c.d, which is how a dual-stack socket sees IPv4 clients) as
// ::ffff:a.b.c.d cut to prefix.ipv4_bits. The port is left out (every connection of one host
// counts).
using PeerKey = std::pair<std::uint64_t, std::uint64_t>;
PeerKey PeerKeyOf(const sockaddr* address, PeerPrefix prefix = {});

// Connections in service per client address, server-wide and exact: SO_REUSEPORT spreads one
// address's connections over every shard, so a per-shard count would allow shards x the limit.
// A mutex-protected hash map, locked once when a connection is admitted and once when it closes;
// the request path never touches it. Thread-safe.
class ConnsPerAddress {
 public:
  // `max` connections per address (per `prefix`); 0: no limit, and nothing is kept.
  explicit ConnsPerAddress(std::size_t max, PeerPrefix prefix = {}) : max_(max), prefix_(prefix) {}
  ConnsPerAddress(const ConnsPerAddress&) = delete;
  ConnsPerAddress& operator=(const ConnsPerAddress&) = delete;

  bool enabled() const { return max_ > 0; }
  // The key `address` is counted under.
  PeerKey KeyOf(const sockaddr* address) const { return PeerKeyOf(address, prefix_); }
  // Takes one slot of `peer`; false (and nothing taken) when it holds `max` already.
  bool Admit(const PeerKey& peer);
  // Gives back a slot that Admit() took.
  void Release(const PeerKey& peer);
  // Addresses holding at least one connection (for tests).
  std::size_t addresses() const;

 private:
  const std::size_t max_;
  const PeerPrefix prefix_;
  mutable std::mutex mu_;
  absl::flat_hash_map<PeerKey, std::uint32_t> counts_;  // guarded by mu_; no zero entries
};

// --idle-timeout on a clock of ticks: a shard advances now() from a timer every tick() (no clock
// read on the request path), a connection stores now() whenever it makes progress, and is idle
// once more than limit() ticks passed since. So it is closed between the timeout and one tick
// after it. A tick is an eighth of the timeout, from 10 ms to 1 s: at the default 60 s a shard
// wakes up once a second and looks at each connection once.
class IdleClock {
 public:
  // `timeout` zero: off (enabled() false).
  explicit IdleClock(absl::Duration timeout);

  bool enabled() const { return limit_ > 0; }
  absl::Duration tick() const { return tick_; }
  std::uint32_t now() const { return now_; }
  std::uint32_t limit() const { return limit_; }  // the timeout in ticks
  void Advance() { ++now_; }
  // Wrap-around safe: ticks are compared by their unsigned difference.
  bool Idle(std::uint32_t last_progress) const { return now_ - last_progress > limit_; }

 private:
  absl::Duration tick_;
  std::uint32_t limit_ = 0;  // ticks; 0: off
  std::uint32_t now_ = 0;
};

// A client that reads slowly but steadily is not idle, even when the server sends nothing: all of
// its output may already sit in the kernel's send buffer, acknowledged a little at a time. So a
// connection that looks idle while output is waiting is watched for a few more looks: if its
// unacknowledged output (SIOCOUTQ) falls meanwhile, the client is reading. A small receive window
// opens only when half of it is free, so one look is not enough (`patience` looks, e.g. half the
// timeout's ticks). Called only for connections that look idle, never on the request path.
class OutputWatch {
 public:
  enum class Verdict {
    kIdle,      // nothing of its output is waiting, or none was acknowledged in `patience` looks
    kLookNext,  // output is waiting: look again at the next tick
    kReading,   // the client took some of its output since the first look: that is progress
  };
  // `fd`'s verdict; keeps what it saw for the next call.
  Verdict Look(int fd, std::uint32_t patience);
  // Forgets the looks so far (call when the connection does not look idle).
  void Forget() { seen_ = kNotLooked; }

 private:
  static constexpr std::uint32_t kNotLooked = UINT32_MAX;
  std::uint32_t seen_ = kNotLooked;  // SIOCOUTQ at the first look
  std::uint32_t looks_ = 0;          // looks since the first one
};

// The default --output-budget of each shard: an eighth of the physical memory divided by the
// shards, at least 32 MiB and at most 1 GiB.
std::size_t DefaultOutputBudget(int shards);

// The kernel's send buffers are memory the output budget does not see: by default each TCP
// socket's grows (autotuning) up to tcp_wmem's maximum, 4 MiB, so a shard's clients that stop
// reading could hold that much each in the kernel besides their share of the budget. When the
// budget is small beside that, the reactors' listeners get SO_SNDBUF = budget / 64 (at least
// 64 KiB), which every accepted socket inherits: the kernel doubles it for its bookkeeping and
// clamps it at net.core.wmem_max, so 32 stalled clients hold at most one budget more in the
// kernel. 0: leave the kernel's autotuning (no budget, or the cap would not be below its maximum,
// `tcp_wmem_max`; 0 there means "unknown": 4 MiB, the kernel's default, is assumed).
inline constexpr std::size_t kSendBuffersPerBudget = 64;
inline constexpr std::size_t kMinSendBufferCap = 64 << 10;
int SendBufferCap(std::size_t output_budget, std::size_t tcp_wmem_max);
// tcp_wmem's maximum from /proc/sys/net/ipv4/tcp_wmem, or 0 when it cannot be read.
std::size_t TcpWmemMax();

}  // namespace upcase

#endif  // UPCASE_SERVER_LIMITS_H_
