// upcase-client: the lab's interactive client, for TCP and UDP.
//
//   $ upcase-client tcp 127.0.0.1 5050
//   Local address: 127.0.0.1:40312
//   Foreign address: 127.0.0.1:5050
//   Please enter the statement: eecs563
//   Return text from the server: EECS563
//
// Reads lines until end of input or Ctrl-C; works with stdin from a pipe. Over TCP each line is
// sent with its newline and the reply read until the same number of bytes came back (TCP is a
// byte stream: one recv may return part of a reply). Sending and receiving are interleaved with
// poll(): the server answers as it reads, so a line larger than the socket buffers between the two
// (megabytes) would deadlock a client that sends all of it before reading. Over UDP each line is
// one datagram; the UDP socket is connect()ed so its local port is known before the first send and
// an unreachable server is reported (ICMP port unreachable arrives as ECONNREFUSED) instead of
// waited on.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/net.h"

namespace upcase {
namespace {

constexpr char kProgram[] = "upcase-client";
constexpr char kPrompt[] = "Please enter the statement: ";
constexpr char kReplyLabel[] = "Return text from the server: ";

// Connects a socket of `transport` to the first address of `host` that accepts, optionally bound
// to local port `bind_port` first (the lab's extra-credit clientSocket.bind(('', 5432))).
absl::StatusOr<Fd> Connect(Transport transport, const std::string& host, std::uint16_t port,
                           std::int64_t bind_port) {
  absl::StatusOr<std::vector<SocketAddress>> addrs = Resolve(host, port, transport);
  if (!addrs.ok()) return addrs.status();
  absl::Status last = absl::NotFoundError(absl::StrCat("no address for '", host, "'"));
  for (const SocketAddress& addr : *addrs) {
    const int type = (transport == Transport::kTcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC;
    Fd fd(::socket(addr.family(), type, 0));
    if (!fd.valid()) {
      last = ErrnoError("socket", errno);
      continue;
    }
    if (bind_port >= 0) {
      SocketAddress local = *ParseIpAddress(addr.family() == AF_INET6 ? "::" : "0.0.0.0",
                                            static_cast<std::uint16_t>(bind_port));
      if (::bind(fd.get(), local.get(), local.size()) != 0) {
        return ErrnoError(absl::StrCat("bind ", local.ToString()), errno);
      }
    }
    if (::connect(fd.get(), addr.get(), addr.size()) != 0) {
      last = ErrnoError(absl::StrCat("connect ", TransportName(transport), " ", addr.ToString()),
                        errno);
      continue;
    }
    if (transport == Transport::kTcp) {
      if (absl::Status s = SetNoDelay(fd.get()); !s.ok()) return s;
    }
    return fd;
  }
  return last;
}

// Sends `request` and reads as many bytes back, both at once: poll() says which way the socket can
// go, and each call takes what it can without blocking (MSG_DONTWAIT).
absl::StatusOr<std::string> Exchange(int fd, const std::string& request) {
  std::string reply(request.size(), '\0');
  std::size_t sent = 0;
  std::size_t received = 0;
  while (received < reply.size()) {
    pollfd p{fd, static_cast<short>(POLLIN | (sent < request.size() ? POLLOUT : 0)), 0};
    if (::poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll", errno);
    }
    if (p.revents & POLLOUT) {
      const ssize_t n =
          ::send(fd, request.data() + sent, request.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) return ErrnoError("send", errno);
      if (n > 0) sent += static_cast<std::size_t>(n);
    }
    if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
      const ssize_t n = ::recv(fd, reply.data() + received, reply.size() - received, MSG_DONTWAIT);
      if (n == 0) return absl::UnavailableError("the server closed the connection");
      if (n < 0 && errno != EAGAIN && errno != EINTR) return ErrnoError("recv", errno);
      if (n > 0) received += static_cast<std::size_t>(n);
    }
  }
  return reply;
}

absl::StatusOr<std::string> RoundTripTcp(int fd, const std::string& line) {
  absl::StatusOr<std::string> reply = Exchange(fd, line + "\n");
  if (reply.ok()) reply->pop_back();  // the newline we sent
  return reply;
}

absl::StatusOr<std::string> RoundTripUdp(int fd, const std::string& line, absl::Duration timeout,
                                         const std::string& server) {
  if (line.size() > 65507) {
    return absl::InvalidArgumentError(
        absl::StrCat("line of ", line.size(), " bytes is larger than a UDP datagram (65507)"));
  }
  if (::send(fd, line.data(), line.size(), 0) < 0) {
    return ErrnoError(absl::StrCat("send to ", server), errno);
  }
  pollfd p{fd, POLLIN, 0};
  int ready;
  do {
    ready = ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  } while (ready < 0 && errno == EINTR);
  if (ready == 0) {
    return absl::DeadlineExceededError(absl::StrCat("no reply from ", server, " within ",
                                                    absl::FormatDuration(timeout),
                                                    " (is the server running?)"));
  }
  std::string reply(65536, '\0');
  const ssize_t got = ::recv(fd, reply.data(), reply.size(), 0);
  if (got < 0 && errno == ECONNREFUSED) {
    return absl::UnavailableError(
        absl::StrCat("no UDP server at ", server, " (the host answered: port unreachable)"));
  }
  if (got < 0) return ErrnoError(absl::StrCat("recv from ", server), errno);
  reply.resize(static_cast<std::size_t>(got));
  return reply;
}

int Main(int argc, char** argv) {
  std::int64_t bind_port = -1;
  absl::Duration timeout = absl::Seconds(2);
  FlagSet flags(kProgram,
                "usage: upcase-client [--bind-port=N] tcp|udp HOST PORT\n\n"
                "The lab client: reads lines from stdin, sends each to the uppercase server and\n"
                "prints the reply. Prints its local and foreign address once at start.");
  flags.Int("bind-port", &bind_port, -1, 65535,
            "bind the client socket to this local port first (-1: let the kernel choose)");
  flags.Duration("timeout", &timeout, "UDP: how long to wait for each reply");
  std::vector<std::string> args = flags.ParseOrExit(argc, argv);
  if (args.size() != 3 || (args[0] != "tcp" && args[0] != "udp")) {
    DieIfError(kProgram, absl::InvalidArgumentError("expected: tcp|udp HOST PORT (see --help)"));
  }
  const Transport transport = args[0] == "tcp" ? Transport::kTcp : Transport::kUdp;
  absl::StatusOr<std::uint16_t> port = ParsePort(args[2]);
  DieIfError(kProgram, port.status());
  if (*port == 0) DieIfError(kProgram, absl::InvalidArgumentError("PORT must not be 0"));
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<Fd> fd = Connect(transport, args[1], *port, bind_port);
  DieIfError(kProgram, fd.status());
  absl::StatusOr<SocketAddress> local = LocalAddress(fd->get());
  absl::StatusOr<SocketAddress> peer = PeerAddress(fd->get());
  DieIfError(kProgram, local.status());
  DieIfError(kProgram, peer.status());
  std::printf("Local address: %s\nForeign address: %s\n", local->ToString().c_str(),
              peer->ToString().c_str());

  std::string line;
  while (true) {
    std::fputs(kPrompt, stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    absl::StatusOr<std::string> reply =
        transport == Transport::kTcp ? RoundTripTcp(fd->get(), line)
                                     : RoundTripUdp(fd->get(), line, timeout, peer->ToString());
    if (!reply.ok()) {
      std::fputc('\n', stdout);
      std::fflush(stdout);
      DieIfError(kProgram, reply.status());
    }
    std::printf("%s%s\n", kReplyLabel, reply->c_str());
  }
  std::fputc('\n', stdout);  // end the last prompt's line
  return 0;
}

}  // namespace
}  // namespace upcase

int main(int argc, char** argv) { return upcase::Main(argc, argv); }
