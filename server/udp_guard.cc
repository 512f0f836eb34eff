#include "server/udp_guard.h"

#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <time.h>

#include <cerrno>
#include <cstring>

#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "common/net.h"

namespace upcase {
namespace {

// Every bit of the address: the guard tells peers apart exactly, ports included.
constexpr PeerPrefix kWholeAddress{32, 128};

// The window is coarse, so is the clock: CLOCK_MONOTONIC_COARSE is a plain read of the tick the
// kernel keeps (a few ms), cheaper than the precise clock on the request path.
std::int64_t CoarseNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// absl::Hash is seeded per process, so a peer cannot choose bytes that collide with a reply.
std::uint64_t HashOf(const void* data, std::size_t n) {
  return absl::HashOf(absl::string_view(static_cast<const char*>(data), n));
}

}  // namespace

ReflectionGuard::ReflectionGuard(bool enabled) {
  if (enabled) slots_ = std::make_unique<Slot[]>(kSlots);
}

ReflectionGuard::Peer ReflectionGuard::PeerOf(const sockaddr* peer) {
  std::uint16_t port = 0;
  if (peer->sa_family == AF_INET) {
    port = reinterpret_cast<const sockaddr_in*>(peer)->sin_port;
  } else if (peer->sa_family == AF_INET6) {
    port = reinterpret_cast<const sockaddr_in6*>(peer)->sin6_port;
  }
  return {PeerKeyOf(peer, kWholeAddress), port};
}

std::size_t ReflectionGuard::SlotOf(const Peer& peer) {
  return absl::HashOf(peer.address, peer.port) & (kSlots - 1);
}

bool ReflectionGuard::IsReflection(const sockaddr* peer, const void* data, std::size_t n) {
  if (slots_ == nullptr) return false;
  const Peer who = PeerOf(peer);
  const Slot& slot = slots_[SlotOf(who)];
  // Cheap tests first: most datagrams differ from the last reply in peer or length.
  if (slot.sent_ns == 0 || slot.length != n || !(slot.peer == who)) return false;
  if (CoarseNanos() - slot.sent_ns >= absl::ToInt64Nanoseconds(kReflectionWindow)) return false;
  return slot.hash == HashOf(data, n);
}

void ReflectionGuard::Replied(const sockaddr* peer, const void* data, std::size_t n) {
  if (slots_ == nullptr) return;
  const Peer who = PeerOf(peer);
  Slot& slot = slots_[SlotOf(who)];
  slot.peer = who;
  slot.length = static_cast<std::uint32_t>(n);
  slot.hash = HashOf(data, n);
  slot.sent_ns = CoarseNanos();
}

void KernelDrops::Count(const msghdr& received, ShardStats& stats) {
  if (received.msg_controllen == 0) return;
  // CMSG_NXTHDR takes a mutable header; it only reads it.
  msghdr& m = const_cast<msghdr&>(received);
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SO_RXQ_OVFL) continue;
    std::uint32_t total;
    std::memcpy(&total, CMSG_DATA(c), sizeof total);
    Saw(total, stats);
  }
}

void KernelDrops::Settle(int fd, ShardStats& stats) {
  std::uint32_t meminfo[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof meminfo;
  // Fails only for a descriptor that is not a socket; then there is nothing to add.
  if (::getsockopt(fd, SOL_SOCKET, SO_MEMINFO, meminfo, &len) != 0 ||
      len <= SK_MEMINFO_DROPS * sizeof(std::uint32_t)) {
    return;
  }
  Saw(meminfo[SK_MEMINFO_DROPS], stats);
}

void KernelDrops::Saw(std::uint32_t total, ShardStats& stats) {
  // The difference in 32-bit arithmetic survives the kernel's wrap; a datagram queued before
  // Settle() but read after it reports an older count, which adds nothing.
  const auto delta = static_cast<std::int32_t>(total - seen_);
  if (delta <= 0) return;
  stats.udp_kernel_drops += static_cast<std::uint32_t>(delta);
  seen_ = total;
}

absl::StatusOr<std::size_t> SetUdpReceiveBuffer(int fd, std::size_t bytes) {
  const int one = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one) != 0) {
    return ErrnoError("setsockopt SO_RXQ_OVFL", errno);
  }
  if (bytes > 0) {
    const int want = static_cast<int>(bytes);
    // SO_RCVBUFFORCE passes net.core.rmem_max but needs CAP_NET_ADMIN; without it, SO_RCVBUF,
    // which the kernel clamps to rmem_max.
    if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof want) != 0 &&
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want) != 0) {
      return ErrnoError("setsockopt SO_RCVBUF", errno);
    }
  }
  int got = 0;
  socklen_t len = sizeof got;
  if (::getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &len) != 0) {
    return ErrnoError("getsockopt SO_RCVBUF", errno);
  }
  return static_cast<std::size_t>(got) / 2;
}

}  // namespace upcase
