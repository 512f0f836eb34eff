// End to end: upcase-load at a modest open-loop rate against a real upcase-server, once with a CPU
// hog (a busy loop pinned to the load's CPU for part of the window) and once without. With the
// hog the result shows foreign CPU on that CPU, hiccups past a scheduler slice and the HOST NOISE
// verdict; without it, much less foreign CPU and hiccups. The machine's own noise (a hypervisor
// stealing a few % in millisecond slices, other processes) is allowed for: the quiet run is
// compared with the hog run, with margins, never against zero.
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/sys.h"
#include "gtest/gtest.h"
#include "loadgen/host.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using testing::BinaryPath;
using testing::RunToExit;
using testing::StartServer;

constexpr absl::Duration kWarmup = absl::Milliseconds(500);
constexpr absl::Duration kWindow = absl::Seconds(3);
// The hog spins from 1 s to 2.5 s after upcase-load starts: inside the window (which begins
// after the probe and the warmup, ~0.55 s) for half of it.
constexpr double kHogFrom = 1.0;
constexpr double kHogUntil = 2.5;
// A wakeup on a CPU the hog holds waits for the scheduler to preempt it: at least this long at
// worst, over 1.5 s of hog (EEVDF's base slice is 3 ms; a wakeup preempts earlier).
constexpr double kHogSliceUs = 1000;

// A child process that sleeps until `from`, then spins on `cpu` until `until` (CLOCK_MONOTONIC
// seconds) and exits: bounded in time whatever the parent does.
pid_t StartHog(int cpu, double from, double until) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) ::_exit(1);
  timespec ts{static_cast<time_t>(from),
              static_cast<long>((from - static_cast<time_t>(from)) * 1e9)};
  while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) != 0) {
  }
  volatile std::uint64_t spins = 0;
  while (static_cast<double>(MonotonicNanos()) / 1e9 < until) spins = spins + 1;
  ::_exit(0);
}

struct LoadResult {
  nlohmann::json result;
  std::string table;
};

LoadResult LoadRun(const testing::ServerProcess& server, int server_cpu, int load_cpu, bool hog) {
  const std::string json_path = ::testing::TempDir() + "host-noise-" + std::to_string(::getpid()) +
                                (hog ? "-hog" : "-quiet") + ".json";
  const double now = static_cast<double>(MonotonicNanos()) / 1e9;
  const pid_t hog_pid = hog ? StartHog(load_cpu, now + kHogFrom, now + kHogUntil) : -1;
  const testing::Outcome out =
      RunToExit({"taskset", "-c", std::to_string(load_cpu), BinaryPath("upcase-load"),
                 absl::StrCat("--cpus=", load_cpu), "--rate=1000", "--connections=4", "--hiccups",
                 absl::StrCat("--warmup=", absl::FormatDuration(kWarmup)),
                 absl::StrCat("--duration=", absl::FormatDuration(kWindow)), "--interval=500ms",
                 absl::StrCat("--server-pid=", server.process.pid()),
                 absl::StrCat("--server-cpus=", server_cpu), "--json=" + json_path, "127.0.0.1",
                 std::to_string(server.tcp_port)},
                absl::Seconds(30));
  if (hog_pid > 0) {
    int status = 0;
    EXPECT_EQ(::waitpid(hog_pid, &status, 0), hog_pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the hog failed";
  }
  EXPECT_EQ(out.exit_code, 0) << out.stderr_text;
  LoadResult run;
  run.table = out.stdout_text;
  std::ifstream in(json_path);
  std::stringstream text;
  text << in.rdbuf();
  std::remove(json_path.c_str());
  run.result = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  return run;
}

const nlohmann::json* CpuEntry(const nlohmann::json& result, int cpu) {
  for (const nlohmann::json& c : result["host"]["cpus"]) {
    if (c["cpu"] == cpu) return &c;
  }
  return nullptr;
}

// Foreign CPU on `cpu` in a result (-1 when the CPU is not listed).
double ForeignPct(const nlohmann::json& result, int cpu) {
  const nlohmann::json* c = CpuEntry(result, cpu);
  return c == nullptr ? -1.0 : (*c)["foreign_pct"].get<double>();
}

// Other processes on this machine (other test suites, builds) add foreign CPU to either run. The
// server's CPU, which the hog never touches, and the load's CPU in the run without the hog measure
// that background; above the verdict's threshold the pair of runs says nothing about the hog and
// is measured again.
constexpr double kBusyBackgroundPct = load::kNoisyForeignPct;
constexpr int kAttempts = 3;

TEST(HostNoiseTest, AHogOnTheLoadCpuIsForeignCpuHiccupsAndHostNoise) {
  absl::StatusOr<std::vector<int>> allowed = AllowedCpus();
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  if (allowed->size() < 2) GTEST_SKIP() << "needs two CPUs: one for the server, one for the load";
  const int server_cpu = allowed->front();
  const int load_cpu = allowed->back();
  absl::StatusOr<testing::ServerProcess> server =
      StartServer({"--backend=epoll", "--shards=1", "--proto=tcp", "--hiccups"},
                  {"taskset", "-c", std::to_string(server_cpu)});
  ASSERT_TRUE(server.ok()) << server.status();

  LoadResult hog, quiet;
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    hog = LoadRun(*server, server_cpu, load_cpu, /*hog=*/true);
    quiet = LoadRun(*server, server_cpu, load_cpu, /*hog=*/false);
    ASSERT_FALSE(hog.result.is_discarded());
    ASSERT_FALSE(quiet.result.is_discarded());
    const double background =
        std::max({ForeignPct(hog.result, server_cpu), ForeignPct(quiet.result, server_cpu),
                  ForeignPct(quiet.result, load_cpu)});
    if (background < kBusyBackgroundPct) break;
    std::fprintf(stderr, "note: attempt %d: other processes took %.1f %% of a CPU; again\n",
                 attempt, background);
    if (attempt == kAttempts) {
      GTEST_SKIP() << "this machine stayed too busy to tell a hog from the background ("
                   << background << " % foreign CPU without the hog)";
    }
  }
  std::fprintf(stderr, "with the hog:\n%s\nwithout:\n%s\n", hog.table.c_str(), quiet.table.c_str());

  // The hog's share of the load CPU: ~1.5 s of a 3 s window, less what the load threads took.
  const double hog_foreign = ForeignPct(hog.result, load_cpu);
  const double quiet_foreign = ForeignPct(quiet.result, load_cpu);
  ASSERT_GE(quiet_foreign, 0) << quiet.result["host"].dump();
  ASSERT_GE(ForeignPct(hog.result, server_cpu), 0) << hog.result["host"].dump();
  EXPECT_GE(hog_foreign, 20.0) << hog.table;
  EXPECT_LE(quiet_foreign, hog_foreign - 15.0) << quiet.table;

  // Hiccups: the recorder shares its CPU with the hog, so its wakeups wait for the hog's slice.
  const nlohmann::json& hog_hiccups = hog.result["host"]["hiccup_us"];
  const nlohmann::json& quiet_hiccups = quiet.result["host"]["hiccup_us"];
  EXPECT_GT(hog_hiccups["count"].get<int>(), 1000);  // ~1 per ms over 3 s
  // The hog shows in the worst wakeup, not reliably at p99: the scheduler lets a waking sleeper
  // preempt a CPU hog at once most of the time, so only some wakeups wait out a whole slice (a
  // run under ASan measured hiccup p99 85 us with the hog and 93 us without).
  EXPECT_GE(hog_hiccups["max"].get<double>(), kHogSliceUs) << hog.table;
  EXPECT_GT(hog_hiccups["max"].get<double>(), quiet_hiccups["p99"].get<double>())
      << hog.table << quiet.table;

  // The verdict.
  EXPECT_EQ(hog.result["host"]["noisy"], true);
  EXPECT_NE(hog.table.find("\nHOST NOISE: "), std::string::npos) << hog.table;
  EXPECT_NE(hog.table.find(absl::StrCat("of CPU ", load_cpu)), std::string::npos) << hog.table;
  // Without the hog the verdict follows its own figures (the hypervisor may still steal), and the
  // line is there exactly when host.noisy says so.
  const bool quiet_noisy = quiet.result["host"]["noisy"].get<bool>();
  EXPECT_EQ(quiet.table.find("\nHOST NOISE: ") != std::string::npos, quiet_noisy) << quiet.table;
  EXPECT_EQ(quiet.table.find("other processes took"), std::string::npos) << quiet.table;
  // Per interval: the hog's intervals show it.
  double worst_interval_foreign = 0;
  for (const nlohmann::json& interval : hog.result["host"]["intervals"]) {
    for (const nlohmann::json& c : interval["cpus"]) {
      if (c["cpu"] == load_cpu) {
        worst_interval_foreign = std::max(worst_interval_foreign, c["foreign_pct"].get<double>());
      }
    }
  }
  // The hog's intervals stand far above a quiet run's 0-10 %; under ThreadSanitizer the load
  // thread takes more of the shared CPU, so the hog's share of an interval read 44 % in one run.
  EXPECT_GE(worst_interval_foreign, 35.0) << hog.result["host"]["intervals"].dump();

  // The server's own recorder: in its exit summary.
  server->process.Signal(SIGTERM);
  absl::StatusOr<int> status = server->process.Wait();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
  EXPECT_NE(server->process.Stderr().find(absl::StrCat("hiccups: cpus=", server_cpu, " count=")),
            std::string::npos)
      << server->process.Stderr();
}

}  // namespace
}  // namespace upcase
