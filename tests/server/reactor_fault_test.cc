// Load and fault behaviour of the reactor backends: every registered backend whose BackendInfo
// says `reactor` joins by registering (the one-thread ones, poll and select, run one shard). Real
// server processes on loopback, port 0; every wait is bounded by a deadline or a socket timeout,
// every load loop by a count.
//
//   - 1000 concurrent connections, all served correctly;
//   - connections spread over every shard (per-shard stats);
//   - clients that send and never read cost at most --conn-buffer each, and others still get
//     answers;
//   - clients that stream through while reading slowly cost what the output budget allows, not
//     --conn-buffer each;
//   - SIGTERM under load: exit 0, every byte the server read is answered.
// The cases every backend shares (one client sending forever, descriptor exhaustion, oversized
// datagrams, UDP flood) live in fault_test.cc, which runs the sharded backends with 2 shards.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/net.h"
#include "common/sys.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/backend.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using ::upcase::testing::ConnectTcp;
using ::upcase::testing::ConnectUdp;
using ::upcase::testing::Expected;
using ::upcase::testing::FinishWithStats;
using ::upcase::testing::kSanitized;
using ::upcase::testing::ProvidedBufferBytes;
using ::upcase::testing::RandomBytes;
using ::upcase::testing::RecvExactly;
using ::upcase::testing::RoundTrip;
using ::upcase::testing::RssBytes;
using ::upcase::testing::SendFromAllUntilStalled;
using ::upcase::testing::ServerProcess;
using ::upcase::testing::StartServer;
using ::upcase::testing::StatsPathForCurrentTest;

std::vector<std::string> ReactorBackends() {
  std::vector<std::string> out;
  for (const BackendInfo& info : Backends()) {
    if (info.reactor && info.available().ok()) out.emplace_back(info.name);
  }
  return out;
}

bool Sharded(const std::string& backend) {
  absl::StatusOr<const BackendInfo*> info = FindBackend(backend);
  return info.ok() && (*info)->sharded;
}

// Whether the running kernel is at least major.minor (from uname).
bool KernelAtLeast(int major, int minor) {
  utsname u{};
  if (::uname(&u) != 0) return false;
  std::vector<absl::string_view> parts = absl::StrSplit(u.release, absl::MaxSplits('.', 2));
  int have_major = 0, have_minor = 0;
  if (parts.size() < 2 || !absl::SimpleAtoi(parts[0], &have_major)) return false;
  const absl::string_view minor_digits =
      parts[1].substr(0, parts[1].find_first_not_of("0123456789"));
  if (!absl::SimpleAtoi(minor_digits, &have_minor)) return false;
  return have_major > major || (have_major == major && have_minor >= minor);
}

void SetReceiveBuffer(int fd, int bytes) {
  EXPECT_EQ(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes), 0)
      << std::strerror(errno);
}

class ReactorFaultTest : public ::testing::TestWithParam<std::string> {
 protected:
  // Starts the backend under test with `flags` plus --stats-json, under `prefix` if given.
  void Start(const std::vector<std::string>& flags, const std::vector<std::string>& prefix = {}) {
    stats_path_ = StatsPathForCurrentTest("reactor");
    std::vector<std::string> all = {absl::StrCat("--backend=", GetParam()),
                                    absl::StrCat("--stats-json=", stats_path_)};
    all.insert(all.end(), flags.begin(), flags.end());
    absl::StatusOr<ServerProcess> server = StartServer(all, prefix);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::make_unique<ServerProcess>(*std::move(server));
  }

  // Waits for the server to exit (after a signal sent by the caller), expects exit status 0, and
  // returns its --stats-json counters.
  nlohmann::json Finish() { return FinishWithStats(*server_, stats_path_); }

  nlohmann::json StopServer() {
    server_->process.Signal(SIGTERM);
    return Finish();
  }

  std::unique_ptr<ServerProcess> server_;
  std::string stats_path_;
};

TEST_P(ReactorFaultTest, ThousandConcurrentConnectionsAllServed) {
  constexpr int kConns = 1000;
  if (RaiseFdLimit() < kConns + 100) GTEST_SKIP() << "RLIMIT_NOFILE too low for 1000 clients";
  ASSERT_NO_FATAL_FAILURE(Start({"--shards=4", "--bind=127.0.0.1"}));
  auto request = [](int i) { return absl::StrCat("connection ", i, " of a thousand, Mixed\n"); };

  std::vector<Fd> fds;
  for (int i = 0; i < kConns; ++i) {
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    ASSERT_TRUE(fd.ok()) << "connection " << i << ": " << fd.status();
    fds.push_back(*std::move(fd));
  }
  // Every connection has a request in flight before the first reply is read.
  for (int i = 0; i < kConns; ++i) {
    const std::string r = request(i);
    ASSERT_TRUE(SendAll(fds[i].get(), r.data(), r.size()).ok()) << "connection " << i;
  }
  for (int i = 0; i < kConns; ++i) {
    absl::StatusOr<std::string> reply = RecvExactly(fds[i].get(), request(i).size());
    ASSERT_TRUE(reply.ok()) << "connection " << i << ": " << reply.status();
    ASSERT_EQ(*reply, Expected(request(i))) << "connection " << i;
  }
  // And all of them keep being served.
  for (int i = kConns - 1; i >= 0; --i) {
    absl::StatusOr<std::string> reply = RoundTrip(fds[i].get(), request(i));
    ASSERT_TRUE(reply.ok()) << "connection " << i << ": " << reply.status();
    ASSERT_EQ(*reply, Expected(request(i))) << "connection " << i;
  }
  fds.clear();

  nlohmann::json stats = StopServer();
  EXPECT_EQ(stats["total"]["accepted"], kConns) << stats.dump();
  EXPECT_EQ(stats["total"]["rejected"], 0);
  EXPECT_EQ(stats["total"]["bytes_in"], stats["total"]["bytes_out"]);
}

TEST_P(ReactorFaultTest, ConnectionsSpreadOverAllShards) {
  constexpr int kShards = 4;
  constexpr int kConns = 200;  // P(some shard gets none) = 4 * (3/4)^200, about 1e-25
  if (!Sharded(GetParam()))
    GTEST_SKIP() << GetParam() << " runs one thread: --shards does not apply";
  ASSERT_NO_FATAL_FAILURE(Start({absl::StrCat("--shards=", kShards), "--bind=127.0.0.1"}));
  for (int i = 0; i < kConns; ++i) {
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    ASSERT_TRUE(fd.ok()) << fd.status();
    absl::StatusOr<std::string> reply = RoundTrip(fd->get(), "which shard?");
    ASSERT_TRUE(reply.ok()) << reply.status();
    ASSERT_EQ(*reply, "WHICH SHARD?");
  }
  nlohmann::json stats = StopServer();
  ASSERT_EQ(stats["shards"].size(), static_cast<std::size_t>(kShards)) << stats.dump();
  for (int s = 0; s < kShards; ++s) {
    EXPECT_GT(stats["shards"][s]["accepted"].get<std::uint64_t>(), 0u)
        << "shard " << s << " accepted nothing: " << stats.dump();
  }
  EXPECT_EQ(stats["total"]["accepted"], kConns);
}

TEST_P(ReactorFaultTest, ClientsThatNeverReadCostAtMostTheBufferCap) {
  constexpr int kClients = 200;
  constexpr std::size_t kCap = 64 * 1024;
  constexpr std::size_t kPerClient = 1 << 20;
  // Beyond the cap per client and the buffers a shard shares among its connections (uring's
  // provided buffers: the ring grows under this flood, up to 16 MiB a shard; stats.json reports
  // it): connection state, allocator and thread-arena overhead. Kernel socket buffers
  // (where most of the unread data waits) are not part of the process's RSS; with loopback
  // autotuning they may even hold the whole 1 MiB, so fault_test.cc's ClientSendingForever... is
  // the check that the cap itself holds.
  constexpr std::uint64_t kSlack = 8 << 20;
  // With every sender blocked this long, the server has stopped reading all of them.
  constexpr absl::Duration kStalled = absl::Seconds(1);
  if (RaiseFdLimit() < kClients + 100) GTEST_SKIP() << "RLIMIT_NOFILE too low";
  ASSERT_NO_FATAL_FAILURE(Start(
      {"--shards=2", "--bind=127.0.0.1", "--proto=tcp", absl::StrCat("--conn-buffer=", kCap)}));
  const pid_t pid = server_->process.pid();

  // Warm up every shard's buffers before taking the baseline.
  const std::string warmup = RandomBytes(32 * 1024, 1);
  for (int i = 0; i < 16; ++i) {
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    ASSERT_TRUE(fd.ok()) << fd.status();
    ASSERT_EQ(RoundTrip(fd->get(), warmup).value_or(""), Expected(warmup));
  }
  absl::StatusOr<std::uint64_t> baseline = RssBytes(pid);
  ASSERT_TRUE(baseline.ok()) << baseline.status();

  std::vector<Fd> senders;
  for (int i = 0; i < kClients; ++i) {
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    ASSERT_TRUE(fd.ok()) << fd.status();
    SetReceiveBuffer(fd->get(), 4096);  // so the server's output backs up early
    senders.push_back(*std::move(fd));
  }
  const std::string data(kPerClient, 'q');
  std::uint64_t peak = *baseline;
  const std::vector<std::uint64_t> sent =
      SendFromAllUntilStalled(senders, data, kStalled, pid, &peak);
  peak = std::max(peak, RssBytes(pid).value_or(0));
  std::uint64_t total_sent = 0;
  for (std::uint64_t s : sent) total_sent += s;

  // Meanwhile another client still gets prompt answers.
  absl::StatusOr<Fd> other = ConnectTcp(server_->tcp_port, "127.0.0.1", absl::Seconds(5));
  ASSERT_TRUE(other.ok()) << other.status();
  for (int i = 0; i < 20; ++i) {
    const std::string request = absl::StrCat("am I still served? ", i, "\n");
    absl::StatusOr<std::string> reply = RoundTrip(other->get(), request);
    ASSERT_TRUE(reply.ok()) << "round trip " << i << ": " << reply.status();
    ASSERT_EQ(*reply, Expected(request));
  }
  senders.clear();
  nlohmann::json stats = StopServer();
  const std::uint64_t shared = ProvidedBufferBytes(stats);
  EXPECT_EQ(shared > 0, GetParam() == "uring") << stats.dump();
  const std::uint64_t bound = kClients * kCap + shared + kSlack;
  if (!kSanitized) {
    EXPECT_LT(peak - *baseline, bound)
        << "RSS grew by " << (peak - *baseline) << " bytes (bound " << bound << ", of which "
        << shared << " provided buffers) while " << kClients << " clients sent " << total_sent
        << " bytes and read none";
  }
}

// Four clients stream data through while reading slowly, so each one's output queue stays
// non-empty, at its share of the budget, while hundreds of MiB pass through it. With a
// --conn-buffer-sized ring that rewinds only when empty, the write position travelled the whole
// ring and touched every page: RSS grew by about what streamed through (up to --conn-buffer per
// client), not by the budget's worth. Chunks handed back as they drain keep it at what is queued.
TEST_P(ReactorFaultTest, SlowReadersStreamingThroughCostTheBudgetNotTheirBuffers) {
  constexpr int kClients = 4;
  constexpr std::size_t kBudget = 64 << 20;
  // Per client: enough that a ring would touch far more than the bound below (each ring ~ what
  // streamed through it plus its share); under a sanitizer RSS is not judged, so less.
  constexpr std::uint64_t kPerClient = kSanitized ? (16 << 20) : (96 << 20);
  constexpr std::size_t kSendStep = 1 << 20;
  constexpr std::size_t kReadStep = 64 << 10;
  // Each client reads at most this fast, and sends as fast as the server reads: the server's
  // queues fill up to their share of the budget and stay there while the stream goes through.
  // (The pace is the behaviour under test, a slow reader, not synchronisation.)
  constexpr double kReadBytesPerSecond = 32e6;
  // Above the baseline: the unsent output (at most twice the budget, in practice about one
  // budget: four fair shares), the unused ends of each queue's chunks, the pool's spare chunks
  // (4 MiB), uring's shared receive buffers, and 16 MiB of allocator and thread overhead.
  constexpr std::uint64_t kSlack = 16 << 20;
  const absl::Time deadline = absl::Now() + absl::Seconds(kSanitized ? 120 : 90);
  ASSERT_NO_FATAL_FAILURE(Start({"--shards=1", "--bind=127.0.0.1", "--proto=tcp",
                                 "--conn-buffer=1G", absl::StrCat("--output-budget=", kBudget)}));
  const pid_t pid = server_->process.pid();

  const std::string block = RandomBytes(1 << 20, 9);
  const std::string expected = Expected(block);
  std::vector<Fd> clients;
  for (int i = 0; i < kClients; ++i) {
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    ASSERT_TRUE(fd.ok()) << fd.status();
    SetReceiveBuffer(fd->get(), 64 << 10);  // replies back up in the server, not in the client
    ASSERT_EQ(RoundTrip(fd->get(), "warm up").value_or(""), "WARM UP");
    ASSERT_EQ(SetNonBlocking(fd->get()), absl::OkStatus());
    clients.push_back(*std::move(fd));
  }
  absl::StatusOr<std::uint64_t> baseline = RssBytes(pid);
  ASSERT_TRUE(baseline.ok()) << baseline.status();
  std::uint64_t peak = *baseline;

  std::vector<std::uint64_t> sent(kClients, 0), received(kClients, 0);
  std::vector<char> buf(kReadStep);
  std::uint64_t done = 0;
  const absl::Time start = absl::Now();
  for (std::uint64_t round = 0; done < kClients; ++round) {
    const absl::Time now = absl::Now();
    ASSERT_LT(now, deadline) << "streamed only " << received[0] << " bytes to client 0";
    const auto may_read = static_cast<std::uint64_t>(
        kReadBytesPerSecond * absl::ToDoubleSeconds(now - start) + kReadStep);
    std::vector<pollfd> fds;
    for (int i = 0; i < kClients; ++i) {
      short want = 0;
      if (sent[i] < kPerClient) want |= POLLOUT;
      if (received[i] < kPerClient && received[i] < may_read) want |= POLLIN;
      fds.push_back(pollfd{clients[i].get(), want, 0});
    }
    ASSERT_GE(::poll(fds.data(), fds.size(), 1), 0) << std::strerror(errno);
    done = 0;
    for (int i = 0; i < kClients; ++i) {
      const int fd = clients[i].get();
      if ((fds[i].revents & POLLOUT) && sent[i] < kPerClient) {
        const std::size_t at = sent[i] % block.size();
        const std::size_t n =
            std::min<std::uint64_t>({kSendStep, block.size() - at, kPerClient - sent[i]});
        const ssize_t wrote = ::send(fd, block.data() + at, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (wrote < 0) {
          ASSERT_TRUE(errno == EAGAIN || errno == EINTR) << std::strerror(errno);
        }
        if (wrote > 0) sent[i] += static_cast<std::uint64_t>(wrote);
      }
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) && received[i] < kPerClient &&
          received[i] < may_read) {
        const std::size_t at = received[i] % expected.size();
        const std::size_t n = std::min(buf.size(), expected.size() - at);
        const ssize_t got = ::recv(fd, buf.data(), n, MSG_DONTWAIT);
        if (got < 0) {
          ASSERT_TRUE(errno == EAGAIN || errno == EINTR) << std::strerror(errno);
        }
        ASSERT_NE(got, 0) << "client " << i << ": EOF after " << received[i] << " bytes";
        if (got > 0) {
          ASSERT_EQ(std::memcmp(buf.data(), expected.data() + at, static_cast<std::size_t>(got)), 0)
              << "client " << i << ": reply differs at byte " << received[i];
          received[i] += static_cast<std::uint64_t>(got);
        }
      }
      if (received[i] == kPerClient) ++done;
    }
    if (round % 256 == 0) peak = std::max(peak, RssBytes(pid).value_or(0));
  }
  peak = std::max(peak, RssBytes(pid).value_or(0));
  clients.clear();
  nlohmann::json stats = StopServer();
  const std::uint64_t shared = ProvidedBufferBytes(stats);
  const std::uint64_t bound = 2 * kBudget + shared + kSlack;
  std::printf("RSS grew by %.1f MiB while %d clients streamed %.0f MiB each (bound %.1f MiB)\n",
              static_cast<double>(peak - *baseline) / (1 << 20), kClients,
              static_cast<double>(kPerClient) / (1 << 20), static_cast<double>(bound) / (1 << 20));
  if (!kSanitized) {
    EXPECT_LT(peak - *baseline, bound)
        << "RSS grew by " << (peak - *baseline) << " bytes (bound " << bound << ", of which "
        << shared << " provided buffers) while " << kClients << " clients streamed " << kPerClient
        << " bytes each through --conn-buffer=1G --output-budget=" << kBudget;
  }
}

// Linux 6.17 can end a multishot recv after a number of bytes; uring then needs room for two
// buffers instead of a burst of 32 and receives into 16 KiB buffers at the default cap, four times
// the 4 KiB it uses without the limit (RecvPolicy::buffer_size), which UPCASE_URING_RECV_LIMIT=off
// asks for. The buffer ring's size at exit shows which the server chose.
TEST_P(ReactorFaultTest, UringUsesTheKernelsRecvLimitWhenItHasOne) {
  if (GetParam() != "uring") GTEST_SKIP() << "uring only";
  auto pool_bytes = [&](const std::vector<std::string>& prefix) -> std::uint64_t {
    Start({"--shards=1", "--bind=127.0.0.1", "--proto=tcp"}, prefix);
    if (server_ == nullptr) return 0;
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (fd.ok()) {
      EXPECT_EQ(RoundTrip(fd->get(), "which buffers?").value_or(""), "WHICH BUFFERS?");
    }
    return ProvidedBufferBytes(StopServer());
  };
  const std::uint64_t with_limit = pool_bytes({});
  const std::uint64_t without = pool_bytes({"env", "UPCASE_URING_RECV_LIMIT=off"});
  ASSERT_GT(without, 0u);
  EXPECT_EQ(with_limit, (KernelAtLeast(6, 17) ? 4 : 1) * without)
      << "with the limit " << with_limit << " bytes, without " << without;
}

TEST_P(ReactorFaultTest, SigtermUnderLoadAnswersEverythingReceived) {
  constexpr int kClients = 8;
  constexpr std::size_t kFirst = 64 * 1024;  // answered and read back before the signal
  // Then each client sends until the server stops reading it (backpressure), at most this much, so
  // at the signal the server holds unanswered input and pending output on every connection.
  constexpr std::uint64_t kMaxPerClient = 16ull << 20;
  constexpr absl::Duration kStalled = absl::Milliseconds(500);
  ASSERT_NO_FATAL_FAILURE(
      Start({"--shards=2", "--bind=127.0.0.1", "--conn-buffer=64K", "--grace=15s"}));
  struct Client {
    Fd fd;
    std::string block;  // byte k of the stream is block[k % block.size()]
    std::uint64_t sent = 0;
    std::string received;
  };
  std::vector<Client> clients(kClients);
  for (int i = 0; i < kClients; ++i) {
    Client& c = clients[i];
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    ASSERT_TRUE(fd.ok()) << fd.status();
    c.fd = *std::move(fd);
    c.block = RandomBytes((1 << 20) + 4099 * i, 100 + i);  // sizes differ: crossed streams show
    const std::string first = c.block.substr(0, kFirst);
    absl::StatusOr<std::string> reply = RoundTrip(c.fd.get(), first);
    ASSERT_TRUE(reply.ok()) << reply.status();
    ASSERT_TRUE(*reply == Expected(first));
    c.sent = kFirst;
    c.received = *reply;
  }
  const absl::Time load_deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < load_deadline) {
    std::vector<pollfd> pfds;
    std::vector<int> who;
    for (int i = 0; i < kClients; ++i) {
      if (clients[i].sent < kMaxPerClient) {
        pfds.push_back({clients[i].fd.get(), POLLOUT, 0});
        who.push_back(i);
      }
    }
    if (pfds.empty()) break;
    const int ready =
        ::poll(pfds.data(), pfds.size(), static_cast<int>(absl::ToInt64Milliseconds(kStalled)));
    ASSERT_GE(ready, 0) << std::strerror(errno);
    if (ready == 0) break;  // every client is blocked by the server's backpressure
    for (std::size_t k = 0; k < pfds.size(); ++k) {
      if (pfds[k].revents == 0) continue;
      Client& c = clients[who[k]];
      const std::size_t at = c.sent % c.block.size();
      const std::size_t n = std::min<std::uint64_t>(c.block.size() - at, kMaxPerClient - c.sent);
      const ssize_t r = ::send(c.fd.get(), c.block.data() + at, n, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (r < 0 && errno == EAGAIN) continue;
      ASSERT_GT(r, 0) << "client " << who[k] << ": " << std::strerror(errno);
      c.sent += static_cast<std::uint64_t>(r);
    }
  }

  server_->process.Signal(SIGTERM);
  // Read every connection to EOF, all at once, so none waits behind another.
  std::vector<bool> eof(kClients, false);
  int open = kClients;
  const absl::Time deadline = absl::Now() + testing::kIoTimeout;
  while (open > 0) {
    ASSERT_LT(absl::Now(), deadline) << open << " connections not closed by the server";
    std::vector<pollfd> pfds;
    std::vector<int> who;
    for (int i = 0; i < kClients; ++i) {
      if (!eof[i]) {
        pfds.push_back({clients[i].fd.get(), POLLIN, 0});
        who.push_back(i);
      }
    }
    ASSERT_GE(::poll(pfds.data(), pfds.size(), 1000), 0) << std::strerror(errno);
    for (std::size_t k = 0; k < pfds.size(); ++k) {
      if (pfds[k].revents == 0) continue;
      Client& c = clients[who[k]];
      char buf[65536];
      const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0 && errno == EAGAIN) continue;
      ASSERT_GE(n, 0) << "client " << who[k] << " after " << c.received.size()
                      << " bytes: " << std::strerror(errno);
      if (n == 0) {
        eof[who[k]] = true;
        --open;
      }
      c.received.append(buf, static_cast<std::size_t>(n));
    }
  }

  nlohmann::json stats = Finish();
  std::uint64_t total_sent = 0;
  std::uint64_t total_received = 0;
  for (int i = 0; i < kClients; ++i) {
    const Client& c = clients[i];
    total_sent += c.sent;
    total_received += c.received.size();
    EXPECT_GE(c.received.size(), kFirst) << "client " << i;
    ASSERT_LE(c.received.size(), c.sent) << "client " << i;
    const std::string upper = Expected(c.block);
    for (std::size_t off = 0; off < c.received.size(); off += upper.size()) {
      const std::size_t n = std::min(upper.size(), c.received.size() - off);
      ASSERT_EQ(c.received.compare(off, n, upper, 0, n), 0)
          << "client " << i << ": reply differs from the uppercase of the request near byte "
          << off;
    }
  }
  EXPECT_EQ(stats["total"]["bytes_in"], stats["total"]["bytes_out"]) << stats.dump();
  EXPECT_EQ(stats["total"]["bytes_out"], total_received)
      << stats.dump() << "; clients sent " << total_sent;
}

GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ReactorFaultTest);
INSTANTIATE_TEST_SUITE_P(ReactorBackends, ReactorFaultTest, ::testing::ValuesIn(ReactorBackends()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace upcase
