// Socket and address helpers shared by the servers, the load generator and the client.
//
// Every helper that makes a system call reports failure as an absl::Status whose message names
// the call, the address and the errno text, e.g. "bind tcp 0.0.0.0:5050: Address already in use".
#ifndef UPCASE_COMMON_NET_H_
#define UPCASE_COMMON_NET_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace upcase {

// Owns one file descriptor; closes it on destruction. Move-only. Invariant: fd_ is -1 or open.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

enum class Transport { kTcp, kUdp };
const char* TransportName(Transport t);

// An IPv4 or IPv6 socket address.
class SocketAddress {
 public:
  SocketAddress() = default;
  SocketAddress(const sockaddr* sa, socklen_t len);

  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage_); }
  sockaddr* mutable_get() { return reinterpret_cast<sockaddr*>(&storage_); }
  socklen_t size() const { return len_; }
  socklen_t* mutable_size() { return &len_; }
  int family() const { return storage_.ss_family; }
  std::uint16_t port() const;
  void set_port(std::uint16_t port);
  // "127.0.0.1:5050" or "[::1]:5050".
  std::string ToString() const;

 private:
  sockaddr_storage storage_{};
  socklen_t len_ = sizeof(sockaddr_storage);
};

// Builds the status for a failed call: "<what>: <strerror(err)>", with the code mapped from err
// and err itself kept as a payload for ErrnoOf().
absl::Status ErrnoError(absl::string_view what, int err);
// The errno an ErrnoError carries, or 0.
int ErrnoOf(const absl::Status& status);

// Parses a decimal port 0..65535.
absl::StatusOr<std::uint16_t> ParsePort(absl::string_view text);

// Parses a numeric IPv4 or IPv6 address (no name lookup), e.g. for --bind.
absl::StatusOr<SocketAddress> ParseIpAddress(absl::string_view ip, std::uint16_t port);

// Resolves a host name or numeric address with getaddrinfo, in the resolver's preferred order.
absl::StatusOr<std::vector<SocketAddress>> Resolve(absl::string_view host, std::uint16_t port,
                                                   Transport transport);

// Address the socket is bound to (getsockname) / connected to (getpeername).
absl::StatusOr<SocketAddress> LocalAddress(int fd);
absl::StatusOr<SocketAddress> PeerAddress(int fd);

struct ListenOptions {
  bool reuse_port = false;  // SO_REUSEPORT: several sockets share the port, the kernel balances
  bool non_blocking = false;
  int backlog = 4096;  // capped by net.core.somaxconn
};

// socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen.
absl::StatusOr<Fd> ListenTcp(const SocketAddress& addr, const ListenOptions& options);
// socket + (SO_REUSEPORT) + bind.
absl::StatusOr<Fd> BindUdp(const SocketAddress& addr, const ListenOptions& options);

absl::Status SetNonBlocking(int fd);
absl::Status SetNoDelay(int fd);

// Writes all n bytes to a blocking socket, retrying on EINTR and short writes. MSG_NOSIGNAL, so a
// vanished peer is an EPIPE error, not a SIGPIPE.
absl::Status SendAll(int fd, const void* data, std::size_t n);

}  // namespace upcase

#endif  // UPCASE_COMMON_NET_H_
