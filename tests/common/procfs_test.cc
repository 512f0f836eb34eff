// The /proc/stat and /proc/PID/task/*/stat arithmetic (common/procfs.h) on recorded samples, and
// the readers on a fake /proc tree.
#include "common/procfs.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include "gtest/gtest.h"

namespace upcase {
namespace {

// Two samples of /proc/stat one second apart (USER_HZ 100) on a 2-CPU VM: CPU 1 ran 50 ticks of
// tasks, 4 of steal, 1 of irq and 2 of softirq.
constexpr char kStatBefore[] =
    "cpu  1000 20 500 9000 10 5 30 40 0 0\n"
    "cpu0 600 10 300 4500 5 2 20 10 0 0\n"
    "cpu1 400 10 200 4500 5 3 10 30 0 0\n"
    "intr 123456 0 0\n"
    "ctxt 987654\n"
    "btime 1700000000\n";
constexpr char kStatAfter[] =
    "cpu  1060 20 510 9080 10 6 32 44 0 0\n"
    "cpu0 610 10 300 4580 5 2 20 10 0 0\n"
    "cpu1 445 10 205 4543 5 4 12 34 0 0\n"
    "intr 123999 0 0\n";

TEST(ProcStatTest, ParsesPerCpuLinesOnly) {
  absl::StatusOr<std::vector<CpuTicks>> cpus = ParseProcStat(kStatBefore);
  ASSERT_TRUE(cpus.ok()) << cpus.status();
  ASSERT_EQ(cpus->size(), 2u);
  EXPECT_EQ((*cpus)[1].cpu, 1);
  EXPECT_EQ((*cpus)[1].user, 400u);
  EXPECT_EQ((*cpus)[1].steal, 30u);
  EXPECT_EQ((*cpus)[1].busy(), 610u);
  EXPECT_EQ((*cpus)[1].total(), 400u + 10 + 200 + 4500 + 5 + 3 + 10 + 30);
}

TEST(ProcStatTest, RejectsMalformedLines) {
  EXPECT_FALSE(ParseProcStat("cpu0 1 2 x 4 5 6 7 8\n").ok());
  EXPECT_FALSE(ParseProcStat("cpu0 1 2\n").ok());
  EXPECT_FALSE(ParseProcStat("intr 5\n").ok());  // no per-CPU line at all
}

// A thread of a server: "(upcase server)" has a space and a parenthesis in its command.
constexpr char kTaskStat[] =
    "4242 (upcase (srv) x) S 1 4242 4242 0 -1 4194560 512 0 0 0 35 12 0 0 20 0 3 0 1000 "
    "123456789 400 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

TEST(TaskStatTest, CountsFieldsFromTheLastParenthesis) {
  TaskTicks t;
  ASSERT_TRUE(ParseTaskStat(kTaskStat, &t).ok());
  EXPECT_EQ(t.ticks, 35u + 12u);
  EXPECT_EQ(t.last_cpu, 1);
  EXPECT_FALSE(ParseTaskStat("4242 (x S 1 2", &t).ok());
  EXPECT_FALSE(ParseTaskStat("4242 (x) S 1 2 3", &t).ok());
}

TEST(TaskStatTest, StatusGivesAffinityAndInvoluntarySwitches) {
  TaskTicks t;
  ParseTaskStatus(
      "Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\n"
      "voluntary_ctxt_switches:\t100\nnonvoluntary_ctxt_switches:\t7\n",
      &t);
  EXPECT_EQ(t.allowed, (std::vector<int>{0, 1}));
  EXPECT_EQ(t.involuntary, 7u);
}

HostSample Sample(const char* stat, std::vector<TaskTicks> tasks) {
  HostSample s;
  s.cpus = *ParseProcStat(stat);
  s.tasks = std::move(tasks);
  return s;
}

TaskTicks Task(pid_t pid, pid_t tid, std::uint64_t ticks, int last_cpu, std::vector<int> allowed,
               std::uint64_t involuntary = 0) {
  TaskTicks t;
  t.pid = pid;
  t.tid = tid;
  t.ticks = ticks;
  t.last_cpu = last_cpu;
  t.allowed = std::move(allowed);
  t.involuntary = involuntary;
  return t;
}

TEST(CpuNoiseTest, StealIrqAndForeignShares) {
  // CPU 1: 100 ticks in the interval; tasks busy 50 (45 user + 5 system), of which the known
  // thread pinned there ran 20: 30 foreign.
  const HostSample a = Sample(kStatBefore, {Task(10, 10, 100, 1, {1})});
  const HostSample b = Sample(kStatAfter, {Task(10, 10, 120, 1, {1})});
  std::vector<CpuNoise> n = CpuNoiseBetween(a, b, {1});
  ASSERT_EQ(n.size(), 1u);
  EXPECT_EQ(n[0].cpu, 1);
  EXPECT_EQ(n[0].ticks, 100u);
  EXPECT_DOUBLE_EQ(n[0].steal_pct, 4.0);
  EXPECT_DOUBLE_EQ(n[0].irq_pct, 3.0);
  EXPECT_DOUBLE_EQ(n[0].own_pct, 20.0);
  EXPECT_DOUBLE_EQ(n[0].foreign_pct, 30.0);
}

TEST(CpuNoiseTest, UnpinnedThreadsGoToTheirLastCpuAndForeignIsNeverNegative) {
  // An unpinned thread that last ran on CPU 1 with 70 ticks: more than CPU 1's busy 50 (it ran
  // on CPU 0 too). CPU 1's foreign share is clamped at 0; CPU 0 gets none of it.
  const HostSample a = Sample(kStatBefore, {Task(10, 11, 0, 0, {0, 1})});
  const HostSample b = Sample(kStatAfter, {Task(10, 11, 70, 1, {0, 1})});
  std::vector<CpuNoise> n = CpuNoiseBetween(a, b, {0, 1});
  ASSERT_EQ(n.size(), 2u);
  EXPECT_EQ(n[0].cpu, 0);
  EXPECT_DOUBLE_EQ(n[0].foreign_pct, 100.0 * 10 / 90);  // 10 user ticks of 90
  EXPECT_DOUBLE_EQ(n[1].foreign_pct, 0.0);
  EXPECT_DOUBLE_EQ(n[1].own_pct, 50.0);
  // It may have run on either CPU: neither CPU's foreign share is exact.
  EXPECT_FALSE(n[0].foreign_exact);
  EXPECT_FALSE(n[1].foreign_exact);
}

TEST(CpuNoiseTest, ForeignIsExactWhereOnlyPinnedThreadsMayRun) {
  // Thread 11 may run on CPUs 0 and 2, thread 12 is pinned to CPU 1, thread 13 (unknown
  // affinity) did not run in the interval: CPU 1 is exact, CPU 0 is not.
  const HostSample a = Sample(
      kStatBefore, {Task(10, 11, 0, 0, {0, 2}), Task(10, 12, 0, 1, {1}), Task(10, 13, 7, 1, {})});
  const HostSample b = Sample(
      kStatAfter, {Task(10, 11, 30, 0, {0, 2}), Task(10, 12, 20, 1, {1}), Task(10, 13, 7, 1, {})});
  std::vector<CpuNoise> n = CpuNoiseBetween(a, b, {0, 1});
  ASSERT_EQ(n.size(), 2u);
  EXPECT_FALSE(n[0].foreign_exact);
  EXPECT_TRUE(n[1].foreign_exact);
  // A thread of unknown affinity that ran may have run anywhere.
  const HostSample c = Sample(
      kStatAfter, {Task(10, 11, 30, 0, {0, 2}), Task(10, 12, 20, 1, {1}), Task(10, 13, 9, 1, {})});
  EXPECT_FALSE(CpuNoiseBetween(a, c, {1})[0].foreign_exact);
}

TEST(CpuNoiseTest, NewThreadsCountWholeAndMissingCpusAreLeftOut) {
  const HostSample a = Sample(kStatBefore, {});
  const HostSample b = Sample(kStatAfter, {Task(10, 12, 5, 1, {1}), Task(99, 99, 40, 1, {1})});
  std::vector<CpuNoise> n = CpuNoiseBetween(a, b, {1, 7});
  ASSERT_EQ(n.size(), 1u);
  EXPECT_DOUBLE_EQ(n[0].own_pct, 45.0);
  EXPECT_DOUBLE_EQ(n[0].foreign_pct, 5.0);
}

TEST(CpuNoiseTest, SchedstatRuntimeCountsWhereTicksRoundToZero) {
  // A thread per connection: 100 threads pinned to CPU 1 each ran 5 ms in the interval, less
  // than a tick each, so utime + stime stays 0 for all; their schedstat runtime says 50 ticks.
  HostSample a = Sample(kStatBefore, {});
  HostSample b = Sample(kStatAfter, {});
  for (pid_t tid = 100; tid < 200; ++tid) {
    TaskTicks t0 = Task(10, tid, 0, 1, {1});
    TaskTicks t1 = t0;
    t0.runtime_ns = 1'000'000;
    t1.runtime_ns = 6'000'000;
    a.tasks.push_back(t0);
    b.tasks.push_back(t1);
  }
  std::vector<CpuNoise> n = CpuNoiseBetween(a, b, {1});
  ASSERT_EQ(n.size(), 1u);
  EXPECT_NEAR(n[0].own_pct, 50.0, 1e-9);
  EXPECT_NEAR(n[0].foreign_pct, 0.0, 1e-9);
}

TEST(CpuNoiseTest, AThreadThatExitedCountsThroughItsProcess) {
  // Worker 11, pinned to CPU 1, ran 40 more ticks and exited before the second sample (as
  // upcase-load's workers do at the window's end): only the process's total (/proc/10/stat)
  // still holds its time. Main thread 10 ran 2. CPU 1's 50 busy ticks are all own.
  HostSample a = Sample(kStatBefore, {Task(10, 10, 5, 1, {1}), Task(10, 11, 40, 1, {1})});
  HostSample b = Sample(kStatAfter, {Task(10, 10, 7, 1, {1})});
  a.process_ticks[10] = 45;
  b.process_ticks[10] = 95;
  std::vector<CpuNoise> n = CpuNoiseBetween(a, b, {1});
  ASSERT_EQ(n.size(), 1u);
  EXPECT_DOUBLE_EQ(n[0].own_pct, 50.0);
  EXPECT_DOUBLE_EQ(n[0].foreign_pct, 0.0);
  EXPECT_TRUE(n[0].foreign_exact);
  // Two that exited share the growth; an unpinned one makes its CPUs inexact.
  a.tasks.push_back(Task(10, 12, 0, 0, {0, 1}));
  n = CpuNoiseBetween(a, b, {0, 1});
  ASSERT_EQ(n.size(), 2u);
  EXPECT_DOUBLE_EQ(n[1].own_pct, 2.0 + 24.0);  // main thread + half of 48
  EXPECT_FALSE(n[0].foreign_exact);
  // Without the totals (a process gone, or unreadable) nothing is guessed.
  b.process_ticks.clear();
  EXPECT_DOUBLE_EQ(CpuNoiseBetween(a, b, {1})[0].own_pct, 2.0);
}

TEST(CpuNoiseTest, InvoluntarySwitchesOfOneProcess) {
  const HostSample a = Sample(kStatBefore, {Task(10, 10, 0, 0, {}, 5), Task(20, 20, 0, 0, {}, 1)});
  const HostSample b = Sample(kStatAfter, {Task(10, 10, 0, 0, {}, 9), Task(10, 13, 0, 0, {}, 2),
                                           Task(20, 20, 0, 0, {}, 50)});
  EXPECT_EQ(InvoluntarySwitchesBetween(a, b, 10), 4u + 2u);
}

class FakeProcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() /
            ("upcase-procfs-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  void Write(const std::string& path, const std::string& text) {
    const std::filesystem::path p = root_ / path.substr(1);
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  std::filesystem::path root_;
};

TEST_F(FakeProcTest, SampleReadsStatAndEveryThread) {
  Write("/proc/stat", kStatAfter);
  Write("/proc/10/task/10/stat", kTaskStat);
  Write("/proc/10/task/10/status", "Cpus_allowed_list:\t1\nnonvoluntary_ctxt_switches:\t3\n");
  Write("/proc/10/task/11/stat", "garbage");  // exited half-way: skipped
  Write("/proc/10/stat", kTaskStat);          // the process's total
  const HostSample s = SampleHost(root_.string(), {10, 12345});
  ASSERT_EQ(s.cpus.size(), 2u);
  EXPECT_EQ(s.process_ticks, (std::map<pid_t, std::uint64_t>{{10, 47}}));
  ASSERT_EQ(s.tasks.size(), 1u);
  EXPECT_EQ(s.tasks[0].tid, 10);
  EXPECT_EQ(s.tasks[0].ticks, 47u);
  EXPECT_EQ(s.tasks[0].allowed, std::vector<int>{1});
  EXPECT_EQ(s.tasks[0].involuntary, 3u);
  EXPECT_FALSE(s.tasks[0].runtime_ns.has_value());  // no schedstat in this tree
  Write("/proc/10/task/10/schedstat", "123456789 555 7\n");
  EXPECT_EQ(SampleHost(root_.string(), {10}).tasks[0].runtime_ns, 123456789u);
}

TEST_F(FakeProcTest, DescendantsAreOwnProcesses) {
  // 10 forked 20 and 30; 20 forked 40; 50 is another process's child.
  Write("/proc/10/stat", "10 (upcase-server) S 1 10 10 0");
  Write("/proc/20/stat", "20 (upcase (a) b) S 10 10 10 0");
  Write("/proc/30/stat", "30 (x) S 10 10 10 0");
  Write("/proc/40/stat", "40 (x) S 20 10 10 0");
  Write("/proc/50/stat", "50 (x) S 1 50 50 0");
  Write("/proc/self/stat", "garbage");
  std::vector<pid_t> tree = WithDescendants(root_.string(), {10});
  std::sort(tree.begin(), tree.end());
  EXPECT_EQ(tree, (std::vector<pid_t>{10, 20, 30, 40}));
  EXPECT_EQ(WithDescendants(root_.string(), {50, 50}), std::vector<pid_t>{50});

  Write("/proc/40/task/40/stat", kTaskStat);
  Write("/proc/40/task/40/status", "Cpus_allowed_list:\t0\n");
  const HostSample s = SampleHost(root_.string(), {10});
  ASSERT_EQ(s.tasks.size(), 1u);
  EXPECT_EQ(s.tasks[0].pid, 40);
  EXPECT_EQ(s.tasks[0].ticks, 47u);
}

TEST(ProcfsLiveTest, AForkedChildIsADescendant) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  const std::vector<pid_t> tree = WithDescendants("", {::getpid()});
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  EXPECT_NE(std::find(tree.begin(), tree.end(), child), tree.end());
}

TEST_F(FakeProcTest, MissingFilesGiveNothing) {
  const HostSample s = SampleHost(root_.string(), {10});
  EXPECT_TRUE(s.cpus.empty());
  EXPECT_TRUE(s.tasks.empty());
  EXPECT_TRUE(CpuNoiseBetween(s, s, {0}).empty());
}

TEST(ProcfsLiveTest, ThisProcessIsSeen) {
  const HostSample s = SampleHost("", {::getpid()});
  EXPECT_FALSE(s.cpus.empty());
  ASSERT_FALSE(s.tasks.empty());
  EXPECT_EQ(s.tasks[0].pid, ::getpid());
  EXPECT_FALSE(s.tasks[0].allowed.empty());
  EXPECT_TRUE(s.tasks[0].runtime_ns.has_value());  // this kernel has schedstat
}

}  // namespace
}  // namespace upcase
