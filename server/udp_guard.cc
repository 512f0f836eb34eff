#include "server/udp_guard.h"

#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <time.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <random>

#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "common/net.h"
#include "common/uppercase.h"

namespace upcase {
namespace {

// The window is coarse, so is the clock: CLOCK_MONOTONIC_COARSE is a plain read of the tick the
// kernel keeps (a few ms), cheaper than the precise clock on the request path.
std::int64_t CoarseNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// absl::Hash is seeded per process, so a peer cannot choose bytes that collide with a reply.
std::uint64_t HashOf(const char* data, std::size_t n) {
  return absl::HashOf(absl::string_view(data, n));
}

std::uint64_t HeadOf(const char* data, std::size_t n) {
  std::uint64_t head = 0;
  std::memcpy(&head, data, std::min<std::size_t>(n, sizeof head));
  return head;
}

}  // namespace

ReflectionGuard::ReflectionGuard(bool enabled) {
  if (!enabled) return;
  slots_ = std::make_unique<Slot[]>(kSlots);
  std::random_device random;
  seed_ = (std::uint64_t{random()} << 32) | random();
}

ReflectionGuard::Peer ReflectionGuard::PeerOf(const sockaddr* address) {
  Peer p;
  if (address->sa_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(address);
    p.low = v4->sin_addr.s_addr;
    p.port_and_family = v4->sin_port | std::uint32_t{AF_INET} << 16;
  } else if (address->sa_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(address);
    std::memcpy(&p.high, &v6->sin6_addr, 8);
    std::memcpy(&p.low, reinterpret_cast<const char*>(&v6->sin6_addr) + 8, 8);
    p.port_and_family = v6->sin6_port | std::uint32_t{AF_INET6} << 16;
  }
  return p;
}

std::size_t ReflectionGuard::SlotOf(const Peer& peer) const {
  // Multiplicative hashing (the golden ratio's odd constant): the top bits pick the slot.
  constexpr std::uint64_t kMix = 0x9E3779B97F4A7C15;
  constexpr int kSlotBits = std::countr_zero(kSlots);
  const std::uint64_t x = ((peer.high ^ seed_) * kMix + peer.low) * kMix + peer.port_and_family;
  return static_cast<std::size_t>((x * kMix) >> (64 - kSlotBits));
}

bool ReflectionGuard::UppercaseUnlessReflection(const sockaddr* peer, char* data, std::size_t n) {
  if (slots_ == nullptr) {
    UppercaseInPlace(data, n);
    return true;
  }
  const Peer who = PeerOf(peer);
  Slot& slot = slots_[SlotOf(who)];
  const std::uint64_t head = HeadOf(data, n);
  // Cheap tests first: most requests differ from the last reply in peer, length or first bytes.
  if (slot.sent_ns != 0 && slot.length == n && slot.head == head && slot.peer == who &&
      CoarseNanos() - slot.sent_ns < absl::ToInt64Nanoseconds(kReflectionWindow) &&
      slot.hash == HashOf(data, n)) {
    return false;
  }
  UppercaseInPlace(data, n);
  slot.peer = who;
  slot.length = static_cast<std::uint32_t>(n);
  slot.head = HeadOf(data, n);
  slot.hash = HashOf(data, n);
  slot.sent_ns = CoarseNanos();
  return true;
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
