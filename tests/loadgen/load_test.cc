// upcase-load end to end: the binary against a real upcase-server (threads backend) and against
// the misbehaving servers of fake_servers.h, over loopback on ephemeral ports. Every run is a
// second or two; assertions are about what was counted and scheduled, never about speed.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/sys.h"
#include "gtest/gtest.h"
#include "loadgen/histogram.h"
#include "nlohmann/json.hpp"
#include "tests/loadgen/fake_servers.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using load::Histogram;
using testing::BinaryPath;
using testing::FakeTcpOptions;
using testing::FakeTcpServer;
using testing::FakeUdpOptions;
using testing::FakeUdpServer;
using testing::StartServer;
using testing::Subprocess;

std::string TempPath(const std::string& suffix) {
  char path[] = "/tmp/upcase-load-test-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd >= 0) ::close(fd);
  ::unlink(path);
  return absl::StrCat(path, suffix);
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
}

struct LoadRun {
  int exit_code = -1;
  std::string out;
  std::string err;
  nlohmann::json json;  // discarded when no --json was written
};

// Starts upcase-load with `args` (flags, then HOST PORT or "merge FILE...") without waiting.
absl::Status Spawn(Subprocess& p, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {BinaryPath("upcase-load")};
  argv.insert(argv.end(), args.begin(), args.end());
  return p.Start(argv);
}

LoadRun Collect(Subprocess& p, const std::string& json_path) {
  LoadRun run;
  run.out = p.ReadAll().value_or("<stdout not closed>");
  absl::StatusOr<int> status = p.Wait();
  if (status.ok() && WIFEXITED(*status)) run.exit_code = WEXITSTATUS(*status);
  run.err = p.Stderr();
  if (!json_path.empty()) {
    run.json = ReadJson(json_path);
    ::unlink(json_path.c_str());
  }
  return run;
}

// Runs upcase-load against 127.0.0.1:port with `flags` (plus --quiet and a --json file).
LoadRun RunLoad(std::uint16_t port, std::vector<std::string> flags) {
  const std::string json_path = TempPath(".json");
  flags.push_back("--quiet");
  flags.push_back(absl::StrCat("--json=", json_path));
  flags.push_back("127.0.0.1");
  flags.push_back(absl::StrCat(port));
  Subprocess p;
  if (absl::Status s = Spawn(p, flags); !s.ok()) {
    LoadRun failed;
    failed.err = std::string(s.message());
    return failed;
  }
  return Collect(p, json_path);
}

std::string Describe(const LoadRun& r) {
  return absl::StrCat("exit ", r.exit_code, "\nstdout:\n", r.out, "stderr:\n", r.err);
}

double Us(const nlohmann::json& j, const char* spectrum, const char* key) {
  return j.at(spectrum).at(key).get<double>();
}

Histogram HistogramOf(const nlohmann::json& j, const char* name) {
  const nlohmann::json& h = j.at("histograms").at(name);
  absl::StatusOr<Histogram> decoded = Histogram::DecodeBase64(h.at("hdr").get<std::string>());
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  if (!decoded.ok()) return Histogram();
  EXPECT_TRUE(decoded
                  ->SetExactStats(h.at("min").get<std::int64_t>(), h.at("max").get<std::int64_t>(),
                                  h.at("sum").get<std::uint64_t>())
                  .ok());
  return *decoded;
}

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<testing::ServerProcess> server = StartServer({"--backend=threads"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_.emplace(*std::move(server));
  }
  void TearDown() override {
    if (server_.has_value()) {
      EXPECT_TRUE(server_->Stop().ok());
    }
  }
  std::uint16_t tcp_port() const { return server_->tcp_port; }
  std::uint16_t udp_port() const { return server_->udp_port; }

  std::optional<testing::ServerProcess> server_;
};

TEST_F(LoadTest, ClosedLoopJsonHasEveryDocumentedKey) {
  LoadRun r = RunLoad(tcp_port(), {"--connections=4", "--duration=1s", "--warmup=200ms",
                                   "--pipeline=4", "--size=16:200"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& j = r.json;
  ASSERT_FALSE(j.is_discarded());
  for (const char* key : {"config", "requests", "throughput_rps", "bytes_per_s", "latency_us",
                          "latency_uncorrected_us", "errors", "mismatches", "udp", "client_cpu_s",
                          "duration_s", "requested_rps", "connections", "histograms"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  for (const char* spectrum : {"latency_us", "latency_uncorrected_us"}) {
    for (const char* key : {"p50", "p90", "p99", "p999", "p9999", "max", "mean"}) {
      EXPECT_TRUE(j[spectrum].contains(key)) << spectrum << "." << key;
    }
  }
  for (const char* key : {"sent", "received", "lost", "reordered", "duplicated"}) {
    EXPECT_TRUE(j["udp"].contains(key)) << key;
  }
  EXPECT_GT(j["requests"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(j["mismatches"], 0);
  EXPECT_EQ(j["errors_total"], 0);
  EXPECT_EQ(j["histograms"]["latency"]["count"], j["requests"]);
  EXPECT_GT(j["client_cpu_s"].get<double>(), 0);
  EXPECT_NEAR(j["throughput_rps"].get<double>(), j["requests"].get<double>() / 1.0, 1e-6);
  // Closed loop has no schedule to fall behind: both figures are the same measurement.
  EXPECT_EQ(j["latency_us"], j["latency_uncorrected_us"]);
  EXPECT_EQ(Us(j, "send_lag_us", "max"), 0);
  EXPECT_TRUE(absl::StrContains(r.out, "p99.99")) << r.out;
}

TEST_F(LoadTest, OpenLoopAchievesTheRequestedRateWithinOnePercent) {
  LoadRun r =
      RunLoad(tcp_port(), {"--rate=2000", "--connections=4", "--duration=2s", "--warmup=200ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& j = r.json;
  EXPECT_NEAR(j["throughput_rps"].get<double>(), 2000, 20) << Describe(r);
  // The schedule itself is exact: 2 s at 2000/s is 4000 requests due, all of them sent.
  EXPECT_NEAR(j["scheduled"].get<double>(), 4000, 1);
  EXPECT_EQ(j["sent"], j["scheduled"]);
  EXPECT_EQ(j["kept_up"], true);
  EXPECT_EQ(j["errors_total"], 0);
  EXPECT_TRUE(absl::StrContains(r.out, "requested 2000.0 req/s")) << r.out;
}

TEST_F(LoadTest, PoissonArrivalsAverageTheRequestedRate) {
  // 10,000 Poisson arrivals: one standard deviation is 1 %, so allow 5 %.
  LoadRun r = RunLoad(tcp_port(), {"--rate=5000", "--arrival=poisson", "--connections=8",
                                   "--threads=2", "--duration=2s", "--warmup=100ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NEAR(r.json["throughput_rps"].get<double>(), 5000, 250) << Describe(r);
  EXPECT_EQ(r.json["mismatches"], 0);
}

TEST_F(LoadTest, UdpAgainstTheRealServerLosesNothing) {
  LoadRun r = RunLoad(udp_port(), {"--proto=udp", "--connections=4", "--pipeline=4",
                                   "--duration=1s", "--warmup=100ms", "--size=8:512"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& udp = r.json["udp"];
  EXPECT_GT(udp["received"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(udp["duplicated"], 0);
  EXPECT_EQ(udp["sent"].get<std::uint64_t>(), udp["received"].get<std::uint64_t>() +
                                                  udp["lost"].get<std::uint64_t>() +
                                                  r.json["unfinished"].get<std::uint64_t>());
}

TEST_F(LoadTest, ReconnectOpensAConnectionPerRequest) {
  LoadRun r =
      RunLoad(tcp_port(), {"--reconnect", "--connections=2", "--duration=1s", "--warmup=100ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_GT(r.json["requests"].get<std::uint64_t>(), 10u);
  EXPECT_EQ(r.json["errors"]["connect"], 0);
  EXPECT_EQ(r.json["mismatches"], 0);
  EXPECT_TRUE(absl::StrContains(r.out, "a connection per request")) << r.out;
}

TEST_F(LoadTest, StartAtSynchronisesTwoInstancesAndMergeCombinesThem) {
  // Far enough ahead for both processes to start and connect on a busy machine.
  const double start_at = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()) + 3;
  const std::string a = TempPath(".json"), b = TempPath(".json"), merged = TempPath(".json");
  Subprocess pa, pb;
  for (auto [p, path] : {std::pair{&pa, a}, std::pair{&pb, b}}) {
    ASSERT_TRUE(Spawn(*p, {absl::StrCat("--start-at=", absl::StrFormat("%.3f", start_at)),
                           "--connections=2", "--duration=1s", "--warmup=100ms", "--quiet",
                           absl::StrCat("--json=", path), "127.0.0.1", absl::StrCat(tcp_port())})
                    .ok());
  }
  LoadRun ra = Collect(pa, a), rb = Collect(pb, b);
  ASSERT_EQ(ra.exit_code, 0) << Describe(ra);
  ASSERT_EQ(rb.exit_code, 0) << Describe(rb);
  // start_unix_s is the measurement start: --start-at plus the warmup.
  for (const LoadRun* r : {&ra, &rb}) {
    EXPECT_GE(r->json["start_unix_s"].get<double>(), start_at + 0.1 - 0.001);
    EXPECT_LT(r->json["start_unix_s"].get<double>(), start_at + 0.1 + 0.25);
  }
  EXPECT_NEAR(ra.json["start_unix_s"].get<double>(), rb.json["start_unix_s"].get<double>(), 0.25);

  // The merge reads the two files back, so write them again (Collect removed them).
  for (auto [r, path] : {std::pair{&ra, a}, std::pair{&rb, b}}) {
    std::ofstream(path) << r->json.dump();
  }
  Subprocess pm;
  ASSERT_TRUE(Spawn(pm, {"merge", absl::StrCat("--json=", merged), a, b}).ok());
  LoadRun m = Collect(pm, merged);
  ::unlink(a.c_str());
  ::unlink(b.c_str());
  ASSERT_EQ(m.exit_code, 0) << Describe(m);
  EXPECT_EQ(m.json["instances"], 2);
  EXPECT_EQ(m.json["requests"].get<std::uint64_t>(),
            ra.json["requests"].get<std::uint64_t>() + rb.json["requests"].get<std::uint64_t>());
  EXPECT_NEAR(m.json["throughput_rps"].get<double>(),
              ra.json["throughput_rps"].get<double>() + rb.json["throughput_rps"].get<double>(),
              1e-6);
  Histogram expected = HistogramOf(ra.json, "latency");
  expected.Add(HistogramOf(rb.json, "latency"));
  EXPECT_TRUE(HistogramOf(m.json, "latency") == expected);
  EXPECT_TRUE(absl::StrContains(m.out, "merged       2 runs")) << m.out;
}

TEST_F(LoadTest, CtrlCEndsTheWindowAndStillReports) {
  const std::string json = TempPath(".json");
  Subprocess p;
  ASSERT_TRUE(Spawn(p, {"--duration=60s", "--warmup=0s", "--interval=100ms", "--connections=2",
                        absl::StrCat("--json=", json), "127.0.0.1", absl::StrCat(tcp_port())})
                  .ok());
  // The first progress line says the window is running (polling a condition, not a fixed sleep).
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!absl::StrContains(p.Stderr(), "upcase-load: [") && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(absl::StrContains(p.Stderr(), "upcase-load: [")) << p.Stderr();
  p.Signal(SIGINT);
  LoadRun r = Collect(p, json);
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.json["stopped_early"], true);
  EXPECT_LT(r.json["duration_s"].get<double>(), 30);
  EXPECT_GT(r.json["requests"].get<std::uint64_t>(), 0u);
  EXPECT_NEAR(r.json["throughput_rps"].get<double>(),
              r.json["requests"].get<double>() / r.json["duration_s"].get<double>(), 1e-6);
  EXPECT_TRUE(absl::StrContains(r.out, "stopped early")) << r.out;
}

TEST(LoadFaultTest, CoordinatedOmissionIsCorrected) {
  // 2000 requests/s on one connection with one request in flight (wrk2's model), and a server
  // that stops for 300 ms about a second into the window. The ~600 requests due during the stall
  // wait in the client: their corrected latency spans 0..300 ms, their uncorrected latency is one
  // round trip, except for the single request that was in flight when the server stopped.
  FakeTcpOptions options;
  options.stall_at_byte = 64 * (200 + 2000);  // 0.1 s warmup + ~1 s at 2000/s, 64-byte requests
  options.stall = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--rate=2000", "--connections=1", "--pipeline=1",
                                          "--duration=2s", "--warmup=100ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& j = r.json;
  EXPECT_GE(Us(j, "latency_us", "p999"), 200'000) << Describe(r);
  EXPECT_GE(Us(j, "latency_us", "p99"), 150'000) << Describe(r);
  EXPECT_LT(Us(j, "latency_uncorrected_us", "p999"), 100'000) << Describe(r);
  EXPECT_GE(Us(j, "latency_uncorrected_us", "max"), 250'000) << Describe(r);
  // The difference is time spent waiting in the client, which the send lag shows directly.
  EXPECT_GE(Us(j, "send_lag_us", "p999"), 200'000) << Describe(r);
  // Requests waited in the client, but none was skipped: the schedule's count is intact.
  EXPECT_NEAR(j["scheduled"].get<double>(), 4000, 1);
}

TEST(LoadFaultTest, AServerThatCannotKeepUpIsReportedPlainly) {
  // The server stops half a second into the window and stays stopped past its end.
  FakeTcpOptions options;
  options.stall_at_byte = 64 * (100 + 500);
  options.stall = absl::Seconds(4);
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--rate=1000", "--connections=2", "--duration=2s",
                                          "--warmup=100ms", "--timeout=200ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.json["kept_up"], false);
  EXPECT_LT(r.json["achieved_ratio"].get<double>(), 0.5);
  EXPECT_GT(r.json["unfinished"].get<std::uint64_t>(), 1000u);
  EXPECT_TRUE(absl::StrContains(r.out, "THE SERVER DID NOT KEEP UP")) << r.out;
  EXPECT_FALSE(absl::StrContains(r.out, "UPCASE-LOAD WAS")) << r.out;  // it waited, idle
}

// The drain: every request intended inside the window is accounted for, whenever its reply comes.
TEST(LoadDrainTest, AStallStraddlingTheWindowEndIsMeasuredNotDropped) {
  // 1000 requests/s on one connection, 100 ms of warmup and a 1 s window: request i is intended
  // i ms after the start. The server stops for 600 ms at request 800, 300 ms before the window
  // ends, so the requests of the window's last 300 ms are answered during the drain. They used to
  // be dropped, and the stall with them (max = a normal round trip).
  constexpr std::int64_t kStallUs = 600'000;
  FakeTcpOptions options;
  options.stall_at_byte = 64 * 800;
  options.stall = absl::Microseconds(kStallUs);
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(),
                      {"--rate=1000", "--connections=1", "--duration=1s", "--warmup=100ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& j = r.json;
  EXPECT_GE(Us(j, "latency_us", "max"), kStallUs) << Describe(r);
  EXPECT_GE(Us(j, "latency_uncorrected_us", "max"), kStallUs) << Describe(r);
  // About 300 replies came during the drain (more when the server read several requests at once).
  const auto requests = j["requests"].get<std::uint64_t>();
  const auto drained = j["drain_replies"].get<std::uint64_t>();
  EXPECT_GE(drained, 250u) << Describe(r);
  EXPECT_EQ(j["unanswered"], 0) << Describe(r);
  EXPECT_EQ(j["scheduled"], 1000);
  EXPECT_EQ(requests + drained, 1000u) << Describe(r);
  EXPECT_EQ(j["histograms"]["latency"]["count"], 1000);
  // The rate counts replies inside the window only: the server answered ~70 % of the rate there.
  EXPECT_NEAR(j["throughput_rps"].get<double>(), static_cast<double>(requests), 1e-6);
  EXPECT_EQ(j["kept_up"], false);
  EXPECT_TRUE(absl::StrContains(r.out, "came after the window")) << r.out;
}

TEST(LoadDrainTest, RequestsNeverAnsweredAreCountedWithTheirAgeAsALowerBound) {
  // Exactly 100 warmup and 1000 window requests (1000/s on one connection), of which the server
  // never answers the last 40.
  constexpr int kUnanswered = 40;
  FakeTcpOptions options;
  options.answer_bytes_per_connection = 64 * (1100 - kUnanswered);
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--rate=1000", "--connections=1", "--duration=1s",
                                          "--warmup=100ms", "--drain=300ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& j = r.json;
  EXPECT_EQ(j["unanswered"], kUnanswered) << Describe(r);
  EXPECT_EQ(j["unfinished"], kUnanswered);  // all of them were sent ...
  EXPECT_EQ(j["unsent"], 0);                // ... none was left in the client
  EXPECT_EQ(j["requests"].get<std::uint64_t>() + j["drain_replies"].get<std::uint64_t>(),
            1000u - kUnanswered);
  // Their age when the 300 ms drain ended is in the corrected histogram (their uncorrected
  // latency is unknown), and is at least the drain: the report calls it a lower bound.
  EXPECT_EQ(j["histograms"]["latency"]["count"], 1000);
  EXPECT_EQ(j["histograms"]["latency_uncorrected"]["count"], 1000 - kUnanswered);
  EXPECT_GE(j["unanswered_min_age_us"].get<double>(), 300'000) << Describe(r);
  // The oldest was intended 39 ms before the youngest.
  EXPECT_GE(Us(j, "latency_us", "max"), 300'000 + 39'000) << Describe(r);
  EXPECT_TRUE(absl::StrContains(r.out, "unanswered   40 requests")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "lower bounds")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, ">=")) << r.out;
}

// Requests lost with their connection are accounted for: sent = answered + drained +
// unfinished + failed, and in open loop their ages are in the corrected tail as lower bounds.
// They used to be counted only as `aborted` errors, so a reset took the slowest requests out of
// the tail.
TEST(LoadDrainTest, RequestsLostWithAResetConnectionStayInTheTail) {
  // 1000 requests/s on one connection, 100 ms of warmup and a 1 s window. The server answers the
  // first 600 requests (100 of warmup, 500 of the window), then nothing, and resets the
  // connection 200 ms later: about 200 window requests are in flight then, the oldest 200 ms old.
  // upcase-load reconnects 10 ms later and the rest are answered.
  constexpr std::int64_t kSilenceUs = 200'000;
  FakeTcpOptions options;
  options.reset_first_at_byte = 64 * 600;
  options.reset_after = absl::Microseconds(kSilenceUs);
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(),
                      {"--rate=1000", "--connections=1", "--duration=1s", "--warmup=100ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& j = r.json;
  ASSERT_TRUE(j.contains("failed")) << Describe(r);
  const auto failed = j["failed"].get<std::uint64_t>();
  EXPECT_GE(failed, 150u) << Describe(r);
  EXPECT_LE(failed, 300u) << Describe(r);
  EXPECT_EQ(j["errors"]["aborted"], failed);  // every request aborted was of the window
  const auto requests = j["requests"].get<std::uint64_t>();
  const auto drained = j["drain_replies"].get<std::uint64_t>();
  EXPECT_EQ(j["sent"].get<std::uint64_t>(),
            requests + drained + j["unfinished"].get<std::uint64_t>() + failed)
      << Describe(r);
  EXPECT_EQ(j["scheduled"], 1000);
  EXPECT_EQ(j["scheduled"].get<std::uint64_t>(),
            requests + drained + j["unanswered"].get<std::uint64_t>() + failed)
      << Describe(r);
  // Every window request is in the corrected histogram; the failed ones not in the uncorrected.
  EXPECT_EQ(j["histograms"]["latency"]["count"], 1000) << Describe(r);
  EXPECT_EQ(j["histograms"]["latency_uncorrected"]["count"].get<std::uint64_t>(),
            1000 - failed - j["unanswered"].get<std::uint64_t>());
  // The tail: the oldest failed request had waited the whole silence, and about a fifth of the
  // window's requests at most 200 ms, so the top tenth is at least ~100 ms. Without them, the
  // slowest request is one that waited for the reconnect, about 10 ms.
  EXPECT_GE(Us(j, "latency_us", "max"), 0.95 * kSilenceUs) << Describe(r);
  EXPECT_GE(Us(j, "latency_us", "p90"), 0.3 * kSilenceUs) << Describe(r);
  EXPECT_LT(Us(j, "latency_uncorrected_us", "max"), 0.95 * kSilenceUs) << Describe(r);
  ASSERT_FALSE(j["failed_min_age_us"].is_null()) << Describe(r);
  EXPECT_LE(j["failed_min_age_us"].get<double>(), Us(j, "latency_us", "max"));
  EXPECT_TRUE(absl::StrContains(r.out, absl::StrCat("failed       ", failed, " requests")))
      << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "lower bounds")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, ">=")) << r.out;
}

TEST(LoadDrainTest, ClosedLoopCountsFailedAndDrainedRequestsToo) {
  // Closed loop, 4 requests in flight: the server answers 2000, goes silent and resets 100 ms
  // later. The 4 in flight fail; latency is of completed requests only, but the count adds up.
  FakeTcpOptions options;
  options.reset_first_at_byte = 64 * 2000;
  options.reset_after = absl::Milliseconds(100);
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(),
                      {"--connections=1", "--pipeline=4", "--duration=1s", "--warmup=0s"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& j = r.json;
  EXPECT_EQ(j["failed"], 4) << Describe(r);
  EXPECT_EQ(j["sent"].get<std::uint64_t>(),
            j["requests"].get<std::uint64_t>() + j["drain_replies"].get<std::uint64_t>() +
                j["unfinished"].get<std::uint64_t>() + j["failed"].get<std::uint64_t>())
      << Describe(r);
  EXPECT_EQ(j["histograms"]["latency"]["count"], j["requests"]) << Describe(r);
  EXPECT_TRUE(j["failed_min_age_us"].is_null()) << Describe(r);  // closed loop records no ages
}

TEST(LoadDrainTest, UdpRequestsPastTheTimeoutAreLostTheOthersUnanswered) {
  // As above over UDP (the first datagram is upcase-load's probe). A request with no reply within
  // --timeout is lost, not unanswered; one still inside it when the drain ends is unanswered.
  constexpr int kUnanswered = 40;
  for (const auto& [timeout, drain, lost] : std::vector<std::tuple<std::string, std::string, int>>{
           {"--timeout=100ms", "--drain=400ms", kUnanswered},
           {"--timeout=5s", "--drain=300ms", 0}}) {
    FakeUdpOptions options;
    options.answer_first = 1 + 1100 - kUnanswered;
    absl::StatusOr<std::unique_ptr<FakeUdpServer>> server = FakeUdpServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    LoadRun r = RunLoad((*server)->port(), {"--proto=udp", "--rate=1000", "--connections=1",
                                            "--duration=1s", "--warmup=100ms", timeout, drain});
    ASSERT_EQ(r.exit_code, 0) << Describe(r);
    const nlohmann::json& j = r.json;
    const nlohmann::json& udp = j["udp"];
    EXPECT_EQ(udp["lost"], lost) << timeout << " " << Describe(r);
    EXPECT_EQ(j["unanswered"], kUnanswered - lost) << timeout << " " << Describe(r);
    EXPECT_EQ(udp["sent"].get<std::uint64_t>(), udp["received"].get<std::uint64_t>() +
                                                    udp["lost"].get<std::uint64_t>() +
                                                    j["unfinished"].get<std::uint64_t>());
    // Lost requests are counted, not recorded; unanswered ones are recorded as lower bounds.
    EXPECT_EQ(j["histograms"]["latency"]["count"], 1000 - lost) << timeout;
  }
}

TEST(LoadFaultTest, VerificationCatchesOneCorruptByte) {
  FakeTcpOptions options;
  options.corrupt_at_byte = 10'000;
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--connections=2", "--duration=1s", "--warmup=0s"});
  EXPECT_EQ(r.exit_code, 3) << Describe(r);
  EXPECT_EQ(r.json["mismatches"], 1) << Describe(r);
  EXPECT_TRUE(absl::StrContains(r.err, "differed from uppercase(request)")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "VERIFICATION FAILED")) << r.out;
}

TEST(LoadFaultTest, NoVerifyDoesNotCompare) {
  FakeTcpOptions options;
  options.corrupt_at_byte = 10'000;
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--no-verify", "--duration=500ms", "--warmup=0s"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.json["mismatches"], 0);
}

TEST(LoadFaultTest, ShortReadsAndWritesLoseAndMisattributeNothing) {
  // Replies cut into 1..7-byte sends and requests read 100 bytes at a time: no recv ever lines up
  // with a request, and every byte must still be matched to the right one.
  FakeTcpOptions options;
  options.max_write = 7;
  options.read_chunk = 100;
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--connections=2", "--pipeline=8", "--size=1:3000",
                                          "--duration=1s", "--warmup=0s"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_GT(r.json["requests"].get<std::uint64_t>(), 8u);
  EXPECT_EQ(r.json["mismatches"], 0);
  EXPECT_EQ(r.json["errors_total"], 0);
}

TEST(LoadFaultTest, PartialWritesOfLargeRequestsAreResumed) {
  // Requests of hundreds of KB against a server reading 4 KB at a time fill the socket buffers,
  // so the client's sendmsg returns short and must resume mid-request.
  FakeTcpOptions options;
  options.read_chunk = 4096;
  absl::StatusOr<std::unique_ptr<FakeTcpServer>> server = FakeTcpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--connections=2", "--pipeline=4", "--size=200000:400000",
                                          "--duration=1s", "--warmup=0s"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_GT(r.json["requests"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(r.json["mismatches"], 0);
  EXPECT_EQ(r.json["errors_total"], 0);
}

TEST(LoadFaultTest, UdpLossIsCountedAgainstAServerDroppingEveryTenthDatagram) {
  FakeUdpOptions options;
  options.drop_every = 10;
  absl::StatusOr<std::unique_ptr<FakeUdpServer>> server = FakeUdpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--proto=udp", "--connections=4", "--pipeline=8",
                                          "--timeout=100ms", "--duration=1s", "--warmup=0s"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& udp = r.json["udp"];
  const double sent = udp["sent"].get<double>();
  ASSERT_GT(sent, 100);
  EXPECT_NEAR(udp["lost"].get<double>() / sent, 0.10, 0.02) << udp.dump();
  EXPECT_EQ(udp["sent"].get<std::uint64_t>(), udp["received"].get<std::uint64_t>() +
                                                  udp["lost"].get<std::uint64_t>() +
                                                  r.json["unfinished"].get<std::uint64_t>());
  EXPECT_EQ(udp["duplicated"], 0);
  EXPECT_EQ(r.json["mismatches"], 0);
  EXPECT_TRUE(absl::StrContains(r.out, "lost")) << r.out;
}

TEST(LoadFaultTest, UdpDuplicatesAreCountedNotVerifiedTwice) {
  FakeUdpOptions options;
  options.duplicate_every = 5;
  absl::StatusOr<std::unique_ptr<FakeUdpServer>> server = FakeUdpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--proto=udp", "--connections=2", "--pipeline=4",
                                          "--duration=1s", "--warmup=0s"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& udp = r.json["udp"];
  EXPECT_NEAR(udp["duplicated"].get<double>() / udp["received"].get<double>(), 0.2, 0.03)
      << udp.dump();
  EXPECT_EQ(udp["lost"], 0);
  EXPECT_EQ(r.json["mismatches"], 0);
}

TEST(LoadFaultTest, UdpReorderingIsCounted) {
  FakeUdpOptions options;
  options.swap_pairs = true;
  absl::StatusOr<std::unique_ptr<FakeUdpServer>> server = FakeUdpServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  LoadRun r = RunLoad((*server)->port(), {"--proto=udp", "--connections=1", "--pipeline=4",
                                          "--duration=1s", "--warmup=0s", "--timeout=200ms"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json& udp = r.json["udp"];
  // Every second reply overtakes the one before it.
  EXPECT_NEAR(udp["reordered"].get<double>() / udp["received"].get<double>(), 0.5, 0.05)
      << udp.dump();
  EXPECT_EQ(r.json["mismatches"], 0);
}

TEST(LoadCliTest, ConnectionRefusedIsOneClearLine) {
  absl::StatusOr<std::uint16_t> port = testing::UnusedPort();
  ASSERT_TRUE(port.ok()) << port.status();
  for (const char* proto : {"--proto=tcp", "--proto=udp"}) {
    LoadRun r = RunLoad(*port, {proto, "--duration=1s", "--timeout=300ms"});
    EXPECT_EQ(r.exit_code, 1) << Describe(r);
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "Connection refused") ||
                absl::StrContains(r.err, "port unreachable"))
        << r.err;
    EXPECT_EQ(r.out, "");
  }
}

TEST(LoadCliTest, DurationFlagsRejectNonFiniteAndAbsurdValues) {
  // --interval=1ns used to publish millions of intervals; inf and 1e300 overflowed the clock.
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--interval=1ns"},
           {"--interval=5ms"},
           {"--duration=inf"},
           {"--duration=1e300"},
           {"--warmup=-1s"},
           {"--timeout=nan"},
           {"--drain=inf"},
           {"--drain=-1"},
           {"--rate=100", "--spin=1s"},
           {"--rate=100", "--spin=sometimes"},
           {"--spin=auto"},  // closed loop has no send times to spin for
       }) {
    std::vector<std::string> argv = args;
    argv.insert(argv.end(), {"127.0.0.1", "1"});
    Subprocess p;
    ASSERT_TRUE(Spawn(p, argv).ok());
    LoadRun r = Collect(p, "");
    EXPECT_EQ(r.exit_code, 2) << args.back() << ": " << Describe(r);
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    const std::string flag = args.back().substr(0, args.back().find('='));
    EXPECT_TRUE(absl::StrContains(r.err, flag)) << r.err;
  }
}

TEST(LoadCliTest, CpusOutsideTheAllowedSetIsOneClearLine) {
  // As in a container limited to some CPUs: taskset allows CPU 1 only, and --cpus=0 asks for 0.
  absl::StatusOr<std::vector<int>> allowed = AllowedCpus();
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  if (std::find(allowed->begin(), allowed->end(), 1) == allowed->end()) {
    GTEST_SKIP() << "CPU 1 does not exist here (or this test may not use it)";
  }
  Subprocess p;
  ASSERT_TRUE(
      p.Start({"taskset", "-c", "1", BinaryPath("upcase-load"), "--cpus=0", "127.0.0.1", "1"})
          .ok());
  LoadRun r = Collect(p, "");
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err,
                                "--cpus=0: CPU 0 is not one this process may use "
                                "(allowed: 1)"))
      << r.err;
}

TEST(LoadCliTest, BadCommandLinesExitTwoWithOneLine) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--size=0", "127.0.0.1", "1"},
           {"--proto=sctp", "127.0.0.1", "1"},
           {"--proto=udp", "--size=4", "127.0.0.1", "1"},
           {"--proto=udp", "--reconnect", "127.0.0.1", "1"},
           {"127.0.0.1"},
           {"--rate=-1", "127.0.0.1", "1"},
           // 2^30 request slots would be allocated at start: refused, not an abort.
           {"--pipeline=1048576", "--connections=1024", "127.0.0.1", "1"},
       }) {
    Subprocess p;
    ASSERT_TRUE(Spawn(p, args).ok());
    LoadRun r = Collect(p, "");
    EXPECT_EQ(r.exit_code, 2) << Describe(r);
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  Subprocess help;
  ASSERT_TRUE(Spawn(help, {"--help"}).ok());
  LoadRun h = Collect(help, "");
  EXPECT_EQ(h.exit_code, 0);
  for (const char* flag : {"--proto",     "--connections", "--threads",  "--cpus",    "--duration",
                           "--warmup",    "--size",        "--pipeline", "--rate",    "--arrival",
                           "--reconnect", "--verify",      "--json",     "--hdr-log", "--interval",
                           "--quiet",     "--start-at",    "--drain",    "--spin",    "merge"}) {
    EXPECT_TRUE(absl::StrContains(h.out, flag)) << flag;
  }
}

}  // namespace
}  // namespace upcase
