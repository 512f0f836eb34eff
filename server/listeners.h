// Opening the sockets a backend serves on: `count` TCP listeners and `count` UDP sockets, all on
// one port. With count > 1 they form SO_REUSEPORT groups, so the kernel spreads connections and
// datagrams across shards. With port 0 the first TCP bind picks the port and everything else
// binds the same one. Each UDP socket gets --udp-rcvbuf and SO_RXQ_OVFL (server/udp_guard.h).
#ifndef UPCASE_SERVER_LISTENERS_H_
#define UPCASE_SERVER_LISTENERS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "common/net.h"
#include "server/backend.h"
#include "server/config.h"

namespace upcase {

struct Listeners {
  std::vector<Fd> tcp;  // empty when TCP is not served; else `count` listeners
  std::vector<Fd> udp;  // likewise for UDP
  Endpoints endpoints;
};

absl::StatusOr<Listeners> OpenListeners(const ServerConfig& config, int count, bool non_blocking);

}  // namespace upcase

#endif  // UPCASE_SERVER_LISTENERS_H_
