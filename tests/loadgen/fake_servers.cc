#include "tests/loadgen/fake_servers.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/sys.h"
#include "tests/support/test_util.h"

namespace upcase::testing {
namespace {

// How often blocked loops look at the stop flag.
constexpr int kPollMs = 20;

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, kPollMs) > 0;
}

std::uint16_t BoundPort(int fd) {
  absl::StatusOr<SocketAddress> local = LocalAddress(fd);
  return local.ok() ? local->port() : 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FakeTcpServer>> FakeTcpServer::Start(const FakeTcpOptions& options) {
  std::unique_ptr<FakeTcpServer> s(new FakeTcpServer(options));
  absl::StatusOr<SocketAddress> addr = ParseIpAddress("127.0.0.1", 0);
  if (!addr.ok()) return addr.status();
  absl::StatusOr<Fd> listener = ListenTcp(*addr, ListenOptions{});
  if (!listener.ok()) return listener.status();
  s->listener_ = *std::move(listener);
  s->port_ = BoundPort(s->listener_.get());
  s->acceptor_ = std::thread(&FakeTcpServer::AcceptLoop, s.get());
  return s;
}

FakeTcpServer::~FakeTcpServer() {
  stop_ = true;
  acceptor_.join();
  std::lock_guard<std::mutex> lock(mu_);
  for (std::thread& t : connections_) t.join();
}

void FakeTcpServer::AcceptLoop() {
  std::uint32_t seed = 1;
  while (!stop_) {
    if (!Readable(listener_.get())) continue;
    Fd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    connections_.emplace_back(&FakeTcpServer::Serve, this, std::move(conn), seed++);
  }
}

void FakeTcpServer::Serve(Fd conn, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::string buf(options_.read_chunk, '\0');
  std::uint64_t answered_here = 0;
  bool resets = false;            // this is the connection to reset
  std::int64_t silent_since = 0;  // when it stopped answering
  while (!stop_) {
    if (resets && silent_since != 0 &&
        MonotonicNanos() - silent_since >= absl::ToInt64Nanoseconds(options_.reset_after)) {
      // Linger 0: the close (conn's destructor) sends RST and discards what is unread. Should
      // setsockopt fail, the close is a FIN: the connection still fails with requests in flight.
      const linger reset{1, 0};
      ::setsockopt(conn.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
      return;
    }
    if (!Readable(conn.get())) continue;
    const ssize_t got = ::recv(conn.get(), buf.data(), buf.size(), 0);
    if (got <= 0) return;
    std::string reply = Expected(absl::string_view(buf.data(), static_cast<std::size_t>(got)));
    const std::uint64_t first = reply_bytes_.fetch_add(reply.size());
    const std::uint64_t end = first + reply.size();
    if (options_.corrupt_at_byte >= first && options_.corrupt_at_byte < end) {
      reply[options_.corrupt_at_byte - first] ^= 1;
    }
    if (options_.stall_at_byte >= first && options_.stall_at_byte < end) {
      stall_until_ns_ = MonotonicNanos() + absl::ToInt64Nanoseconds(options_.stall);
    }
    // The stall is the behaviour under test, not synchronisation: this server is "slow".
    while (MonotonicNanos() < stall_until_ns_ && !stop_) absl::SleepFor(absl::Milliseconds(1));
    if (!resets && answered_here + reply.size() > options_.reset_first_at_byte &&
        !reset_taken_.exchange(true)) {
      resets = true;
    }
    const std::uint64_t answer =
        resets ? options_.reset_first_at_byte : options_.answer_bytes_per_connection;
    if (answered_here + reply.size() > answer) {
      reply.resize(answer > answered_here ? answer - answered_here : 0);
      if (silent_since == 0) silent_since = MonotonicNanos();
    }
    answered_here += reply.size();
    std::size_t sent = 0;
    while (sent < reply.size()) {
      std::size_t n = reply.size() - sent;
      if (options_.max_write > 0) n = std::min(n, 1 + rng() % options_.max_write);
      const ssize_t wrote = ::send(conn.get(), reply.data() + sent, n, MSG_NOSIGNAL);
      if (wrote <= 0) return;
      sent += static_cast<std::size_t>(wrote);
    }
  }
}

absl::StatusOr<std::unique_ptr<FakeUdpServer>> FakeUdpServer::Start(const FakeUdpOptions& options) {
  std::unique_ptr<FakeUdpServer> s(new FakeUdpServer(options));
  absl::StatusOr<SocketAddress> addr = ParseIpAddress("127.0.0.1", 0);
  if (!addr.ok()) return addr.status();
  absl::StatusOr<Fd> sock = BindUdp(*addr, ListenOptions{});
  if (!sock.ok()) return sock.status();
  s->socket_ = *std::move(sock);
  // A deep queue, so that the only datagrams lost are the ones this server means to drop.
  const int bytes = 8 << 20;
  if (::setsockopt(s->socket_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0 &&
      ::setsockopt(s->socket_.get(), SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) != 0) {
    return ErrnoError("setsockopt SO_RCVBUF", errno);
  }
  s->port_ = BoundPort(s->socket_.get());
  s->thread_ = std::thread(&FakeUdpServer::Loop, s.get());
  return s;
}

FakeUdpServer::~FakeUdpServer() {
  stop_ = true;
  thread_.join();
}

void FakeUdpServer::Loop() {
  std::uint64_t count = 0;
  std::string held;
  SocketAddress held_from;
  std::string buf(65536, '\0');
  while (!stop_) {
    if (!Readable(socket_.get())) continue;
    SocketAddress from;
    const ssize_t got = ::recvfrom(socket_.get(), buf.data(), buf.size(), 0, from.mutable_get(),
                                   from.mutable_size());
    if (got < 0) continue;
    ++count;
    if (options_.drop_every > 0 && count % options_.drop_every == 0) continue;
    if (options_.answer_first > 0 && count > options_.answer_first) continue;
    const std::string reply =
        Expected(absl::string_view(buf.data(), static_cast<std::size_t>(got)));
    // A failed sendto is a lost datagram, which the load generator is there to notice.
    auto send = [&](const std::string& data, const SocketAddress& to) {
      return ::sendto(socket_.get(), data.data(), data.size(), 0, to.get(), to.size()) >= 0;
    };
    const bool load_datagram = got > 0 && static_cast<std::uint8_t>(buf[0]) >= 0x80;
    if (options_.swap_pairs && load_datagram) {
      if (held.empty()) {
        held = reply;
        held_from = from;
        continue;
      }
      if (send(reply, from)) send(held, held_from);
      held.clear();
      continue;
    }
    if (send(reply, from) && options_.duplicate_every > 0 &&
        count % options_.duplicate_every == 0) {
      send(reply, from);
    }
  }
}

absl::StatusOr<std::uint16_t> UnusedPort() {
  absl::StatusOr<SocketAddress> addr = ParseIpAddress("127.0.0.1", 0);
  if (!addr.ok()) return addr.status();
  absl::StatusOr<Fd> tcp = ListenTcp(*addr, ListenOptions{});
  if (!tcp.ok()) return tcp.status();
  return BoundPort(tcp->get());  // closed on return: nothing listens there any more
}

}  // namespace upcase::testing
