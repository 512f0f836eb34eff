// The UDP guards (server/udp_guard.h): the reflection guard, on its own and end to end against
// every backend that serves UDP, and the receive buffer with the kernel's drop count.
//
//   - loops: one datagram forged from one server's port to another's (both on ephemeral ports),
//     and a test-owned echo peer on a high port, are answered a handful of times in all, not for
//     ever; with --udp-reflection-guard=off they bounce (so the test can fail);
//   - bursts: four 65,507-byte datagrams from four sources arriving while the server cannot read
//     are all answered with the default --udp-rcvbuf; with a tiny one a burst is dropped by the
//     kernel and counted, datagrams_in + udp_kernel_drops == sent.
//
// A server "cannot read" because the test stops it (SIGSTOP) while the burst arrives: the worst
// case of a busy server, made deterministic. Quiet is observed, not slept for: the test watches
// the traffic (its own echo socket, or a packet socket on lo for two servers) until none has
// moved for kQuiet, within a deadline.
#include "server/udp_guard.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/net.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/backend.h"
#include "server/config.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using ::upcase::testing::ConnectUdp;
using ::upcase::testing::Expected;
using ::upcase::testing::RandomBytes;
using ::upcase::testing::Sa;
using ::upcase::testing::SendForged;
using ::upcase::testing::ServerProcess;
using ::upcase::testing::V4;
using ::upcase::testing::V6;

// ---- ReflectionGuard and KernelDrops on their own ----

// Feeds `request` to the guard as a datagram from `peer`: the reply, or "(refused)".
std::string Serve(ReflectionGuard& guard, const void* peer, std::string request) {
  if (!guard.UppercaseUnlessReflection(Sa(peer), request.data(), request.size())) {
    return "(refused)";
  }
  return request;
}

TEST(ReflectionGuardTest, OnlyTheLastReplyToTheSamePeerIsAReflection) {
  ReflectionGuard guard(true);
  const sockaddr_in peer = V4("127.0.0.1", 40000);
  EXPECT_EQ(Serve(guard, &peer, "ping pong"), "PING PONG");
  EXPECT_EQ(Serve(guard, &peer, "PING PONG"), "(refused)") << "the reply came back";
  EXPECT_EQ(Serve(guard, &peer, "PING PONh"), "PING PONH") << "same length, other bytes";
  EXPECT_EQ(Serve(guard, &peer, "PING PONH"), "(refused)");
  EXPECT_EQ(Serve(guard, &peer, "PING PO"), "PING PO") << "shorter";
  const sockaddr_in other_port = V4("127.0.0.1", 40001);
  const sockaddr_in other_host = V4("127.0.0.2", 40000);
  EXPECT_EQ(Serve(guard, &other_port, "PING PO"), "PING PO");
  EXPECT_EQ(Serve(guard, &other_host, "PING PO"), "PING PO");
  // A newer reply to the peer replaces the older one; the first 8 bytes alike, the rest not.
  EXPECT_EQ(Serve(guard, &peer, "0123456789 abc"), "0123456789 ABC");
  EXPECT_EQ(Serve(guard, &peer, "0123456789 ABD"), "0123456789 ABD");
  EXPECT_EQ(Serve(guard, &peer, "0123456789 ABC"), "0123456789 ABC");
  EXPECT_EQ(Serve(guard, &peer, "0123456789 ABC"), "(refused)");
  // IPv6 peers, by address and port.
  const sockaddr_in6 v6 = V6("::1", 40000);
  const sockaddr_in6 v6_other = V6("::2", 40000);
  EXPECT_EQ(Serve(guard, &v6, "x"), "X");
  EXPECT_EQ(Serve(guard, &v6_other, "X"), "X");
  EXPECT_EQ(Serve(guard, &v6, "X"), "(refused)");
}

TEST(ReflectionGuardTest, EmptyRepliesAndManyPeers) {
  ReflectionGuard guard(true);
  const sockaddr_in a = V4("10.0.0.1", 5000);
  EXPECT_EQ(Serve(guard, &a, ""), "");
  EXPECT_EQ(Serve(guard, &a, ""), "(refused)") << "an empty datagram loops as well";
  // Peers beyond the table's slots: each is remembered until another takes its slot, and no
  // peer is ever mistaken for another.
  for (std::uint16_t port = 2000; port < 2000 + 4 * ReflectionGuard::kSlots; ++port) {
    const sockaddr_in p = V4("10.0.0.2", port);
    const std::string reply = absl::StrCat("R", port);
    ASSERT_EQ(Serve(guard, &p, reply), reply);
    ASSERT_EQ(Serve(guard, &p, reply), "(refused)") << port;
    const sockaddr_in q = V4("10.0.0.3", port);
    ASSERT_EQ(Serve(guard, &q, reply), reply) << port;
  }
}

TEST(ReflectionGuardTest, OffRefusesNothing) {
  ReflectionGuard guard(false);
  const sockaddr_in peer = V4("127.0.0.1", 40000);
  EXPECT_EQ(Serve(guard, &peer, "x"), "X");
  EXPECT_EQ(Serve(guard, &peer, "X"), "X");
}

// A received datagram's control data carrying the socket's cumulative drop count `total`.
struct WithDropCount {
  explicit WithDropCount(std::uint32_t total) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SO_RXQ_OVFL;
    c->cmsg_len = CMSG_LEN(sizeof total);
    std::memcpy(CMSG_DATA(c), &total, sizeof total);
  }
  alignas(cmsghdr) char control[kDropsControlBytes] = {};
  msghdr msg{};
};

TEST(KernelDropsTest, CountsTheRiseOfTheCumulativeCount) {
  KernelDrops drops;
  ShardStats stats;
  msghdr none{};  // no control data: the count is still 0
  drops.Count(none, stats);
  EXPECT_EQ(stats.udp_kernel_drops, 0u);
  drops.Count(WithDropCount(3).msg, stats);
  EXPECT_EQ(stats.udp_kernel_drops, 3u);
  drops.Count(WithDropCount(3).msg, stats);  // no drop since
  EXPECT_EQ(stats.udp_kernel_drops, 3u);
  drops.Count(WithDropCount(10).msg, stats);
  EXPECT_EQ(stats.udp_kernel_drops, 10u);
  drops.Count(WithDropCount(9).msg, stats);  // older than one seen: nothing
  EXPECT_EQ(stats.udp_kernel_drops, 10u);
}

TEST(KernelDropsTest, SurvivesTheKernelsWrap) {
  KernelDrops drops;
  ShardStats stats;
  drops.Count(WithDropCount(0xFFFF'FFF0).msg, stats);
  drops.Count(WithDropCount(0x10).msg, stats);
  EXPECT_EQ(stats.udp_kernel_drops, 0xFFFF'FFF0u + 0x20u);
}

// ---- end to end, every backend ----

struct Variant {
  std::string backend;
  int shards;
};

std::vector<Variant> AllVariants() {
  std::vector<Variant> out;
  for (const BackendInfo& info : Backends()) {
    if (!info.available().ok()) continue;  // e.g. uring on a kernel without io_uring
    // Two shards: datagrams spread over more than one socket.
    out.push_back({std::string(info.name), info.sharded ? 2 : 1});
  }
  return out;
}

void PrintTo(const Variant& v, std::ostream* os) { *os << v.backend << " shards=" << v.shards; }

// How long nothing may move for the traffic to count as over. A loop goes round in microseconds.
constexpr absl::Duration kQuiet = absl::Milliseconds(300);
// The most a guarded loop may take to end, and the bound on every wait for a reply.
constexpr absl::Duration kDeadline = absl::Seconds(10);
// "At most a handful" of datagrams answered in all (a guarded loop answers two).
constexpr std::uint64_t kHandful = 4;
// An unguarded loop: at least this many datagrams within kLoopShows (tens of thousands a second
// on loopback in Release, a few thousand under the sanitizers).
constexpr std::uint64_t kMany = 100;
constexpr absl::Duration kLoopShows = absl::Milliseconds(200);

int PollMs(absl::Duration d) {
  return static_cast<int>(std::max<std::int64_t>(0, absl::ToInt64Milliseconds(d)));
}

std::uint64_t Total(const nlohmann::json& stats, const char* key) {
  return stats.contains("total") ? stats["total"].value(key, std::uint64_t{0}) : 0;
}

// Datagrams readable on `fd`, received (and for an echo peer, sent back) as they come, until
// `stop_at` were seen, nothing came for kQuiet (quiet = true), or `deadline`.
struct Traffic {
  std::uint64_t datagrams = 0;
  bool quiet = false;
};
Traffic Watch(int fd, bool echo, std::uint64_t stop_at, absl::Time deadline) {
  Traffic t;
  std::vector<char> buf(70000);
  absl::Time last = absl::Now();
  while (t.datagrams < stop_at) {
    const absl::Time now = absl::Now();
    if (now >= deadline) return t;
    if (now - last >= kQuiet) {
      t.quiet = true;
      return t;
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, PollMs(std::min(deadline, last + kQuiet) - now)) <= 0) continue;
    sockaddr_storage from;
    socklen_t from_len = sizeof from;
    const ssize_t n = ::recvfrom(fd, buf.data(), buf.size(), MSG_DONTWAIT,
                                 reinterpret_cast<sockaddr*>(&from), &from_len);
    if (n < 0) continue;
    ++t.datagrams;
    last = absl::Now();
    if (echo) {
      ::sendto(fd, buf.data(), static_cast<std::size_t>(n), 0, reinterpret_cast<sockaddr*>(&from),
               from_len);
    }
  }
  return t;
}

// A packet socket on lo that sees each UDP datagram to either port once (root only).
absl::StatusOr<Fd> SniffUdpTo(std::uint16_t port_a, std::uint16_t port_b) {
  // Protocol 0 receives nothing until bind(), so the filter is in place before the first packet.
  Fd fd(::socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket(AF_PACKET)", errno);
  // Cooked packets start at the IP header: UDP, and its destination port (ihl-relative) is one of
  // the two.
  sock_filter code[] = {
      {BPF_LD | BPF_B | BPF_ABS, 0, 0, 9},       {BPF_JMP | BPF_JEQ | BPF_K, 0, 5, IPPROTO_UDP},
      {BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0},      {BPF_LD | BPF_H | BPF_IND, 0, 0, 2},
      {BPF_JMP | BPF_JEQ | BPF_K, 1, 0, port_a}, {BPF_JMP | BPF_JEQ | BPF_K, 0, 1, port_b},
      {BPF_RET | BPF_K, 0, 0, 0xFFFF},           {BPF_RET | BPF_K, 0, 0, 0},
  };
  sock_fprog program{static_cast<unsigned short>(std::size(code)), code};
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof program) != 0) {
    return ErrnoError("setsockopt SO_ATTACH_FILTER", errno);
  }
  // Loopback shows every packet twice, leaving and arriving: only the arrival counts.
  const int one = 1;
  if (::setsockopt(fd.get(), SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) != 0) {
    return ErrnoError("setsockopt PACKET_IGNORE_OUTGOING", errno);
  }
  sockaddr_ll lo{};
  lo.sll_family = AF_PACKET;
  lo.sll_protocol = htons(ETH_P_IP);
  lo.sll_ifindex = static_cast<int>(::if_nametoindex("lo"));
  if (lo.sll_ifindex == 0) return ErrnoError("if_nametoindex lo", errno);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&lo), sizeof lo) != 0) {
    return ErrnoError("bind AF_PACKET lo", errno);
  }
  return fd;
}

class UdpGuardTest : public ::testing::TestWithParam<Variant> {
 protected:
  struct Server {
    std::optional<ServerProcess> running;
    std::string stats_path;
    ServerProcess& process() { return *running; }
  };

  // Starts the backend under test on 127.0.0.1, UDP only, port 0, with `flags`.
  void Start(Server* server, const std::string& tag, const std::vector<std::string>& flags = {}) {
    server->stats_path = testing::StatsPathForCurrentTest(tag);
    std::vector<std::string> all = {absl::StrCat("--backend=", GetParam().backend),
                                    absl::StrCat("--shards=", GetParam().shards),
                                    absl::StrCat("--stats-json=", server->stats_path),
                                    "--bind=127.0.0.1", "--proto=udp"};
    all.insert(all.end(), flags.begin(), flags.end());
    absl::StatusOr<ServerProcess> started = testing::StartServer(all);
    ASSERT_TRUE(started.ok()) << started.status();
    server->running.emplace(*std::move(started));
  }

  static nlohmann::json Stop(Server& server) {
    server.process().process.Signal(SIGTERM);
    return testing::FinishWithStats(server.process(), server.stats_path);
  }

  // SIGSTOP, returning once the server is stopped (it is our child: waitpid reports it).
  static void Pause(Server& server) {
    const pid_t pid = server.process().process.pid();
    ASSERT_EQ(::kill(pid, SIGSTOP), 0) << std::strerror(errno);
    const absl::Time deadline = absl::Now() + kDeadline;
    while (absl::Now() < deadline) {
      int status = 0;
      const pid_t r = ::waitpid(pid, &status, WUNTRACED | WNOHANG);
      ASSERT_GE(r, 0) << std::strerror(errno);
      if (r == pid) {
        ASSERT_TRUE(WIFSTOPPED(status)) << "wait status " << status;
        return;
      }
      ::poll(nullptr, 0, 1);  // a stop reported by the kernel: nothing to wait on but time
    }
    FAIL() << "the server did not stop";
  }

  static void Resume(Server& server) {
    ASSERT_EQ(::kill(server.process().process.pid(), SIGCONT), 0) << std::strerror(errno);
  }

  // One datagram forged from A's port to B's; the traffic between them watched until it is quiet
  // (or `stop_at` datagrams, or the deadline). Returns both servers' counters after a stop.
  void ForgeBetweenTwoServers(const std::vector<std::string>& flags, std::uint64_t stop_at,
                              absl::Duration deadline, Traffic* traffic, nlohmann::json* a_stats,
                              nlohmann::json* b_stats) {
    Server a, b;
    ASSERT_NO_FATAL_FAILURE(Start(&a, "udp-guard-a", flags));
    ASSERT_NO_FATAL_FAILURE(Start(&b, "udp-guard-b", flags));
    ASSERT_NE(a.process().udp_port, b.process().udp_port);
    absl::StatusOr<Fd> sniffer = SniffUdpTo(a.process().udp_port, b.process().udp_port);
    ASSERT_TRUE(sniffer.ok()) << sniffer.status();
    ASSERT_TRUE(SendForged("127.0.0.1", a.process().udp_port, "127.0.0.1", b.process().udp_port,
                           "ping pong")
                    .ok());
    *traffic = Watch(sniffer->get(), /*echo=*/false, stop_at, absl::Now() + deadline);
    *b_stats = Stop(b);
    *a_stats = Stop(a);
  }

  // A test-owned echo service on a high port sends the server one datagram, then echoes whatever
  // comes back, until quiet (or `stop_at` datagrams, or the deadline).
  void EchoPeer(const std::vector<std::string>& flags, std::uint64_t stop_at,
                absl::Duration deadline, Traffic* traffic, nlohmann::json* stats) {
    Server server;
    ASSERT_NO_FATAL_FAILURE(Start(&server, "udp-guard-echo", flags));
    absl::StatusOr<Fd> echo = ConnectUdp(server.process().udp_port);
    ASSERT_TRUE(echo.ok()) << echo.status();
    absl::StatusOr<SocketAddress> local = LocalAddress(echo->get());
    ASSERT_TRUE(local.ok()) << local.status();
    ASSERT_GE(local->port(), kFirstClientPort);  // not a well-known port: RefuseDatagram passes it
    ASSERT_EQ(::send(echo->get(), "ping pong", 9, 0), 9) << std::strerror(errno);
    *traffic = Watch(echo->get(), /*echo=*/true, stop_at, absl::Now() + deadline);
    *stats = Stop(server);
  }
};

TEST_P(UdpGuardTest, ForgedDatagramBetweenTwoServersOnEphemeralPortsEnds) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: raw and packet sockets";
  Traffic traffic;
  nlohmann::json a, b;
  ASSERT_NO_FATAL_FAILURE(ForgeBetweenTwoServers({}, UINT64_MAX, kDeadline, &traffic, &a, &b));
  // The forged datagram, B's reply, A's reply (which B refuses).
  EXPECT_TRUE(traffic.quiet) << traffic.datagrams << " datagrams and still bouncing";
  EXPECT_GE(traffic.datagrams, 3u);
  EXPECT_LE(traffic.datagrams, kHandful + 1);
  const std::uint64_t answered = Total(a, "datagrams_out") + Total(b, "datagrams_out");
  EXPECT_LE(answered, kHandful) << "A: " << a.dump() << "\nB: " << b.dump();
  EXPECT_GE(Total(a, "udp_refused") + Total(b, "udp_refused"), 1u)
      << "A: " << a.dump() << "\nB: " << b.dump();
}

// The same without the guard: the loop runs (which is what makes the test above able to fail).
TEST_P(UdpGuardTest, WithoutTheGuardTheForgedDatagramBounces) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: raw and packet sockets";
  Traffic traffic;
  nlohmann::json a, b;
  ASSERT_NO_FATAL_FAILURE(
      ForgeBetweenTwoServers({"--udp-reflection-guard=off"}, kMany, kLoopShows, &traffic, &a, &b));
  EXPECT_GE(traffic.datagrams, kMany) << "within " << absl::FormatDuration(kLoopShows);
  EXPECT_GE(Total(a, "datagrams_out") + Total(b, "datagrams_out"), kMany - 1)
      << "A: " << a.dump() << "\nB: " << b.dump();
}

TEST_P(UdpGuardTest, EchoPeerOnAHighPortGetsOneReply) {
  Traffic traffic;
  nlohmann::json stats;
  ASSERT_NO_FATAL_FAILURE(EchoPeer({}, UINT64_MAX, kDeadline, &traffic, &stats));
  EXPECT_TRUE(traffic.quiet) << traffic.datagrams << " datagrams and still bouncing";
  EXPECT_EQ(traffic.datagrams, 1u);
  EXPECT_EQ(Total(stats, "datagrams_out"), 1u) << stats.dump();
  EXPECT_EQ(Total(stats, "udp_refused"), 1u) << stats.dump();
}

TEST_P(UdpGuardTest, WithoutTheGuardTheEchoPeerLoops) {
  Traffic traffic;
  nlohmann::json stats;
  ASSERT_NO_FATAL_FAILURE(
      EchoPeer({"--udp-reflection-guard=off"}, kMany, kLoopShows, &traffic, &stats));
  EXPECT_GE(traffic.datagrams, kMany) << "within " << absl::FormatDuration(kLoopShows);
  EXPECT_GE(Total(stats, "datagrams_out"), kMany) << stats.dump();
  EXPECT_EQ(Total(stats, "udp_refused"), 0u) << stats.dump();
}

// ---- receive buffer and kernel drops ----

std::uint64_t ProcValue(const char* path) {
  std::ifstream in(path);
  std::uint64_t v = 0;
  in >> v;
  return v;
}

// Four of the largest datagrams, from four sources, while the server cannot read: each is
// answered. (Linux's default 208 KiB buffer holds three.)
TEST_P(UdpGuardTest, FourLargestDatagramsAtOnceAreAllAnswered) {
  if (::geteuid() != 0 && ProcValue("/proc/sys/net/core/rmem_max") < kDefaultUdpRcvbuf) {
    GTEST_SKIP() << "net.core.rmem_max is below the default --udp-rcvbuf, and only root may "
                    "exceed it";
  }
  constexpr int kSources = 4;
  Server server;
  ASSERT_NO_FATAL_FAILURE(Start(&server, "udp-rcvbuf"));
  std::vector<Fd> clients;
  std::vector<std::string> requests;
  for (int i = 0; i < kSources; ++i) {
    absl::StatusOr<Fd> fd = ConnectUdp(server.process().udp_port, "127.0.0.1", kDeadline);
    ASSERT_TRUE(fd.ok()) << fd.status();
    clients.push_back(*std::move(fd));
    requests.push_back(RandomBytes(kMaxDatagram, static_cast<std::uint32_t>(i)));
  }
  ASSERT_NO_FATAL_FAILURE(Pause(server));
  for (int i = 0; i < kSources; ++i) {
    ASSERT_EQ(::send(clients[i].get(), requests[i].data(), requests[i].size(), 0),
              static_cast<ssize_t>(kMaxDatagram))
        << std::strerror(errno);
  }
  ASSERT_NO_FATAL_FAILURE(Resume(server));
  std::vector<char> buf(kMaxDatagram + 1);
  for (int i = 0; i < kSources; ++i) {
    const ssize_t n = ::recv(clients[i].get(), buf.data(), buf.size(), 0);  // SO_RCVTIMEO bounds
    ASSERT_EQ(n, static_cast<ssize_t>(kMaxDatagram))
        << "source " << i << ": " << std::strerror(errno);
    EXPECT_TRUE(std::string(buf.data(), kMaxDatagram) == Expected(requests[i])) << i;
  }
  const nlohmann::json stats = Stop(server);
  EXPECT_EQ(Total(stats, "datagrams_in"), 4u) << stats.dump();
  EXPECT_EQ(Total(stats, "datagrams_out"), 4u) << stats.dump();
  EXPECT_EQ(Total(stats, "udp_kernel_drops"), 0u) << stats.dump();
  EXPECT_GE(stats.value("udp_rcvbuf", std::uint64_t{0}), kDefaultUdpRcvbuf) << stats.dump();
}

// A burst into a tiny buffer while the server cannot read: the kernel drops most of it, and the
// server counts each drop, so that what it read and what the kernel dropped add up to what was
// sent.
TEST_P(UdpGuardTest, KernelDropsOfABurstAreCounted) {
  constexpr int kBurst = 256;  // far beyond the buffer, and beyond uring's 64 provided buffers
  constexpr std::size_t kSize = 1000;
  Server server;
  ASSERT_NO_FATAL_FAILURE(Start(&server, "udp-drops", {"--udp-rcvbuf=4096"}));
  absl::StatusOr<Fd> client = ConnectUdp(server.process().udp_port, "127.0.0.1", kDeadline);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string request(kSize, 'x');
  ASSERT_NO_FATAL_FAILURE(Pause(server));
  for (int i = 0; i < kBurst; ++i) {
    ASSERT_EQ(::send(client->get(), request.data(), request.size(), 0), static_cast<ssize_t>(kSize))
        << std::strerror(errno);
  }
  ASSERT_NO_FATAL_FAILURE(Resume(server));
  // Probes until one is answered: the server is reading again (the probes may be dropped too).
  int probes = 0;
  bool answered = false;
  std::vector<char> buf(kSize + 1);
  const absl::Time deadline = absl::Now() + kDeadline;
  while (!answered && absl::Now() < deadline) {
    const std::string probe = absl::StrCat("probe ", probes++);
    ASSERT_EQ(::send(client->get(), probe.data(), probe.size(), 0),
              static_cast<ssize_t>(probe.size()));
    const absl::Time wait_until = std::min(deadline, absl::Now() + absl::Milliseconds(100));
    pollfd p{client->get(), POLLIN, 0};
    while (!answered && ::poll(&p, 1, PollMs(wait_until - absl::Now())) > 0) {
      const ssize_t n = ::recv(client->get(), buf.data(), buf.size(), MSG_DONTWAIT);
      answered = n > 0 && absl::string_view(buf.data(), static_cast<std::size_t>(n)).substr(0, 6) ==
                              "PROBE ";
    }
  }
  ASSERT_TRUE(answered) << "no probe answered after the burst";
  const nlohmann::json stats = Stop(server);
  const std::uint64_t drops = Total(stats, "udp_kernel_drops");
  EXPECT_GT(drops, 0u) << stats.dump();
  EXPECT_EQ(Total(stats, "datagrams_in") + drops, static_cast<std::uint64_t>(kBurst + probes))
      << stats.dump();
  EXPECT_LE(stats.value("udp_rcvbuf", std::uint64_t{0}), 8192u) << stats.dump();
}

INSTANTIATE_TEST_SUITE_P(AllBackends, UdpGuardTest, ::testing::ValuesIn(AllVariants()),
                         [](const ::testing::TestParamInfo<Variant>& p) {
                           return p.param.backend;
                         });

}  // namespace
}  // namespace upcase
