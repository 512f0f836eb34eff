#include "server/limits.h"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/procfs.h"

namespace upcase {

bool RefuseDatagram(const sockaddr* source, std::uint16_t own_port) {
  std::uint16_t port;
  if (source->sa_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in*>(source)->sin_port);
  } else if (source->sa_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6*>(source)->sin6_port);
  } else {
    return true;
  }
  return port < kFirstClientPort || port == own_port;
}

namespace {

// Clears every bit of `bytes` past the first `bits`.
void KeepPrefix(unsigned char* bytes, int length, int bits) {
  for (int i = 0; i < length; ++i) {
    const int keep = std::clamp(bits - 8 * i, 0, 8);
    bytes[i] &= static_cast<unsigned char>(0xFF00 >> keep);
  }
}

}  // namespace

PeerKey PeerKeyOf(const sockaddr* address, PeerPrefix prefix) {
  static constexpr unsigned char kMappedV4[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  unsigned char bytes[16] = {};
  if (address->sa_family == AF_INET6) {
    std::memcpy(bytes, &reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr, 16);
  } else if (address->sa_family == AF_INET) {
    std::memcpy(bytes, kMappedV4, sizeof kMappedV4);
    std::memcpy(bytes + 12, &reinterpret_cast<const sockaddr_in*>(address)->sin_addr, 4);
  }
  if (std::memcmp(bytes, kMappedV4, sizeof kMappedV4) == 0) {
    KeepPrefix(bytes + 12, 4, prefix.ipv4_bits);
  } else {
    KeepPrefix(bytes, 16, prefix.ipv6_bits);
  }
  PeerKey key;
  std::memcpy(&key.first, bytes, 8);
  std::memcpy(&key.second, bytes + 8, 8);
  return key;
}

bool ConnsPerAddress::Admit(const PeerKey& peer) {
  if (max_ == 0) return true;
  std::lock_guard<std::mutex> lock(mu_);
  std::uint32_t& count = counts_[peer];
  if (count >= max_) return false;
  ++count;
  return true;
}

void ConnsPerAddress::Release(const PeerKey& peer) {
  if (max_ == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = counts_.find(peer);
  if (it == counts_.end()) return;  // never admitted: nothing to give back
  if (--it->second == 0) counts_.erase(it);
}

std::size_t ConnsPerAddress::addresses() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_.size();
}

IdleClock::IdleClock(absl::Duration timeout) {
  tick_ = std::clamp(timeout / 8, absl::Milliseconds(10), absl::Seconds(1));
  if (timeout <= absl::ZeroDuration()) return;
  limit_ = static_cast<std::uint32_t>(absl::Ceil(timeout, tick_) / tick_);
}

std::size_t DefaultOutputBudget(int shards) {
  constexpr std::size_t kMin = std::size_t{32} << 20;
  constexpr std::size_t kMax = std::size_t{1} << 30;
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return kMin;  // cannot tell: the small end
  const std::size_t memory = static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_size);
  return std::clamp<std::size_t>(memory / 8 / static_cast<std::size_t>(std::max(shards, 1)), kMin,
                                 kMax);
}

OutputWatch::Verdict OutputWatch::Look(int fd, std::uint32_t patience) {
  int unacknowledged = 0;
  // A failed ioctl (the socket is gone) or nothing waiting: idle.
  if (::ioctl(fd, SIOCOUTQ, &unacknowledged) != 0 || unacknowledged <= 0) {
    Forget();
    return Verdict::kIdle;
  }
  const auto now = static_cast<std::uint32_t>(unacknowledged);
  if (seen_ == kNotLooked) {
    seen_ = now;
    looks_ = 0;
    return Verdict::kLookNext;
  }
  if (now < seen_) {
    Forget();
    return Verdict::kReading;
  }
  return ++looks_ < patience ? Verdict::kLookNext : Verdict::kIdle;
}

int SendBufferCap(std::size_t output_budget, std::size_t tcp_wmem_max) {
  constexpr std::size_t kKernelDefaultMax = 4 << 20;
  if (output_budget == 0) return 0;
  const std::size_t cap = std::max(kMinSendBufferCap, output_budget / kSendBuffersPerBudget);
  if (cap >= (tcp_wmem_max != 0 ? tcp_wmem_max : kKernelDefaultMax)) return 0;
  return static_cast<int>(cap);  // below tcp_wmem's maximum, an int
}

std::size_t TcpWmemMax() {
  const std::optional<std::string> text = ReadProcFile("", "/proc/sys/net/ipv4/tcp_wmem");
  if (!text.has_value()) return 0;
  const std::vector<absl::string_view> fields =
      absl::StrSplit(*text, absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
  std::size_t max = 0;
  if (fields.size() != 3 || !absl::SimpleAtoi(fields[2], &max)) return 0;
  return max;
}

}  // namespace upcase
