// The verdict on the host's noise (loadgen/host.h): its thresholds, its line, its JSON, and how
// the host figures travel through a result file and a merge.
#include "loadgen/host.h"

#include "gtest/gtest.h"
#include "loadgen/report.h"

namespace upcase::load {
namespace {

HostFigures Figures(double steal, double irq, double foreign, std::int64_t hiccup_max_ns) {
  HostFigures h;
  h.present = true;
  h.hiccups_on = true;
  for (int i = 0; i < 1000; ++i) h.hiccups.Record(20'000);
  h.hiccups.Record(hiccup_max_ns);
  HostCpu cpu;
  cpu.noise.cpu = 1;
  cpu.noise.steal_pct = steal;
  cpu.noise.irq_pct = irq;
  cpu.noise.foreign_pct = foreign;
  cpu.role = "load";
  h.cpus.push_back(cpu);
  return h;
}

TEST(HostVerdictTest, AQuietVmIsNotNoise) {
  // What a quiet run of a small VM shows: a few % of steal, hiccups of a few ms; interrupts,
  // which include the run's own network processing, are not judged.
  const HostFigures h =
      Figures(kNoisyStealPct - 0.1, 30, kNoisyForeignPct - 0.1, kNoisyHiccupNs - 1000);
  EXPECT_FALSE(h.noisy());
  EXPECT_EQ(h.VerdictLine(), "");
  EXPECT_EQ(h.ToJson()["noisy"], false);
}

TEST(HostVerdictTest, EachThresholdAloneMakesNoise) {
  struct Case {
    HostFigures h;
    const char* says;
  };
  const Case cases[] = {
      {Figures(kNoisyStealPct + 0.5, 0, 0, 1'000'000), "the host stole 5.5 % of CPU 1 (load)"},
      {Figures(0, 0, 42.25, 1'000'000), "other processes took 42.2 % of CPU 1"},
      {Figures(0, 0, 0, kNoisyHiccupNs + 2'000'000), "the worst hiccup was 7.0 ms"},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(c.h.noisy()) << c.says;
    const std::string line = c.h.VerdictLine();
    EXPECT_EQ(line.rfind("HOST NOISE: ", 0), 0u) << line;
    EXPECT_NE(line.find(c.says), std::string::npos) << line;
    EXPECT_NE(line.find("may be the host's, not the server's"), std::string::npos) << line;
    EXPECT_EQ(c.h.ToJson()["noisy"], true);
  }
}

TEST(HostVerdictTest, ForeignCpuIsJudgedOnlyWhereItIsExact) {
  // An unpinned own thread's time is charged to the CPU it last ran on, so a CPU it may run on
  // can show foreign time that was its own: reported, marked, not judged.
  HostFigures h = Figures(0, 0, 42.25, 1'000'000);
  h.cpus[0].noise.foreign_exact = false;
  EXPECT_FALSE(h.noisy());
  EXPECT_EQ(h.ToJson()["cpus"][0]["foreign_exact"], false);
  absl::StatusOr<HostFigures> back = HostFigures::FromJson(h.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->cpus[0].noise.foreign_exact);
  EXPECT_FALSE(back->noisy());
  h.cpus[0].noise.steal_pct = kNoisyStealPct + 1;  // steal is exact wherever it is
  EXPECT_TRUE(h.noisy());
}

TEST(HostVerdictTest, TheLineNamesTheWorstHiccupAsTheLatencyBound) {
  const HostFigures h = Figures(3.4, 0, 16, 3'100'000);
  EXPECT_EQ(h.VerdictLine(),
            "HOST NOISE: other processes took 16.0 % of CPU 1 (load); the worst hiccup was "
            "3.1 ms; latency above ~3.1 ms may be the host's, not the server's");
}

TEST(HostVerdictTest, JsonKeys) {
  const nlohmann::json j = Figures(1, 2, 3, 4'000'000).ToJson();
  EXPECT_EQ(j["hiccup_us"]["max"], 4000.0);
  EXPECT_NEAR(j["hiccup_us"]["p50"].get<double>(), 20.0, 0.05);  // the bucket's highest value
  EXPECT_EQ(j["hiccup_us"]["count"], 1001);
  EXPECT_TRUE(j["hiccup_us"].contains("p99"));
  EXPECT_TRUE(j["hiccup_us"].contains("p999"));
  ASSERT_EQ(j["cpus"].size(), 1u);
  EXPECT_EQ(j["cpus"][0]["cpu"], 1);
  EXPECT_EQ(j["cpus"][0]["steal_pct"], 1.0);
  EXPECT_EQ(j["cpus"][0]["irq_pct"], 2.0);
  EXPECT_EQ(j["cpus"][0]["foreign_pct"], 3.0);
  EXPECT_EQ(j["thresholds"]["foreign_pct"], kNoisyForeignPct);
}

TEST(HostVerdictTest, WatchedCpusCarryTheirRoles) {
  EXPECT_EQ(WatchedCpus({1}, {0}),
            (std::vector<std::pair<int, std::string>>{{0, "server"}, {1, "load"}}));
  EXPECT_EQ(WatchedCpus({0, 1}, {1}),
            (std::vector<std::pair<int, std::string>>{{0, "load"}, {1, "load+server"}}));
}

Report WithHost(HostFigures h) {
  Report r;
  r.config = nlohmann::json::object();
  r.duration_s = 1;
  r.counters.requests = 10;
  for (int i = 0; i < 10; ++i) r.latency.Record(50'000);
  r.host = std::move(h);
  r.env = {{"kernel", "6.1"}};
  return r;
}

TEST(HostReportTest, RoundTripsThroughTheResultFile) {
  const Report r = WithHost(Figures(1, 2, 30, 4'000'000));
  absl::StatusOr<Report> back = Report::FromJson(r.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->host.present);
  EXPECT_EQ(back->host.hiccups, r.host.hiccups);
  ASSERT_EQ(back->host.cpus.size(), 1u);
  EXPECT_EQ(back->host.cpus[0].noise.foreign_pct, 30.0);
  EXPECT_EQ(back->env["kernel"], "6.1");
  const std::string table = back->Table();
  EXPECT_NE(table.find("\n  hiccups "), std::string::npos) << table;
  EXPECT_NE(table.find("host         cpu1 (load) steal 1.0 % irq 2.0 % foreign 30.0 %"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("\nHOST NOISE: other processes took 30.0 % of CPU 1"), std::string::npos)
      << table;
}

TEST(HostReportTest, AResultWithoutHostFiguresSaysNothingAboutTheHost) {
  Report r = WithHost(HostFigures());
  nlohmann::json j = r.ToJson();
  EXPECT_TRUE(j["host"].is_null());
  j.erase("host");
  j.erase("env");
  absl::StatusOr<Report> back = Report::FromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->host.present);
  EXPECT_EQ(back->Table().find("host "), std::string::npos);
  EXPECT_EQ(back->Table().find("HOST NOISE"), std::string::npos);
}

TEST(HostReportTest, CraftedHostFiguresAreRejectedNotCast) {
  const nlohmann::json good = WithHost(Figures(1, 2, 3, 4'000'000)).ToJson();
  for (const auto& [pointer, value] : {std::pair{"/host/cpus/0/cpu", nlohmann::json(1e300)},
                                       std::pair{"/host/cpus/0/cpu", nlohmann::json(-1)},
                                       std::pair{"/host/cpus/0/steal_pct", nlohmann::json("lots")},
                                       std::pair{"/host/cpus", nlohmann::json(7)},
                                       std::pair{"/host/involuntary_switches", nlohmann::json(-5)},
                                       std::pair{"/host/hiccups", nlohmann::json(3)}}) {
    nlohmann::json j = good;
    j[nlohmann::json::json_pointer(pointer)] = value;
    absl::StatusOr<Report> r = Report::FromJson(j);
    EXPECT_FALSE(r.ok()) << pointer << " = " << value.dump();
  }
}

TEST(HostReportTest, MergeAddsHiccupsAndListsEveryHostsCpus) {
  Report a = WithHost(Figures(1, 0, 0, 1'000'000));
  const Report b = WithHost(Figures(0, 0, 50, 9'000'000));
  ASSERT_TRUE(a.Merge(b).ok());
  EXPECT_EQ(a.host.hiccups.total_count(), 2002u);
  EXPECT_EQ(a.host.hiccups.max(), 9'000'000);
  EXPECT_EQ(a.host.cpus.size(), 2u);
  EXPECT_TRUE(a.host.noisy());
}

}  // namespace
}  // namespace upcase::load
