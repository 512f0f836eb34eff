#include "server/blocking_io.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

#include "common/net.h"
#include "common/sys.h"
#include "common/uppercase.h"
#include "server/accept_errors.h"
#include "server/config.h"
#include "server/shutdown.h"

namespace upcase {
namespace {

// One recv() takes at most this much; the kernel's socket buffer holds the rest.
constexpr std::size_t kTcpChunk = 64 * 1024;
using TcpBuffer = std::array<char, kTcpChunk>;
// Pause after EMFILE/ENFILE so an acceptor out of descriptors does not spin.
constexpr absl::Duration kAcceptErrorPause = absl::Milliseconds(20);
// Reads of discarded input per check, so a client that never stops sending cannot hold us.
constexpr int kDiscardReadsPerPoll = 16;

// One byte more than the largest legal payload, so MSG_TRUNC can tell an oversized datagram.
using UdpBuffer = std::array<char, kMaxDatagram + 1>;
// At shutdown, the most datagrams still answered.
constexpr int kUdpAnswersAtStop = 128;

// Reads one datagram with `flags` and answers it. False when there was none: EAGAIN with
// MSG_DONTWAIT, or a blocked read woken by Stop's shutdown(SHUT_RD), which returns 0 bytes from
// no address (a real empty datagram has its sender's). The lab's recvfrom: the kernel's drops
// (udp_kernel_drops) are read when serving ends (UdpGuards' KernelDrops::Settle), not from each
// datagram, which would take recvmsg and its control data.
bool ServeDatagram(int fd, std::uint16_t own_port, int flags, UdpBuffer& buf,
                   ReflectionGuard& reflections, ShardStats& stats) {
  SocketAddress peer;
  const ssize_t n = ::recvfrom(fd, buf.data(), buf.size(), flags | MSG_TRUNC, peer.mutable_get(),
                               peer.mutable_size());
  // EINTR, or an ICMP error queued for an earlier reply: nothing read, but keep serving.
  if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK;
  if (n == 0 && peer.size() == 0) return false;
  ++stats.datagrams_in;
  if (static_cast<std::size_t>(n) > kMaxDatagram) {
    ++stats.udp_drops;  // larger than any reply we may send back
    return true;
  }
  // Uppercased in place: the reply.
  if (RefuseDatagram(peer.get(), own_port) ||
      !reflections.UppercaseUnlessReflection(peer.get(), buf.data(), static_cast<std::size_t>(n))) {
    ++stats.udp_refused;  // a well-known port, ourselves, or our own reply: a reply could loop
    return true;
  }
  if (::sendto(fd, buf.data(), static_cast<std::size_t>(n), 0, peer.get(), peer.size()) < 0) {
    ++stats.udp_drops;
  } else {
    ++stats.datagrams_out;
  }
  return true;
}

// The port a UDP socket is bound to (0 when it cannot say, which refuses nothing more).
std::uint16_t OwnPort(int fd) {
  absl::StatusOr<SocketAddress> local = LocalAddress(fd);
  return local.ok() ? local->port() : 0;
}

// Uppercases and sends back `n` bytes just read; false when the client is gone, or took nothing
// for --idle-timeout (SO_SNDTIMEO: send() fails with EAGAIN).
bool Answer(int fd, char* data, std::size_t n, ShardStats& stats) {
  stats.bytes_in += n;
  UppercaseInPlace(data, n);
  if (absl::Status s = SendAll(fd, data, n); !s.ok()) {
    const int err = ErrnoOf(s);
    if (err == EAGAIN || err == EWOULDBLOCK) {
      ++stats.idle_closed;
    } else {
      ++stats.conn_resets;  // EPIPE / ECONNRESET: the client is gone
    }
    return false;
  }
  stats.bytes_out += n;
  return true;
}

// --idle-timeout on a blocking socket: recv() and send() give up (EAGAIN) after waiting that
// long without progress. Zero leaves them blocking.
void SetIdleTimeout(int fd, absl::Duration timeout) {
  if (timeout <= absl::ZeroDuration()) return;
  const timeval tv = absl::ToTimeval(timeout);
  // Fails only for a descriptor that is not a socket: then recv() fails at once anyway.
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    std::fprintf(stderr, "upcase-server: setsockopt SO_RCVTIMEO/SO_SNDTIMEO: %s\n",
                 std::strerror(errno));
  }
}

// Reads and throws away whatever input is queued, then waits until the kernel holds no output
// the client has not acknowledged. False when the deadline passed or the connection failed.
bool WaitUntilAcknowledged(int fd, std::int64_t deadline_ns, TcpBuffer& buf) {
  while (true) {
    for (int i = 0; i < kDiscardReadsPerPoll; ++i) {
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n > 0) continue;
      if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
      return false;  // reset by the client (or by the kernel, see the header)
    }
    if (OutputAcknowledged(fd)) return true;
    if (MonotonicNanos() >= deadline_ns) return false;
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(kLingerPoll));
  }
}

// The end of a connection once Stop() came (see the header): answer what had arrived, wait for
// the client to acknowledge it, then FIN, and wait for that acknowledgement too.
void FinishAtStop(int fd, const StopFlag& stop, TcpBuffer& buf, ShardStats& stats) {
  std::uint64_t left = ReceivedNotRead(fd);
  while (left > 0) {
    // Never blocks: at least `left` bytes are queued, and only this thread reads them.
    const ssize_t n = ::recv(fd, buf.data(), std::min<std::uint64_t>(buf.size(), left), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // reset meanwhile
    left -= static_cast<std::size_t>(n);
    if (!Answer(fd, buf.data(), static_cast<std::size_t>(n), stats)) return;
  }
  if (!WaitUntilAcknowledged(fd, stop.deadline_ns(), buf)) return;
  if (::shutdown(fd, SHUT_WR) != 0) return;  // ENOTCONN: the client is gone already
  WaitUntilAcknowledged(fd, stop.deadline_ns(), buf);
}

}  // namespace

bool StopFlag::Raise(absl::Duration grace) {
  if (raised()) return false;
  deadline_ns_ = MonotonicNanos() + absl::ToInt64Nanoseconds(grace);
  raised_.store(true, std::memory_order_release);
  return true;
}

void ServeBlockingConnection(int fd, const StopFlag& stop, absl::Duration idle_timeout,
                             ShardStats& stats) {
  SetIdleTimeout(fd, idle_timeout);
  TcpBuffer buf;
  OutputWatch output_watch;  // a client taking its output slowly is not idle
  while (!stop.raised()) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n == 0) {
      if (stop.raised()) break;  // Stop()'s shutdown(SHUT_RD) woke us, not the client
      return;                    // the client closed (or half-closed): everything read was answered
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (stop.raised()) break;
        // SO_RCVTIMEO: nothing arrived for --idle-timeout. Still taking output the kernel holds?
        // Then wait once more (a client that stopped reading is closed after twice the timeout).
        if (output_watch.Look(fd, /*patience=*/1) != OutputWatch::Verdict::kIdle) continue;
        ++stats.idle_closed;
        return;
      }
      ++stats.conn_resets;  // ECONNRESET, or ETIMEDOUT after a vanished peer
      return;
    }
    output_watch.Forget();
    if (!Answer(fd, buf.data(), static_cast<std::size_t>(n), stats)) return;
  }
  FinishAtStop(fd, stop, buf, stats);
}

void ServeBlockingUdp(int fd, const StopFlag& stop, bool reflection_guard, ShardStats& stats) {
  UdpGuards guards(reflection_guard);
  {
    const std::uint16_t own_port = OwnPort(fd);
    UdpBuffer buf;
    while (!stop.raised())
      ServeDatagram(fd, own_port, 0, buf, guards.reflections, stats);  // Stop's shutdown() wakes it
  }
  // What the socket had received when Stop() came is answered, as the reactors do.
  AnswerQueuedDatagrams(fd, guards, stats);
}

void AnswerQueuedDatagrams(int fd, UdpGuards& guards, ShardStats& stats) {
  auto buf = std::make_unique<UdpBuffer>();
  const std::uint16_t own_port = OwnPort(fd);
  for (int i = 0; i < kUdpAnswersAtStop &&
                  ServeDatagram(fd, own_port, MSG_DONTWAIT, *buf, guards.reflections, stats);
       ++i) {
  }
  guards.drops.Settle(fd, stats);
}

void ShutdownForStop(int fd, int how, const char* what) {
  if (::shutdown(fd, how) == 0 || errno == ENOTCONN) return;
  std::fprintf(stderr, "upcase-server: stop: shutdown %s (fd %d): %s\n", what, fd,
               std::strerror(errno));
}

absl::StatusOr<Endpoints> BlockingBackend::Open() {
  absl::StatusOr<Listeners> listeners = OpenListeners(config_, 1, /*non_blocking=*/false);
  if (!listeners.ok()) return listeners.status();
  listeners_ = *std::move(listeners);
  return listeners_.endpoints;
}

absl::Status BlockingBackend::Run() {
  std::thread udp_thread;
  if (!listeners_.udp.empty()) {
    udp_thread = std::thread([this] {
      ServeBlockingUdp(listeners_.udp[0].get(), stop_, config_.udp_reflection_guard, udp_stats_);
    });
  }
  absl::Status status = listeners_.tcp.empty() ? absl::OkStatus() : AcceptLoop();
  if (!status.ok()) Stop();  // the listener failed: wind the connections down as for a signal
  WaitForConnections();
  if (udp_thread.joinable()) udp_thread.join();
  grace_.Cancel();
  return status;
}

std::vector<ShardStats> BlockingBackend::Stats() const {
  ShardStats total = tcp_stats_;
  total += conn_stats_;
  total += udp_stats_;
  return {total};
}

absl::Status BlockingBackend::AcceptLoop() {
  while (true) {
    sockaddr_storage address;
    socklen_t len = sizeof address;
    Fd conn(::accept4(listeners_.tcp[0].get(), reinterpret_cast<sockaddr*>(&address), &len,
                      SOCK_CLOEXEC));
    if (!conn.valid()) {
      if (stop_.raised()) return absl::OkStatus();
      switch (ClassifyAcceptError(errno)) {
        case AcceptAction::kRetry:
          continue;
        case AcceptAction::kBackOff:  // out of descriptors or memory: do not spin meanwhile
          ++tcp_stats_.accept_errors;
          std::this_thread::sleep_for(absl::ToChronoMilliseconds(kAcceptErrorPause));
          continue;
        case AcceptAction::kFatal:
          return ErrnoError("accept", errno);
      }
    }
    const PeerKey peer = per_address_.KeyOf(reinterpret_cast<const sockaddr*>(&address));
    if (!per_address_.Admit(peer)) {
      ++tcp_stats_.per_ip_refused;  // over --max-conns-per-ip: closed at once
      continue;
    }
    if (!Serve(std::move(conn), peer)) {
      per_address_.Release(peer);
      return absl::OkStatus();
    }
  }
}

void BlockingBackend::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!stop_.Raise(config_.grace)) return;
  // Connections still in the listen backlog were never accepted; the kernel resets them.
  for (const Fd& fd : listeners_.tcp) ShutdownForStop(fd.get(), SHUT_RD, "tcp listener");
  for (const Fd& fd : listeners_.udp) ShutdownForStop(fd.get(), SHUT_RD, "udp socket");
  ShutdownConnections(SHUT_RD);
  grace_.Arm(config_.grace, [this] {
    std::lock_guard<std::mutex> expired_lock(mu_);
    ShutdownConnections(SHUT_RDWR);  // clients that never read
  });
}

void GraceTimer::Arm(absl::Duration grace, std::function<void()> on_expire) {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || cancelled_) return;
  thread_ = std::thread([this, grace, on_expire = std::move(on_expire)] {
    std::unique_lock<std::mutex> timer_lock(mu_);
    if (!cv_.wait_for(timer_lock, absl::ToChronoNanoseconds(grace),
                      [this] { return cancelled_; })) {
      timer_lock.unlock();
      on_expire();
    }
  });
}

void GraceTimer::Cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace upcase
