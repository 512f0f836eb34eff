// The latency histogram against the exact percentiles of sorted samples, its V2 encoding round
// trip, and exact merging (also through the JSON report that `upcase-load merge` reads).
#include "loadgen/histogram.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "loadgen/payload.h"
#include "loadgen/report.h"

namespace upcase::load {
namespace {

// The rank HdrHistogram (and this histogram) reports for percentile p of n samples.
std::int64_t ExactPercentile(const std::vector<std::int64_t>& sorted, double p) {
  const double requested = std::max(std::nextafter(p, -1.0), 0.0);
  const double rank = std::ceil(requested * static_cast<double>(sorted.size()) / 100.0);
  const std::size_t i = std::max<std::size_t>(static_cast<std::size_t>(rank), 1) - 1;
  return sorted[std::min(i, sorted.size() - 1)];
}

struct Distribution {
  const char* name;
  std::function<std::int64_t(std::mt19937_64&)> draw;
};

std::vector<Distribution> Distributions() {
  return {
      {"log-uniform 1 ns .. 1 h",
       [](std::mt19937_64& g) {
         return static_cast<std::int64_t>(
             std::exp(std::uniform_real_distribution<double>(0, std::log(3.6e12))(g)));
       }},
      {"uniform 0 .. 5000 ns (unit resolution)",
       [](std::mt19937_64& g) { return std::uniform_int_distribution<std::int64_t>(0, 5000)(g); }},
      {"exponential, mean 50 us",
       [](std::mt19937_64& g) {
         return static_cast<std::int64_t>(std::exponential_distribution<double>(1 / 50e3)(g));
       }},
      {"lognormal around 30 us with a heavy tail",
       [](std::mt19937_64& g) {
         return static_cast<std::int64_t>(
             std::lognormal_distribution<double>(std::log(30e3), 1.5)(g));
       }},
      {"bimodal 20 us / 200 ms",
       [](std::mt19937_64& g) {
         return std::bernoulli_distribution(0.001)(g)
                    ? 200'000'000 + static_cast<std::int64_t>(g() % 1000)
                    : 20'000 + static_cast<std::int64_t>(g() % 5000);
       }},
  };
}

TEST(HistogramTest, PercentilesMatchSortedSamplesWithinOneBucket) {
  std::mt19937_64 rng(42);
  const double percentiles[] = {0, 0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 99.999, 100};
  for (const Distribution& d : Distributions()) {
    SCOPED_TRACE(d.name);
    Histogram h;
    std::vector<std::int64_t> samples(200'000);
    for (std::int64_t& s : samples) {
      s = d.draw(rng);
      h.Record(s);
    }
    std::sort(samples.begin(), samples.end());
    ASSERT_EQ(h.total_count(), samples.size());
    EXPECT_EQ(h.min(), samples.front());
    EXPECT_EQ(h.max(), samples.back());
    double sum = 0;
    for (std::int64_t s : samples) sum += static_cast<double>(s);
    EXPECT_NEAR(h.mean(), sum / samples.size(), 1e-9 * sum / samples.size());
    for (double p : percentiles) {
      SCOPED_TRACE(p);
      const std::int64_t exact = ExactPercentile(samples, p);
      const std::int64_t reported = h.ValueAtPercentile(p);
      // Same bucket: the reported value is the bucket's top (its bottom for p = 0).
      if (p == 0) {
        EXPECT_EQ(reported, h.LowestEquivalentValue(exact));
      } else {
        EXPECT_EQ(reported, h.HighestEquivalentValue(exact));
        EXPECT_GE(reported, exact);
      }
      // Three significant digits: a bucket is at most 1/1024 of its values wide, 1 ns below 2048.
      if (exact < 2048) {
        EXPECT_EQ(h.LowestEquivalentValue(exact), exact);
      } else {
        EXPECT_LE(static_cast<double>(std::llabs(reported - exact)), exact / 1024.0);
      }
    }
  }
}

TEST(HistogramTest, GeometryMatchesHdrHistogram) {
  Histogram h;  // lowest 1, 3 digits: 2048 sub-buckets, unit magnitude 0
  EXPECT_EQ(h.SizeOfEquivalentValueRange(2047), 1);
  EXPECT_EQ(h.SizeOfEquivalentValueRange(2048), 2);
  EXPECT_EQ(h.SizeOfEquivalentValueRange(1'000'000), 512);
  EXPECT_EQ(h.LowestEquivalentValue(1'000'001), 999'936);
  EXPECT_EQ(h.HighestEquivalentValue(1'000'001), 1'000'447);
  Histogram coarse(1000, 3'600'000'000, 2);  // lowest 1000: unit magnitude 9 (512)
  EXPECT_EQ(coarse.SizeOfEquivalentValueRange(1000), 512);
  EXPECT_EQ(coarse.LowestEquivalentValue(1000), 512);
}

TEST(HistogramTest, ValuesAboveTheRangeAreClampedAndCounted) {
  Histogram h;
  h.Record(kDefaultHighestTrackable * 2);
  h.Record(-5);
  EXPECT_EQ(h.clamped(), 1u);
  EXPECT_EQ(h.max(), kDefaultHighestTrackable);
  EXPECT_EQ(h.min(), 0);
  EXPECT_EQ(h.total_count(), 2u);
}

TEST(HistogramTest, EncodeDecodeRoundTrip) {
  std::mt19937_64 rng(7);
  struct Layout {
    std::int64_t lowest, highest;
    int digits;
  };
  for (const Layout& l :
       {Layout{1, kDefaultHighestTrackable, 3}, Layout{1000, 3'600'000'000'000, 2},
        Layout{1, 1'000'000, 5}, Layout{64, 1 << 30, 1}}) {
    SCOPED_TRACE(testing::Message() << l.lowest << " " << l.highest << " " << l.digits);
    for (int n : {0, 1, 1000, 100'000}) {
      Histogram h(l.lowest, l.highest, l.digits);
      for (int i = 0; i < n; ++i) {
        h.Record(static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(l.highest)));
      }
      const std::string text = h.EncodeBase64();
      EXPECT_EQ(text.substr(0, 5), "HISTF");  // what every V2 compressed histogram starts with
      absl::StatusOr<Histogram> back = Histogram::DecodeBase64(text);
      ASSERT_TRUE(back.ok()) << back.status();
      ASSERT_TRUE(back->SetExactStats(h.min(), h.max(), h.sum()).ok());
      EXPECT_TRUE(*back == h);
      for (double p : {50.0, 99.0, 99.99})
        EXPECT_EQ(back->ValueAtPercentile(p), h.ValueAtPercentile(p));
    }
  }
}

TEST(HistogramTest, HugeCountsUseTheNinthLeb128Byte) {
  Histogram h;
  h.RecordN(12345, std::uint64_t{1} << 61);
  h.RecordN(1, 3);
  absl::StatusOr<Histogram> back = Histogram::DecodeCompressed(h.EncodeCompressed());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->total_count(), h.total_count());
  EXPECT_EQ(back->ValueAtPercentile(99), h.ValueAtPercentile(99));
}

TEST(HistogramTest, CorruptInputIsAnErrorNotACrash) {
  Histogram h;
  for (int i = 1; i < 1000; ++i) h.Record(i * 1000);
  const std::string good = h.EncodeCompressed();
  EXPECT_FALSE(Histogram::DecodeCompressed("").ok());
  EXPECT_FALSE(Histogram::DecodeCompressed(good.substr(0, good.size() / 2)).ok());
  std::string bad_cookie = good;
  bad_cookie[0] ^= 0x40;
  EXPECT_FALSE(Histogram::DecodeCompressed(bad_cookie).ok());
  std::string bad_zlib = good;
  bad_zlib[12] ^= 0xff;
  EXPECT_FALSE(Histogram::DecodeCompressed(bad_zlib).ok());
  EXPECT_FALSE(Histogram::DecodeBase64("not base64 !!").ok());
  ASSERT_TRUE(Histogram::DecodeCompressed(good).ok());
  EXPECT_FALSE(Histogram::DecodeCompressed(good)->SetExactStats(0, 1, 0).ok());
}

TEST(HistogramTest, AddIsExactAndAcceptsOtherLayouts) {
  Histogram a, b, both;
  std::mt19937_64 rng(3);
  for (int i = 0; i < 50'000; ++i) {
    const auto v = static_cast<std::int64_t>(rng() % 10'000'000'000ULL);
    (i % 3 == 0 ? a : b).Record(v);
    both.Record(v);
  }
  Histogram merged = a;
  merged.Add(b);
  EXPECT_TRUE(merged == both);

  Histogram coarse(1000, kDefaultHighestTrackable, 2);
  coarse.Record(5'000'000);
  Histogram fine;
  fine.Add(coarse);
  EXPECT_EQ(fine.total_count(), 1u);
  EXPECT_EQ(fine.max(), 5'000'000);
  EXPECT_EQ(fine.ValueAtPercentile(50),
            fine.HighestEquivalentValue(coarse.LowestEquivalentValue(5'000'000)));
}

// Adding a histogram that tracks higher values: what is above this one's highest value is clamped
// once (other's own clamped samples are not counted twice), and max never exceeds highest.
TEST(HistogramTest, AddFromAWiderLayoutClampsOnce) {
  Histogram wide(1, 1'000'000'000, 3);
  wide.Record(10);
  wide.Record(5'000'000);      // above narrow's highest: clamped when added
  wide.Record(2'000'000'000);  // above wide's own highest: clamped already
  ASSERT_EQ(wide.clamped(), 1u);
  Histogram narrow(1, 1'000'000, 3);
  narrow.Add(wide);
  EXPECT_EQ(narrow.total_count(), 3u);
  EXPECT_EQ(narrow.clamped(), 2u);
  EXPECT_LE(narrow.max(), 1'000'000);
}

// `upcase-load merge` of two runs' JSON equals one run over the union of their samples.
TEST(ReportMergeTest, MergingJsonResultsEqualsOneRunOverTheUnion) {
  std::mt19937_64 rng(11);
  Report one, two, all;
  for (Report* r : {&one, &two, &all}) {
    r->duration_s = 1;
    r->open_loop = true;
  }
  one.requested_rps = two.requested_rps = 1000;
  for (int i = 0; i < 30'000; ++i) {
    const auto corrected =
        static_cast<std::int64_t>(std::lognormal_distribution<double>(10, 2)(rng));
    const std::int64_t uncorrected = corrected / 2;
    Report& r = i % 2 == 0 ? one : two;
    for (Report* target : {&r, &all}) {
      target->latency.Record(corrected);
      target->latency_uncorrected.Record(uncorrected);
      ++target->counters.requests;
    }
  }
  one.counters.Count(ErrorKind::kClosed);
  two.counters.udp_lost = 4;
  one.counters.failed = 3;
  one.counters.failed_min_age_ns = 7'000;
  two.counters.failed = 5;
  two.counters.failed_min_age_ns = 5'000;
  one.throughput_rps = static_cast<double>(one.counters.requests);
  two.throughput_rps = static_cast<double>(two.counters.requests);

  absl::StatusOr<Report> a = Report::FromJson(one.ToJson());
  absl::StatusOr<Report> b = Report::FromJson(two.ToJson());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(a->Merge(*b).ok());
  EXPECT_TRUE(a->latency == all.latency);
  EXPECT_TRUE(a->latency_uncorrected == all.latency_uncorrected);
  EXPECT_EQ(a->counters.requests, all.counters.requests);
  EXPECT_EQ(a->counters.errors_total(), 1u);
  EXPECT_EQ(a->counters.udp_lost, 4u);
  EXPECT_EQ(a->counters.failed, 8u);
  EXPECT_EQ(a->counters.failed_min_age_ns, 5'000);
  EXPECT_EQ(a->ToJson()["failed"], 8);
  EXPECT_EQ(a->instances, 2);
  EXPECT_DOUBLE_EQ(a->requested_rps, 2000);
  EXPECT_DOUBLE_EQ(a->throughput_rps, 30'000);
  EXPECT_EQ(a->ToJson()["latency_us"], all.ToJson()["latency_us"]);
}

// Runs recorded with different histogram layouts are refused, and the merge changes nothing.
TEST(ReportMergeTest, DifferentLayoutsAreRefused) {
  Report one, two;
  for (Report* r : {&one, &two}) r->duration_s = 1;
  one.latency.Record(1000);
  two.latency = Histogram(1000, kDefaultHighestTrackable, 2);
  two.latency.Record(5'000'000);
  const Report before = one;
  const absl::Status s = one.Merge(two);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "different layouts")) << s;
  EXPECT_TRUE(one.latency == before.latency);
  EXPECT_EQ(one.instances, before.instances);
}

// upcase-load merge reads files it did not write: every number is range-checked before it is
// cast or summed (the cases are in tests/fuzz/corpus/merge/merge-*.json too). Before, instances
// past INT_MAX, threads near INT64_MAX and bytes_per_s * duration_s past 2^64 were undefined
// behaviour, and counters wrapped around.
TEST(ReportMergeTest, CraftedNumbersAreRejectedBeforeCastingOrSumming) {
  Report valid;
  valid.config = nlohmann::json::object();
  valid.duration_s = 1;
  valid.threads = 1;
  valid.connections = 2;
  valid.latency.Record(1000);
  valid.counters.requests = 1;
  const nlohmann::json base = valid.ToJson();
  ASSERT_TRUE(Report::FromJson(base).ok());

  // Rejected when read.
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"instances", 2147483648LL},
           {"instances", 0},
           {"threads", INT64_MAX},
           {"connections", -5},
           {"bytes_per_s", 1e300},
           {"duration_s", -1.0},
           {"requests", -1},
           {"unanswered", -2},
           {"unanswered_min_age_us", -3.0},
           {"failed", -4},
           {"failed_min_age_us", -5.0},
       }) {
    nlohmann::json j = base;
    j[key] = value;
    absl::StatusOr<Report> r = Report::FromJson(j);
    EXPECT_FALSE(r.ok()) << key << "=" << value.dump();
    EXPECT_TRUE(absl::StrContains(r.status().message(), key)) << r.status();
  }
  nlohmann::json bytes = base;
  bytes["bytes_per_s"] = 1e15;
  bytes["duration_s"] = 1e15;
  EXPECT_FALSE(Report::FromJson(bytes).ok());
  nlohmann::json lost = base;
  lost["udp"]["lost"] = -1;
  EXPECT_FALSE(Report::FromJson(lost).ok());

  // Readable alone, but not summed with itself: the merge says so and changes nothing.
  nlohmann::json counter = base;
  counter["requests"] = UINT64_MAX;
  nlohmann::json histogram = base;
  Histogram huge;  // HdrHistogram's counts are signed: two of the largest, 2^64 - 2 in total
  huge.RecordN(0, INT64_MAX);
  huge.RecordN(1, INT64_MAX);
  histogram["histograms"]["send_lag"] = {{"count", huge.total_count()},
                                         {"min", 0},
                                         {"max", 1},
                                         {"sum", huge.sum()},
                                         {"hdr", huge.EncodeBase64()}};
  for (const nlohmann::json& j : {counter, histogram}) {
    absl::StatusOr<Report> r = Report::FromJson(j);
    ASSERT_TRUE(r.ok()) << r.status();
    Report merged = *r;
    const absl::Status s = merged.Merge(*r);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.message(), "overflow")) << s;
    EXPECT_EQ(merged.instances, 1);
    EXPECT_EQ(merged.ToJson(), r->ToJson());
  }
}

// The table names the load generator as a possible limit when its threads were on the CPU for
// most of the window, and then does not blame a missed rate on the server alone.
TEST(ReportTableTest, ABusyLoadGeneratorIsSaidSo) {
  Report r;
  r.config = {{"proto", "tcp"}, {"rate", 1000}};
  r.duration_s = 2;
  r.threads = 2;
  r.open_loop = true;
  r.requested_rps = 1000;
  r.throughput_rps = 1000;
  r.client_cpu_s = 2.0;  // half of 2 threads x 2 s
  EXPECT_DOUBLE_EQ(r.client_busy(), 0.5);
  EXPECT_TRUE(absl::StrContains(r.Table(), "(50 % busy)")) << r.Table();
  EXPECT_FALSE(absl::StrContains(r.Table(), "BUSY")) << r.Table();
  EXPECT_EQ(r.ToJson()["client_busy"], 0.5);

  r.client_cpu_s = 3.8;
  EXPECT_TRUE(absl::StrContains(r.Table(), "UPCASE-LOAD WAS 95 % BUSY")) << r.Table();

  r.throughput_rps = 500;
  EXPECT_TRUE(absl::StrContains(r.Table(), "THE RATE WAS NOT REACHED: 50.0 %")) << r.Table();
  EXPECT_FALSE(absl::StrContains(r.Table(), "THE SERVER DID NOT KEEP UP")) << r.Table();
  r.client_cpu_s = 1.0;
  EXPECT_TRUE(absl::StrContains(r.Table(), "THE SERVER DID NOT KEEP UP")) << r.Table();
}

TEST(PayloadTest, SequenceHeaderSurvivesUppercaseAndRoundTrips) {
  for (std::uint64_t seq : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{0x61}, kSeqMask,
                            std::uint64_t{0x0123456789abcd}}) {
    char header[kSeqHeaderBytes];
    EncodeSeq(seq, header);
    for (char c : header) EXPECT_GE(static_cast<std::uint8_t>(c), 0x80);  // never a..z
    std::uint64_t back;
    ASSERT_TRUE(DecodeSeq(header, &back));
    EXPECT_EQ(back, seq);
  }
  const char ascii[kSeqHeaderBytes] = {'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'};
  std::uint64_t ignored;
  EXPECT_FALSE(DecodeSeq(ascii, &ignored));
}

TEST(PayloadTest, PoolHasLowercaseAndItsImageIsTheUppercase) {
  PayloadPool pool(64, 99);
  std::size_t lower = 0;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    const char c = *pool.request(static_cast<std::uint32_t>(i));
    const char up = *pool.expected(static_cast<std::uint32_t>(i));
    if (c >= 'a' && c <= 'z') {
      ++lower;
      EXPECT_EQ(up, c - 'a' + 'A');
    } else {
      EXPECT_EQ(up, c);
    }
  }
  EXPECT_GT(lower, pool.size() / 3);
}

}  // namespace
}  // namespace upcase::load
