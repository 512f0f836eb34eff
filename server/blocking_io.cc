#include "server/blocking_io.h"

#include <sys/socket.h>

#include <array>
#include <cerrno>

#include "common/net.h"
#include "common/uppercase.h"
#include "server/config.h"

namespace upcase {
namespace {

// One recv() takes at most this much; the kernel's socket buffer holds the rest.
constexpr std::size_t kTcpChunk = 64 * 1024;
// Pause after EMFILE/ENFILE so an acceptor out of descriptors does not spin.
constexpr absl::Duration kAcceptErrorPause = absl::Milliseconds(20);

}  // namespace

void ServeBlockingConnection(int fd, ShardStats& stats) {
  std::array<char, kTcpChunk> buf;
  while (true) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n == 0) return;  // the client closed (or half-closed): everything read was answered
    if (n < 0) {
      if (errno == EINTR) continue;
      ++stats.conn_resets;  // ECONNRESET, or ETIMEDOUT after a vanished peer
      return;
    }
    stats.bytes_in += static_cast<std::uint64_t>(n);
    UppercaseInPlace(buf.data(), static_cast<std::size_t>(n));
    if (!SendAll(fd, buf.data(), static_cast<std::size_t>(n)).ok()) {
      ++stats.conn_resets;  // EPIPE / ECONNRESET: the client is gone
      return;
    }
    stats.bytes_out += static_cast<std::uint64_t>(n);
  }
}

void ServeBlockingUdp(int fd, const std::atomic<bool>& stopping, ShardStats& stats) {
  // One byte more than the largest legal payload, so MSG_TRUNC can tell an oversized datagram.
  std::array<char, kMaxDatagram + 1> buf;
  while (!stopping.load(std::memory_order_relaxed)) {
    SocketAddress peer;
    const ssize_t n =
        ::recvfrom(fd, buf.data(), buf.size(), MSG_TRUNC, peer.mutable_get(), peer.mutable_size());
    if (stopping.load(std::memory_order_relaxed)) return;  // shutdown() woke us
    if (n < 0) continue;  // EINTR, or an ICMP error queued for an earlier reply: keep serving
    ++stats.datagrams_in;
    if (static_cast<std::size_t>(n) > kMaxDatagram) {
      ++stats.udp_drops;  // larger than any reply we may send back
      continue;
    }
    UppercaseInPlace(buf.data(), static_cast<std::size_t>(n));
    if (::sendto(fd, buf.data(), static_cast<std::size_t>(n), 0, peer.get(), peer.size()) < 0) {
      ++stats.udp_drops;
    } else {
      ++stats.datagrams_out;
    }
  }
}

bool HandleAcceptError(int err, ShardStats& stats) {
  switch (err) {
    case EINTR:
    case ECONNABORTED:  // the client gave up while queued
      return true;
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
      ++stats.accept_errors;
      std::this_thread::sleep_for(absl::ToChronoMilliseconds(kAcceptErrorPause));
      return true;
    default:
      return false;
  }
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
