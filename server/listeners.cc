#include "server/listeners.h"

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "server/udp_guard.h"

namespace upcase {
namespace {

// With port 0, the port TCP picked may be taken for UDP; try a fresh one this many times.
constexpr int kPortZeroAttempts = 16;

// SO_REUSEPORT lets any process of the same user join a group, so a second server on a busy port
// would silently share its traffic instead of failing. A plain bind first proves the port free.
absl::Status ProbePortFree(const SocketAddress& addr, Transport transport) {
  absl::StatusOr<Fd> probe =
      transport == Transport::kTcp ? ListenTcp(addr, {.backlog = 1}) : BindUdp(addr, {});
  return probe.status();
}

absl::StatusOr<Listeners> OpenOnPort(const ServerConfig& config, SocketAddress addr, int count,
                                     bool non_blocking) {
  const ListenOptions options{.reuse_port = count > 1, .non_blocking = non_blocking};
  Listeners out;
  for (Transport transport : {Transport::kTcp, Transport::kUdp}) {
    const bool wanted = transport == Transport::kTcp ? config.tcp : config.udp;
    if (!wanted) continue;
    if (count > 1 && addr.port() != 0) {
      if (absl::Status s = ProbePortFree(addr, transport); !s.ok()) return s;
    }
    std::vector<Fd>& fds = transport == Transport::kTcp ? out.tcp : out.udp;
    for (int i = 0; i < count; ++i) {
      absl::StatusOr<Fd> fd =
          transport == Transport::kTcp ? ListenTcp(addr, options) : BindUdp(addr, options);
      if (!fd.ok()) return fd.status();
      if (transport == Transport::kUdp) {
        absl::StatusOr<std::size_t> rcvbuf = SetUdpReceiveBuffer(fd->get(), config.udp_rcvbuf);
        if (!rcvbuf.ok()) return rcvbuf.status();
        out.endpoints.udp_rcvbuf = *rcvbuf;
      }
      if (addr.port() == 0) {  // the kernel chose; the rest of the group must use the same port
        absl::StatusOr<SocketAddress> bound = LocalAddress(fd->get());
        if (!bound.ok()) return bound.status();
        addr = *bound;
      }
      fds.push_back(*std::move(fd));
    }
    (transport == Transport::kTcp ? out.endpoints.tcp : out.endpoints.udp) = addr;
  }
  return out;
}

}  // namespace

absl::StatusOr<Listeners> OpenListeners(const ServerConfig& config, int count, bool non_blocking) {
  if (!config.tcp && !config.udp) return absl::InvalidArgumentError("no protocol to serve");
  absl::StatusOr<Listeners> listeners = OpenOnPort(config, config.bind, count, non_blocking);
  for (int attempt = 1; config.bind.port() == 0 && attempt < kPortZeroAttempts &&
                        ErrnoOf(listeners.status()) == EADDRINUSE;
       ++attempt) {
    listeners = OpenOnPort(config, config.bind, count, non_blocking);
  }
  return listeners;
}

}  // namespace upcase
