// upcase-server's command line contract: the ready line, signals, and one clear stderr line with a
// non-zero exit for every kind of bad input.
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/backend.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using testing::BinaryPath;
using testing::StartServer;
using testing::Subprocess;

using testing::Outcome;

Outcome RunServer(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {BinaryPath("upcase-server")};
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::RunToExit(argv);
}

void ExpectOneLineError(const Outcome& o, const std::string& needle) {
  EXPECT_NE(o.exit_code, 0);
  EXPECT_NE(o.exit_code, -1) << "did not exit by itself";
  EXPECT_NE(o.stderr_text.find(needle), std::string::npos) << o.stderr_text;
  EXPECT_EQ(std::count(o.stderr_text.begin(), o.stderr_text.end(), '\n'), 1) << o.stderr_text;
  EXPECT_EQ(o.stdout_text, "");
}

TEST(ServerCliTest, HelpExitsZeroAndListsBackends) {
  Outcome o = RunServer({"--help"});
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_NE(o.stdout_text.find("usage: upcase-server"), std::string::npos);
  EXPECT_NE(o.stdout_text.find("iterative"), std::string::npos);
  EXPECT_NE(o.stdout_text.find("--conn-buffer"), std::string::npos);
}

TEST(ServerCliTest, BadInputGivesOneLineAndNonZeroExit) {
  ExpectOneLineError(RunServer({"70000"}), "invalid port '70000'");
  ExpectOneLineError(RunServer({"http"}), "invalid port 'http'");
  ExpectOneLineError(RunServer({}), "missing PORT");
  ExpectOneLineError(RunServer({"--backend=kqueue", "0"}), "--backend='kqueue'");
  ExpectOneLineError(RunServer({"--frobnicate", "0"}), "unknown flag '--frobnicate'");
  ExpectOneLineError(RunServer({"--bind=999.1.1.1", "0"}), "invalid address '999.1.1.1'");
  ExpectOneLineError(RunServer({"--shards=-1", "0"}), "--shards='-1'");
  const Outcome levers = RunServer({"--uring-levers=default,-bogus", "0"});
  ExpectOneLineError(levers, "unknown lever 'bogus'");
  EXPECT_EQ(levers.exit_code, 2);
  ExpectOneLineError(RunServer({"--uring-min-wait=1s", "0"}), "--uring-min-wait=1s: at most 10ms");
  ExpectOneLineError(RunServer({"--uring-min-wait=0", "0"}), "--uring-min-wait=0: at least 1us");
}

// Every size and duration flag is bounded at start with one line and exit status 2, instead of
// failing later inside a shard (--conn-buffer=1024G threw bad_alloc in the first connection).
TEST(ServerCliTest, SizeFlagsAreBoundedAtStart) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--conn-buffer=1024G"}, "--conn-buffer=1024G: at most 1G"},
      {{"--conn-buffer=2G"}, "--conn-buffer=2G: at most 1G"},
      {{"--conn-buffer=512"}, "--conn-buffer=512: at least 1K"},
      {{"--conn-buffer=lots"}, "--conn-buffer='lots': expected a byte count"},
      {{"--output-budget=2048G"}, "--output-budget=2048G: at most 1024G"},
      {{"--output-budget=1K"}, "--output-budget=1K: at least 64K"},
      {{"--output-budget=much"}, "--output-budget='much': expected a byte count"},
      {{"--max-conns=0"}, "--max-conns='0': expected an integer from 1 to 10000000"},
      {{"--max-conns=20000000"}, "--max-conns='20000000': expected an integer from 1 to 10000000"},
      {{"--max-conns-per-ip=-1"}, "--max-conns-per-ip='-1': expected auto or an integer"},
      {{"--max-conns-per-ip=20000000"}, "--max-conns-per-ip='20000000': expected auto"},
      {{"--per-ip-prefix=64"}, "--per-ip-prefix='64': expected V4,V6 prefix lengths"},
      {{"--per-ip-prefix=33,64"}, "--per-ip-prefix='33,64': expected V4,V6 prefix lengths"},
      {{"--per-ip-prefix=32,129"}, "--per-ip-prefix='32,129': expected V4,V6 prefix lengths"},
      {{"--shards=2000"}, "--shards='2000': expected an integer from 0 to 1024"},
      {{"--grace=inf"}, "--grace='inf': expected a duration"},  // common/flags: finite only
      {{"--grace=2h"}, "--grace=2h: at most 1h"},
      {{"--idle-timeout=25h"}, "--idle-timeout=25h: at most 24h"},
      {{"--idle-timeout=-1s"}, "--idle-timeout='-1s': expected a duration"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> args = flags;
    args.push_back("0");
    const Outcome o = RunServer(args);
    SCOPED_TRACE(flags[0]);
    ExpectOneLineError(o, message);
    EXPECT_EQ(o.exit_code, 2);
  }
}

// The edges of those bounds, and the values that switch a limit off, are accepted.
TEST(ServerCliTest, LimitsAtTheirBoundsStart) {
  for (const char* backend : {"threads", "epoll"}) {
    absl::StatusOr<testing::ServerProcess> server = StartServer(
        {absl::StrCat("--backend=", backend), "--bind=127.0.0.1", "--conn-buffer=1G",
         "--output-budget=0", "--max-conns-per-ip=0", "--idle-timeout=0", "--grace=1h"});
    ASSERT_TRUE(server.ok()) << server.status();
    absl::StatusOr<Fd> tcp = testing::ConnectTcp(server->tcp_port);
    ASSERT_TRUE(tcp.ok()) << tcp.status();
    EXPECT_EQ(testing::RoundTrip(tcp->get(), "bounded").value_or(""), "BOUNDED");
    tcp->reset();
    ASSERT_TRUE(server->Stop().ok());
  }
}

TEST(ServerCliTest, PortInUseIsReportedForEveryBackend) {
  absl::StatusOr<testing::ServerProcess> first = StartServer({"--backend=threads"});
  ASSERT_TRUE(first.ok()) << first.status();
  for (absl::string_view backend : {"iterative", "threads"}) {
    ExpectOneLineError(
        RunServer({absl::StrCat("--backend=", backend), absl::StrCat(first->tcp_port)}),
        "Address already in use");
  }
  ASSERT_TRUE(first->Stop().ok());
}

TEST(ServerCliTest, SigintAndSigtermExitZeroForEveryBackend) {
  for (const char* backend : {"iterative", "threads"}) {
    for (int sig : {SIGINT, SIGTERM}) {
      absl::StatusOr<testing::ServerProcess> server =
          StartServer({absl::StrCat("--backend=", backend)});
      ASSERT_TRUE(server.ok()) << server.status();
      server->process.Signal(sig);
      absl::StatusOr<int> status = server->process.Wait();
      ASSERT_TRUE(status.ok()) << backend << " ignored signal " << sig;
      EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
          << backend << " " << sig << " " << server->process.Stderr();
    }
  }
}

TEST(ServerCliTest, Ipv6BindServesBothProtocols) {
  absl::StatusOr<testing::ServerProcess> server = StartServer({"--backend=threads", "--bind=::1"});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_NE(server->ready_line.find("tcp=[::1]:"), std::string::npos) << server->ready_line;
  absl::StatusOr<Fd> tcp = testing::ConnectTcp(server->tcp_port, "::1");
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  EXPECT_EQ(testing::RoundTrip(tcp->get(), "over ipv6\n").value_or(""), "OVER IPV6\n");
  absl::StatusOr<Fd> udp = testing::ConnectUdp(server->udp_port, "::1");
  ASSERT_TRUE(udp.ok());
  ASSERT_EQ(::send(udp->get(), "v6 datagram", 11, 0), 11);
  char buf[64];
  ASSERT_EQ(::recv(udp->get(), buf, sizeof buf, 0), 11);
  EXPECT_EQ(std::string(buf, 11), "V6 DATAGRAM");
  ASSERT_TRUE(server->Stop().ok());
}

TEST(ServerCliTest, ProtoSelectsTheReadyFields) {
  absl::StatusOr<testing::ServerProcess> udp_only =
      StartServer({"--backend=iterative", "--proto=udp"});
  ASSERT_TRUE(udp_only.ok()) << udp_only.status();
  EXPECT_EQ(udp_only->ready_line.find("tcp="), std::string::npos) << udp_only->ready_line;
  EXPECT_NE(udp_only->udp_port, 0);
  ASSERT_TRUE(udp_only->Stop().ok());
}

TEST(ServerCliTest, StatsJsonCountsTheTraffic) {
  const std::string path = testing::StatsPathForCurrentTest("cli");
  absl::StatusOr<testing::ServerProcess> server =
      StartServer({"--backend=threads", absl::StrCat("--stats-json=", path)});
  ASSERT_TRUE(server.ok());
  {
    absl::StatusOr<Fd> tcp = testing::ConnectTcp(server->tcp_port);
    ASSERT_TRUE(tcp.ok());
    ASSERT_EQ(testing::RoundTrip(tcp->get(), "twelve bytes").value_or(""), "TWELVE BYTES");
  }
  server->process.Signal(SIGTERM);
  nlohmann::json stats = testing::FinishWithStats(*server, path);
  EXPECT_EQ(stats["backend"], "threads");
  EXPECT_EQ(stats["total"]["accepted"], 1);
  EXPECT_EQ(stats["total"]["bytes_in"], 12);
  EXPECT_EQ(stats["total"]["bytes_out"], 12);
  EXPECT_NE(server->process.Stderr().find("shard 0: accepted=1"), std::string::npos);
}

TEST(ClientCliTest, ServerNotThereIsAClearError) {
  // Find a port nobody listens on: bind one, note it, close it.
  absl::StatusOr<SocketAddress> any = ParseIpAddress("127.0.0.1", 0);
  absl::StatusOr<Fd> probe = ListenTcp(*any, {});
  ASSERT_TRUE(probe.ok());
  const std::uint16_t port = LocalAddress(probe->get())->port();
  probe->reset();
  for (const char* proto : {"tcp", "udp"}) {
    Subprocess client;
    ASSERT_TRUE(client
                    .Start({BinaryPath("upcase-client"), "--timeout=2s", proto, "127.0.0.1",
                            absl::StrCat(port)},
                           /*pipe_stdin=*/true)
                    .ok());
    // The TCP client may already have exited on "connection refused": EPIPE here is fine.
    (void)client.WriteStdin("hello\n");
    client.CloseStdin();
    absl::StatusOr<int> status = client.Wait();
    ASSERT_TRUE(status.ok()) << proto << " client hung";
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0);
    const std::string err = client.Stderr();
    EXPECT_TRUE(err.find("Connection refused") != std::string::npos ||
                err.find("no UDP server") != std::string::npos ||
                err.find("no reply") != std::string::npos)
        << proto << ": " << err;
  }
}

TEST(ClientCliTest, BindPortSetsTheLocalPort) {
  absl::StatusOr<testing::ServerProcess> server = StartServer({"--backend=threads"});
  ASSERT_TRUE(server.ok());
  // A free UDP port to bind the client to.
  absl::StatusOr<Fd> probe = BindUdp(*ParseIpAddress("0.0.0.0", 0), {});
  ASSERT_TRUE(probe.ok());
  const std::uint16_t port = LocalAddress(probe->get())->port();
  probe->reset();
  Subprocess client;
  ASSERT_TRUE(client
                  .Start({BinaryPath("upcase-client"), absl::StrCat("--bind-port=", port), "udp",
                          "localhost", absl::StrCat(server->udp_port)},
                         true)
                  .ok());
  ASSERT_TRUE(client.WriteStdin("abc\n").ok());
  client.CloseStdin();
  std::string out = client.ReadAll().value_or("");
  EXPECT_NE(out.find(absl::StrCat("Local address: 127.0.0.1:", port)), std::string::npos) << out;
  EXPECT_NE(out.find("Return text from the server: ABC"), std::string::npos) << out;
  ASSERT_TRUE(server->Stop().ok());
}

// ---- --pin and the default --shards follow the CPUs the process may use ----

// Cpus_allowed_list of every thread of `pid`, by thread id.
std::vector<std::string> ThreadCpuLists(pid_t pid) {
  std::vector<std::string> lists;
  const std::string dir = absl::StrCat("/proc/", pid, "/task");
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return lists;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream status(absl::StrCat(dir, "/", e->d_name, "/status"));
    std::string line;
    while (std::getline(status, line)) {
      absl::string_view rest = line;
      if (absl::ConsumePrefix(&rest, "Cpus_allowed_list:")) {
        lists.emplace_back(absl::StripAsciiWhitespace(rest));
      }
    }
  }
  ::closedir(d);
  return lists;
}

bool MayUseCpus(std::initializer_list<int> cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return false;
  for (int cpu : cpus) {
    if (!CPU_ISSET(cpu, &set)) return false;
  }
  return true;
}

// Waits, within `timeout`, until the threads of `pid` have exactly the CPU lists `expected`
// (shards pin themselves once running, which is after the ready line). Returns what it saw last.
std::set<std::string> WaitForCpuLists(pid_t pid, const std::set<std::string>& expected,
                                      absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::set<std::string> seen;
  while (absl::Now() < deadline) {
    const std::vector<std::string> lists = ThreadCpuLists(pid);
    seen = std::set<std::string>(lists.begin(), lists.end());
    if (seen == expected) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return seen;
}

class PinTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    absl::StatusOr<const BackendInfo*> info = FindBackend(GetParam());
    if (!info.ok()) GTEST_SKIP() << info.status();
    if (::access("/usr/bin/taskset", X_OK) != 0) GTEST_SKIP() << "taskset (util-linux) missing";
  }
};

// In a CPU set that excludes CPU 0 (here: taskset -c 1), --pin puts shard 0 on the set's first
// CPU, not on CPU 0, and the default shard count is the size of the set, not the online CPUs.
TEST_P(PinTest, PinAndDefaultShardsFollowTheAllowedCpus) {
  if (!MayUseCpus({1})) GTEST_SKIP() << "CPU 1 does not exist or may not be used here";
  absl::StatusOr<testing::ServerProcess> server =
      StartServer({absl::StrCat("--backend=", GetParam()), "--proto=tcp", "--pin"},
                  {"/usr/bin/taskset", "-c", "1"});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(server->shards, 1) << server->ready_line;
  absl::StatusOr<Fd> tcp = testing::ConnectTcp(server->tcp_port);
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  EXPECT_EQ(testing::RoundTrip(tcp->get(), "pinned").value_or(""), "PINNED");
  EXPECT_EQ(WaitForCpuLists(server->process.pid(), {"1"}, absl::Seconds(5)),
            std::set<std::string>{"1"});
  ASSERT_TRUE(server->Stop().ok());
}

// Without a restriction, two shards on CPUs 0 and 1 each run on their own CPU.
TEST_P(PinTest, ShardIRunsOnTheIthAllowedCpu) {
  if (!MayUseCpus({0, 1})) GTEST_SKIP() << "CPUs 0 and 1 are not both usable here";
  absl::StatusOr<testing::ServerProcess> server =
      StartServer({absl::StrCat("--backend=", GetParam()), "--proto=tcp", "--shards=2", "--pin"},
                  {"/usr/bin/taskset", "-c", "0,1"});
  ASSERT_TRUE(server.ok()) << server.status();
  // Main thread: both CPUs; shard 0 (the runner thread) on 0; shard 1 on 1.
  const std::set<std::string> expected = {"0-1", "0", "1"};
  EXPECT_EQ(WaitForCpuLists(server->process.pid(), expected, absl::Seconds(5)), expected);
  ASSERT_TRUE(server->Stop().ok());
}

INSTANTIATE_TEST_SUITE_P(ShardedBackends, PinTest, ::testing::Values("epoll", "uring"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace upcase
