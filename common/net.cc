#include "common/net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/optional.h"
#include "common/quote.h"

namespace upcase {

const char* TransportName(Transport t) { return t == Transport::kTcp ? "tcp" : "udp"; }

SocketAddress::SocketAddress(const sockaddr* sa, socklen_t len) {
  len_ = std::min<socklen_t>(len, sizeof storage_);
  std::memcpy(&storage_, sa, len_);
}

std::uint16_t SocketAddress::port() const {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
  if (family() == AF_INET6)
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  return 0;
}

void SocketAddress::set_port(std::uint16_t port) {
  if (family() == AF_INET) reinterpret_cast<sockaddr_in*>(&storage_)->sin_port = htons(port);
  if (family() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&storage_)->sin6_port = htons(port);
}

std::string SocketAddress::ToString() const {
  char host[INET6_ADDRSTRLEN] = "?";
  if (family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, host,
              sizeof host);
    return absl::StrCat(host, ":", port());
  }
  if (family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr, host,
              sizeof host);
    return absl::StrCat("[", host, "]:", port());
  }
  return absl::StrCat("<family ", family(), ">");
}

namespace {
constexpr absl::string_view kErrnoPayload = "upcase.errno";
}  // namespace

absl::Status ErrnoError(absl::string_view what, int err) {
  absl::Status status(absl::ErrnoToStatusCode(err), absl::StrCat(what, ": ", std::strerror(err)));
  status.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(err)));
  return status;
}

int ErrnoOf(const absl::Status& status) {
  int err = 0;
  if (absl::optional<absl::Cord> payload = status.GetPayload(kErrnoPayload)) {
    if (!absl::SimpleAtoi(std::string(*payload), &err)) err = 0;
  }
  return err;
}

absl::StatusOr<std::uint16_t> ParsePort(absl::string_view text) {
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid port ", Quoted(text), ": expected a number from 0 to 65535"));
  }
  return static_cast<std::uint16_t>(value);
}

absl::StatusOr<SocketAddress> ParseIpAddress(absl::string_view ip, std::uint16_t port) {
  std::string text(ip);
  // Accept the bracketed form users copy from URLs and from our own output: [::1]
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
  }
  sockaddr_in v4{};
  if (inet_pton(AF_INET, text.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
    return SocketAddress(reinterpret_cast<sockaddr*>(&v4), sizeof v4);
  }
  sockaddr_in6 v6{};
  if (inet_pton(AF_INET6, text.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(port);
    return SocketAddress(reinterpret_cast<sockaddr*>(&v6), sizeof v6);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("invalid address ", Quoted(ip), ": expected an IPv4 or IPv6 address"));
}

absl::StatusOr<std::vector<SocketAddress>> Resolve(absl::string_view host, std::uint16_t port,
                                                   Transport transport) {
  if (auto numeric = ParseIpAddress(host, port); numeric.ok()) {
    return std::vector<SocketAddress>{*numeric};
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = transport == Transport::kTcp ? SOCK_STREAM : SOCK_DGRAM;
  addrinfo* list = nullptr;
  const std::string host_str(host);
  const std::string port_str = std::to_string(port);
  if (int rc = getaddrinfo(host_str.c_str(), port_str.c_str(), &hints, &list); rc != 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot resolve ", Quoted(host), ": ", gai_strerror(rc)));
  }
  std::vector<SocketAddress> out;
  for (addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
    out.emplace_back(ai->ai_addr, ai->ai_addrlen);
  }
  freeaddrinfo(list);
  return out;
}

absl::StatusOr<SocketAddress> LocalAddress(int fd) {
  SocketAddress addr;
  if (getsockname(fd, addr.mutable_get(), addr.mutable_size()) != 0) {
    return ErrnoError("getsockname", errno);
  }
  return addr;
}

absl::StatusOr<SocketAddress> PeerAddress(int fd) {
  SocketAddress addr;
  if (getpeername(fd, addr.mutable_get(), addr.mutable_size()) != 0) {
    return ErrnoError("getpeername", errno);
  }
  return addr;
}

namespace {

absl::StatusOr<Fd> BoundSocket(const SocketAddress& addr, Transport transport,
                               const ListenOptions& options) {
  const std::string where = absl::StrCat(TransportName(transport), " ", addr.ToString());
  int type = (transport == Transport::kTcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC;
  if (options.non_blocking) type |= SOCK_NONBLOCK;
  Fd fd(::socket(addr.family(), type, 0));
  if (!fd.valid()) return ErrnoError(absl::StrCat("socket ", where), errno);
  const int one = 1;
  // SO_REUSEADDR lets a restarted server bind while old connections sit in TIME_WAIT.
  if (transport == Transport::kTcp &&
      setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    return ErrnoError(absl::StrCat("setsockopt SO_REUSEADDR ", where), errno);
  }
  if (options.reuse_port && setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    return ErrnoError(absl::StrCat("setsockopt SO_REUSEPORT ", where), errno);
  }
  if (addr.family() == AF_INET6 &&
      setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) {
    return ErrnoError(absl::StrCat("setsockopt IPV6_V6ONLY ", where), errno);
  }
  if (::bind(fd.get(), addr.get(), addr.size()) != 0) {
    return ErrnoError(absl::StrCat("bind ", where), errno);
  }
  return fd;
}

}  // namespace

absl::StatusOr<Fd> ListenTcp(const SocketAddress& addr, const ListenOptions& options) {
  absl::StatusOr<Fd> fd = BoundSocket(addr, Transport::kTcp, options);
  if (!fd.ok()) return fd;
  if (::listen(fd->get(), options.backlog) != 0) {
    return ErrnoError(absl::StrCat("listen tcp ", addr.ToString()), errno);
  }
  return fd;
}

absl::StatusOr<Fd> BindUdp(const SocketAddress& addr, const ListenOptions& options) {
  return BoundSocket(addr, Transport::kUdp, options);
}

absl::Status SetNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoError("fcntl O_NONBLOCK", errno);
  }
  return absl::OkStatus();
}

absl::Status SetNoDelay(int fd) {
  const int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    return ErrnoError("setsockopt TCP_NODELAY", errno);
  }
  return absl::OkStatus();
}

absl::Status SendAll(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t sent = ::send(fd, p, n, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("send", errno);
    }
    p += sent;
    n -= static_cast<std::size_t>(sent);
  }
  return absl::OkStatus();
}

}  // namespace upcase
