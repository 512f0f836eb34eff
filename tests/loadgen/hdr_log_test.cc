// --hdr-log files against HdrHistogram's reference implementation (Debian's libhdrhistogram-java):
// a small Java program, compiled at test time, reads upcase-load's log with HistogramLogReader
// and prints what it decoded; and it writes a log of its own that our decoder must read the same.
// Skipped when javac or the jar is missing (tools/install-deps installs both).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "loadgen/histogram.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using load::Histogram;
using testing::BinaryPath;
using testing::StartServer;
using testing::Subprocess;

constexpr char kJar[] = "/usr/share/java/hdrhistogram.jar";
constexpr double kPercentiles[] = {50, 75, 90, 99, 99.9, 99.99};

// "read LOG": sums the untagged and the "uncorrected" intervals and prints, for each,
//   NAME INTERVALS COUNT MAX P50 P75 P90 P99 P99.9 P99.99
// "write LOG": records a known set of values, logs them in two intervals, prints the same line.
constexpr char kJavaSource[] = R"java(
import org.HdrHistogram.*;
import java.io.*;

public class HdrCheck {
  static final double[] PERCENTILES = {50, 75, 90, 99, 99.9, 99.99};

  static void print(String name, int intervals, Histogram h) {
    StringBuilder s = new StringBuilder(name + " " + intervals + " " + h.getTotalCount() + " " + h.getMaxValue());
    for (double p : PERCENTILES) s.append(" ").append(h.getValueAtPercentile(p));
    System.out.println(s);
  }

  public static void main(String[] args) throws Exception {
    if (args[0].equals("read")) {
      HistogramLogReader reader = new HistogramLogReader(args[1]);
      Histogram corrected = null, uncorrected = null;
      int nc = 0, nu = 0;
      EncodableHistogram e;
      while ((e = reader.nextIntervalHistogram()) != null) {
        Histogram h = (Histogram) e;
        if (h.getTag() == null) {
          nc++;
          if (corrected == null) corrected = h.copy(); else corrected.add(h);
        } else if (h.getTag().equals("uncorrected")) {
          nu++;
          if (uncorrected == null) uncorrected = h.copy(); else uncorrected.add(h);
        }
      }
      print("corrected", nc, corrected);
      print("uncorrected", nu, uncorrected);
    } else {
      Histogram a = new Histogram(1, 3600000000000L, 3), b = new Histogram(1, 3600000000000L, 3);
      long x = 12345;
      for (int i = 0; i < 100000; i++) {
        x = (x * 6364136223846793005L + 1442695040888963407L);
        long v = 1 + ((x >>> 20) % 50000000L);
        (i % 2 == 0 ? a : b).recordValue(i % 1000 == 0 ? v * 100 : v);
      }
      PrintStream out = new PrintStream(new FileOutputStream(args[1]));
      HistogramLogWriter w = new HistogramLogWriter(out);
      w.outputLogFormatVersion();
      w.outputStartTime(1700000000000L);
      w.setBaseTime(1700000000000L);
      w.outputLegend();
      w.outputIntervalHistogram(0.0, 1.0, a);
      w.outputIntervalHistogram(1.0, 1.0, b);
      out.close();
      Histogram all = a.copy();
      all.add(b);
      print("written", 2, all);
    }
  }
}
)java";

struct JavaLine {
  std::string name;
  int intervals = 0;
  std::uint64_t count = 0;
  std::int64_t max = 0;
  std::vector<std::int64_t> percentiles;
};

class HdrLogJavaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(kJar, R_OK) != 0 || ::system("command -v javac >/dev/null 2>&1") != 0) {
      GTEST_SKIP() << "needs javac and " << kJar << " (tools/install-deps installs them)";
    }
    char dir[] = "/tmp/upcase-hdr-java-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    std::ofstream(dir_ + "/HdrCheck.java") << kJavaSource;
    absl::StatusOr<std::string> out =
        Run({"javac", "-cp", kJar, "-d", dir_, dir_ + "/HdrCheck.java"});
    ASSERT_TRUE(out.ok()) << out.status();
  }
  void TearDown() override {
    if (!dir_.empty()) ::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  // Runs a command to completion; its stdout, or an error with its stderr.
  absl::StatusOr<std::string> Run(const std::vector<std::string>& argv) {
    Subprocess p;
    if (absl::Status s = p.Start(argv); !s.ok()) return s;
    absl::StatusOr<std::string> out = p.ReadAll(absl::Seconds(60));
    absl::StatusOr<int> status = p.Wait(absl::Seconds(60));
    if (!out.ok()) return out.status();
    if (!status.ok()) return status.status();
    if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
      return absl::InternalError(absl::StrCat(argv[0], " failed: ", p.Stderr()));
    }
    return out;
  }

  absl::StatusOr<std::vector<JavaLine>> RunJava(const std::string& mode, const std::string& log) {
    absl::StatusOr<std::string> out =
        Run({"java", "-cp", absl::StrCat(dir_, ":", kJar), "HdrCheck", mode, log});
    if (!out.ok()) return out.status();
    std::vector<JavaLine> lines;
    for (absl::string_view text : absl::StrSplit(*out, '\n', absl::SkipEmpty())) {
      std::vector<std::string> f = absl::StrSplit(text, ' ');
      if (f.size() != 4 + std::size(kPercentiles)) {
        return absl::InternalError(absl::StrCat("unexpected line: ", text));
      }
      JavaLine l;
      l.name = f[0];
      bool ok = absl::SimpleAtoi(f[1], &l.intervals) && absl::SimpleAtoi(f[2], &l.count) &&
                absl::SimpleAtoi(f[3], &l.max);
      for (std::size_t i = 4; i < f.size(); ++i) {
        std::int64_t v = 0;
        ok = ok && absl::SimpleAtoi(f[i], &v);
        l.percentiles.push_back(v);
      }
      if (!ok) return absl::InternalError(absl::StrCat("unexpected line: ", text));
      lines.push_back(l);
    }
    return lines;
  }

  void ExpectSame(const JavaLine& java, const Histogram& ours) {
    SCOPED_TRACE(java.name);
    EXPECT_EQ(java.count, ours.total_count());
    EXPECT_EQ(java.max, ours.HighestEquivalentValue(ours.max()));  // Java reports bucket tops
    for (std::size_t i = 0; i < std::size(kPercentiles); ++i) {
      EXPECT_EQ(java.percentiles[i], ours.ValueAtPercentile(kPercentiles[i])) << kPercentiles[i];
    }
  }

  std::string dir_;
};

Histogram FromJson(const nlohmann::json& h) {
  absl::StatusOr<Histogram> d = Histogram::DecodeBase64(h.at("hdr").get<std::string>());
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return Histogram();
  EXPECT_TRUE(d->SetExactStats(h.at("min"), h.at("max"), h.at("sum")).ok());
  return *d;
}

TEST_F(HdrLogJavaTest, HistogramLogReaderReadsOurLogAsWeDo) {
  absl::StatusOr<testing::ServerProcess> server = StartServer({"--backend=threads"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string log = dir_ + "/run.hlog", json = dir_ + "/run.json";
  // Open loop with a cap of one in flight, so the two spectra differ.
  absl::StatusOr<std::string> out =
      Run({BinaryPath("upcase-load"), "--rate=3000", "--connections=2", "--pipeline=1",
           "--duration=1500ms", "--warmup=100ms", "--interval=500ms", "--quiet", "--size=16:256",
           absl::StrCat("--hdr-log=", log), absl::StrCat("--json=", json), "127.0.0.1",
           absl::StrCat(server->tcp_port)});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(server->Stop().ok());
  std::ifstream in(json);
  const nlohmann::json j = nlohmann::json::parse(in);
  const Histogram corrected = FromJson(j["histograms"]["latency"]);
  const Histogram uncorrected = FromJson(j["histograms"]["latency_uncorrected"]);
  ASSERT_GT(corrected.total_count(), 0u);

  absl::StatusOr<std::vector<JavaLine>> java = RunJava("read", log);
  ASSERT_TRUE(java.ok()) << java.status();
  ASSERT_EQ(java->size(), 2u);
  EXPECT_EQ((*java)[0].intervals, 3);  // 1.5 s in 500 ms intervals
  EXPECT_EQ((*java)[1].intervals, 3);
  ExpectSame((*java)[0], corrected);
  ExpectSame((*java)[1], uncorrected);
}

TEST_F(HdrLogJavaTest, WeDecodeWhatHistogramLogWriterWrites) {
  const std::string log = dir_ + "/java.hlog";
  absl::StatusOr<std::vector<JavaLine>> java = RunJava("write", log);
  ASSERT_TRUE(java.ok()) << java.status();
  ASSERT_EQ(java->size(), 1u);
  std::ifstream in(log);
  std::string line;
  Histogram all;
  int intervals = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line[0] == '"') continue;
    std::vector<std::string> fields = absl::StrSplit(line, ',');
    ASSERT_EQ(fields.size(), 4u) << line;
    absl::StatusOr<Histogram> h = Histogram::DecodeBase64(fields[3]);
    ASSERT_TRUE(h.ok()) << h.status();
    all.Add(*h);
    ++intervals;
  }
  EXPECT_EQ(intervals, 2);
  ExpectSame((*java)[0], all);
}

// Without Java: the log's intervals add up to the run's histogram, and its header is the format.
TEST(HdrLogTest, IntervalsAddUpToTheRunTotal) {
  absl::StatusOr<testing::ServerProcess> server = StartServer({"--backend=threads"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string log = "/tmp/upcase-hdr-log-test-" + std::to_string(::getpid()) + ".hlog";
  const std::string json = log + ".json";
  Subprocess p;
  ASSERT_TRUE(p.Start({BinaryPath("upcase-load"), "--connections=2", "--duration=1s", "--warmup=0s",
                       "--interval=250ms", "--quiet", absl::StrCat("--hdr-log=", log),
                       absl::StrCat("--json=", json), "127.0.0.1", absl::StrCat(server->tcp_port)})
                  .ok());
  ASSERT_TRUE(p.ReadAll().ok());
  absl::StatusOr<int> status = p.Wait();
  ASSERT_TRUE(status.ok() && WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << p.Stderr();
  EXPECT_TRUE(server->Stop().ok());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  EXPECT_EQ(s.rfind("#[Histogram log format version 1.3]\n", 0), 0u) << s.substr(0, 200);
  EXPECT_NE(s.find("#[StartTime: "), std::string::npos);
  EXPECT_NE(s.find("#[BaseTime: "), std::string::npos);
  EXPECT_NE(s.find("\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\","
                   "\"Interval_Compressed_Histogram\"\n"),
            std::string::npos);
  Histogram sum;
  int intervals = 0;
  for (absl::string_view line : absl::StrSplit(s, '\n', absl::SkipEmpty())) {
    if (line[0] == '#' || line[0] == '"' || absl::StartsWith(line, "Tag=")) continue;
    std::vector<std::string> fields = absl::StrSplit(line, ',');
    ASSERT_EQ(fields.size(), 4u);
    absl::StatusOr<Histogram> h = Histogram::DecodeBase64(fields[3]);
    ASSERT_TRUE(h.ok()) << h.status();
    sum.Add(*h);
    ++intervals;
  }
  EXPECT_EQ(intervals, 4);
  std::ifstream jin(json);
  const nlohmann::json j = nlohmann::json::parse(jin);
  EXPECT_EQ(sum.total_count(), j["requests"].get<std::uint64_t>());
  ::unlink(log.c_str());
  ::unlink(json.c_str());
}

}  // namespace
}  // namespace upcase
