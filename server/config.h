// What upcase-server was asked to do, as parsed from its command line (docs/upcase-server.md).
// Backends receive a copy at construction and never read flags themselves.
#ifndef UPCASE_SERVER_CONFIG_H_
#define UPCASE_SERVER_CONFIG_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "common/net.h"
#include "server/limits.h"
#include "server/udp_guard.h"
#include "server/uring_levers.h"

namespace upcase {

// Defaults, documented in the README's "Limits and failure behaviour" table.
inline constexpr std::size_t kDefaultMaxConns = 10'000;
inline constexpr std::size_t kDefaultConnBuffer = 256 * 1024;
inline constexpr absl::Duration kDefaultGrace = absl::Seconds(5);
inline constexpr absl::Duration kDefaultIdleTimeout = absl::Seconds(60);
// --max-conns-per-ip defaults to this fraction of --max-conns: four addresses can fill the server.
inline constexpr std::size_t kDefaultConnsPerIpDivisor = 4;
// --max-conns-per-ip=auto: a quarter of --max-conns, but at least one (a quarter of 1..3 would
// otherwise be 0, which means no limit); no limit when --max-conns has none.
constexpr std::size_t DefaultConnsPerIp(std::size_t max_conns) {
  if (max_conns == 0) return 0;
  return max_conns / kDefaultConnsPerIpDivisor > 0 ? max_conns / kDefaultConnsPerIpDivisor : 1;
}
// Largest UDP payload over IPv4 (65535 - 8 byte UDP header - 20 byte IP header).
inline constexpr std::size_t kMaxDatagram = 65507;

struct ServerConfig {
  std::string backend;  // empty: the best available
  SocketAddress bind;   // address and port (0: the kernel picks a free port)
  bool tcp = true;
  bool udp = true;
  int shards = 1;  // reactor threads, for backends that shard
  bool pin = false;
  std::size_t max_conns = kDefaultMaxConns;
  std::size_t conn_buffer = kDefaultConnBuffer;
  std::size_t max_conns_per_ip = DefaultConnsPerIp(kDefaultMaxConns);  // 0: no limit
  PeerPrefix per_ip_prefix;  // what --max-conns-per-ip counts as one address
  absl::Duration idle_timeout = kDefaultIdleTimeout;  // zero: connections never time out
  // epoll/uring: unsent output a shard holds for all its connections before it stops reading
  // the ones holding the most (OutputPool); 0: no budget. main.cc sets the default from RAM.
  std::size_t output_budget = 0;
  absl::Duration grace = kDefaultGrace;         // how long shutdown may spend delivering output
  bool sqpoll = false;                          // io_uring only: kernel-side submission polling
  unsigned uring_levers = kDefaultUringLevers;  // io_uring only: optional features asked for
  absl::Duration uring_min_wait = absl::Microseconds(50);  // lever min-wait: how long at most
  bool udp_reflection_guard = true;  // refuse reflections of our own replies (udp_guard.h)
  std::size_t udp_rcvbuf = kDefaultUdpRcvbuf;  // each UDP socket's SO_RCVBUF; 0: the kernel's
};

}  // namespace upcase

#endif  // UPCASE_SERVER_CONFIG_H_
