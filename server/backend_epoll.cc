// epoll: the multi-reactor server. N shards, each one thread with its own epoll instance.
//
// The model: every shard owns a non-blocking TCP listener and a UDP socket, all bound to the same
// port with SO_REUSEPORT, so the kernel spreads new connections and datagrams across the shards by
// a hash of the address 4-tuple; a connection then lives on the shard that accepted it. A shard
// sleeps in epoll_wait() until any of its sockets is ready and serves it without ever blocking,
// so one thread carries thousands of connections, and shards share no lock, counter or buffer.
//
// The trade-off against `threads`: no thread and no context switch per connection, but every
// wait, read and write is still a system call of its own (epoll_wait + recv + send per request
// at best), a slow client's state must be kept by hand (the pending output below), and the
// kernel's hash, not the load, picks the shard, so one shard can end up busier than the others.
//
// Level-triggered, not edge-triggered. A connection that used up its fairness budget with data
// still unread is simply reported again by the next epoll_wait(), so no private "still ready"
// list is needed and no read has to be repeated until EAGAIN just to re-arm an edge. The price is
// an epoll_ctl() whenever a connection's interest changes (a short write, backpressure), which
// happens on the slow path only.
//
// Limits: --max-conns is per server and split across the shards so they need no shared counter:
// each shard admits ceil(max-conns / shards), so the server as a whole may admit up to
// shards - 1 more. --conn-buffer caps each connection's unsent output; at the cap the shard stops
// reading that connection until the client drains it, so a client that never reads costs at most
// that much memory here (the rest waits in the kernel's socket buffers, then in the client).
//
// Abuse (server/limits.h): --max-conns-per-ip is checked against the table all shards share when
// a connection is admitted, and given back when it closes. --idle-timeout runs on a timerfd that
// ticks a coarse clock; a connection stamps the tick whenever it reads or sends something, and
// the tick handler closes those whose stamp is too old, so the request path reads no clock.
// --output-budget caps the unsent output of all of a shard's connections (output_queue.h). UDP
// datagrams from ports below 1024 or from our own port are dropped unanswered.
//
// Shutdown follows the policy every backend shares (server/shutdown.h): answer what each socket
// had received when the stop arrived, send the FIN after the output, and linger, discarding
// input, until the client has acknowledged everything or closed.
//
// Kernel needs: Linux >= 3.9 (SO_REUSEPORT), with recvmmsg (2.6.33) and sendmmsg (3.0).
// Try it: upcase-server --backend=epoll --shards=2 5050, then `nc 127.0.0.1 5050` in a few
// terminals and `nc -u 127.0.0.1 5050`; the per-shard counters at exit show who served whom.
#include <sys/epoll.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/net.h"
#include "server/backend.h"
#include "server/readiness_shard.h"
#include "server/sharded_backend.h"

namespace upcase {
namespace {

// Events taken from one epoll_wait(). More ready sockets are reported by the next call.
constexpr int kMaxEvents = 256;

// What became ready, in epoll_event.data.u64. Encoded and decoded only here:
//
//    63            32 31             0
//   +----------------+----------------+
//   |     Source     |  descriptor    |
//   +----------------+----------------+
//
// Connections are found by descriptor (the shard's table is indexed by it), never by pointer: an
// event for a connection closed earlier in the same batch then finds nothing, and one for a
// descriptor number already reused by a new connection costs at most a read that returns EAGAIN,
// because handlers act on what recv()/send() say, never on EPOLLERR/EPOLLHUP alone.
std::uint64_t EncodeTag(Source source, int fd) {
  return (static_cast<std::uint64_t>(source) << 32) | static_cast<std::uint32_t>(fd);
}
Source SourceOf(std::uint64_t tag) { return static_cast<Source>(tag >> 32); }
int FdOf(std::uint64_t tag) { return static_cast<int>(tag & 0xFFFF'FFFFu); }

// One reactor: a thread's whole world. Everything here is touched by that thread only; how a
// ready socket is served is server/readiness_shard.h, shared with poll and select.
class Shard : public ReadinessShard {
 public:
  using ReadinessShard::ReadinessShard;

  // Creates the epoll instance, then registers the sockets (either may be invalid: not served).
  absl::Status Init(Fd listener, Fd udp) {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_.valid()) return ErrnoError("epoll_create1", errno);
    return ReadinessShard::Init(std::move(listener), std::move(udp));
  }

  // The event loop. Returns when shutdown has finished, or with an error when serving cannot go on.
  absl::Status Run() override {
    std::array<epoll_event, kMaxEvents> events;
    while (serving()) {
      const int n = ::epoll_wait(epoll_.get(), events.data(), kMaxEvents, TimeoutMs());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("epoll_wait", errno);
      }
      for (int i = 0; i < n; ++i) {
        const std::uint64_t tag = events[i].data.u64;
        if (absl::Status s = Dispatch(SourceOf(tag), FdOf(tag), events[i].events); !s.ok()) {
          return s;
        }
      }
      if (absl::Status s = HandleTimers(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Watch(int fd, std::uint32_t events, Source source) override {
    return Control(EPOLL_CTL_ADD, fd, events, source);
  }

  // Called on the slow path only (a short write, backpressure, an accept pause): the price of
  // level-triggered mode.
  absl::Status Rewatch(int fd, std::uint32_t events, Source source) override {
    return Control(EPOLL_CTL_MOD, fd, events, source);
  }

  // close() removes a descriptor from the epoll set by itself: no system call for that.
  absl::Status Unwatch(int fd, bool closing) override {
    if (closing) return absl::OkStatus();
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr) != 0) {
      return ErrnoError(absl::StrCat("epoll_ctl del fd ", fd), errno);
    }
    return absl::OkStatus();
  }

  absl::Status Control(int op, int fd, std::uint32_t events, Source source) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = EncodeTag(source, fd);
    if (::epoll_ctl(epoll_.get(), op, fd, &ev) != 0) {
      return ErrnoError(absl::StrCat("epoll_ctl ", op == EPOLL_CTL_ADD ? "add" : "mod", " fd ", fd),
                        errno);
    }
    return absl::OkStatus();
  }

  Fd epoll_;
};

}  // namespace

BackendInfo EpollBackendInfo() {
  return {"epoll",
          "multi-reactor: one epoll loop per shard, SO_REUSEPORT listeners",
          /*sharded=*/true,
          /*reactor=*/true,
          [] { return absl::OkStatus(); },
          [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<ShardedBackendOf<Shard>>(c);
          }};
}

}  // namespace upcase
