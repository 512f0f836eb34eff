// A latency histogram with HdrHistogram's exact bucket layout and V2 serialization.
//
// Debian 12 packages no HdrHistogram for C or C++, so this is a small re-implementation of the
// parts upcase-load needs: log-linear buckets with N significant decimal digits, recording,
// exact merging, HdrHistogram's percentile rule, and the V2 compressed encoding ("HISTF..." in
// base64) that HdrHistogram's log readers and plotters accept. Because the layout (unit
// magnitude, sub-bucket count, index formula) is HdrHistogram's own, a histogram decoded by the
// Java reference has exactly the same counts at exactly the same values.
//
// upcase-load records nanoseconds with the defaults below: 1 ns resolution up to 2,047 ns, then
// 3 significant digits (each bucket at most 1/1024 of its value wide) up to one hour. Values
// above the highest trackable value are clamped to it (and counted in clamped()).
//
// Besides the counts it keeps the exact minimum, maximum and sum of the recorded values, which
// bucketed counts cannot give back; Add() merges them exactly too.
#ifndef UPCASE_LOADGEN_HISTOGRAM_H_
#define UPCASE_LOADGEN_HISTOGRAM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace upcase::load {

inline constexpr std::int64_t kDefaultLowestDiscernible = 1;                 // 1 ns
inline constexpr std::int64_t kDefaultHighestTrackable = 3'600'000'000'000;  // 1 hour in ns
inline constexpr int kDefaultSignificantDigits = 3;

class Histogram {
 public:
  // lowest >= 1, highest >= 2 * lowest, 1 <= digits <= 5 (as HdrHistogram requires).
  explicit Histogram(std::int64_t lowest = kDefaultLowestDiscernible,
                     std::int64_t highest = kDefaultHighestTrackable,
                     int digits = kDefaultSignificantDigits);

  // The hot path: a few shifts, one increment and three compares. Negative values count as 0.
  void Record(std::int64_t value) { RecordN(value, 1); }
  void RecordN(std::int64_t value, std::uint64_t n) {
    if (value < 0) value = 0;
    if (value > highest_) {
      value = highest_;
      clamped_ += n;
    }
    counts_[CountsIndex(value)] += n;
    total_ += n;
    sum_ += static_cast<std::uint64_t>(value) * n;
    if (value < min_) min_ = value;
    if (value > max_) max_ = value;
  }

  // Adds every count of `other`. Exact when both have the same layout (the usual case); otherwise
  // each of other's buckets is recorded at its value, as HdrHistogram does.
  void Add(const Histogram& other);
  void Reset();

  // HdrHistogram's getValueAtPercentile: the highest value equivalent to the sample at rank
  // ceil(p/100 * total), so the true value is never above the figure reported (0 when empty).
  std::int64_t ValueAtPercentile(double percentile) const;

  std::uint64_t total_count() const { return total_; }
  std::uint64_t clamped() const { return clamped_; }
  // Exact extremes and sum of what was recorded (0 when empty).
  std::int64_t min() const { return total_ == 0 ? 0 : min_; }
  std::int64_t max() const { return max_; }
  std::uint64_t sum() const { return sum_; }
  double mean() const { return total_ == 0 ? 0.0 : static_cast<double>(sum_) / total_; }

  std::int64_t lowest_discernible() const { return lowest_; }
  std::int64_t highest_trackable() const { return highest_; }
  int significant_digits() const { return digits_; }
  bool SameLayout(const Histogram& other) const {
    return lowest_ == other.lowest_ && highest_ == other.highest_ && digits_ == other.digits_;
  }

  // Bucket geometry, named as in HdrHistogram.
  std::int64_t LowestEquivalentValue(std::int64_t value) const;
  std::int64_t HighestEquivalentValue(std::int64_t value) const;
  std::int64_t SizeOfEquivalentValueRange(std::int64_t value) const;

  // Counts in value order: fn(lowest equivalent value, highest equivalent value, count) for
  // every non-empty bucket.
  template <typename Fn>
  void ForEachBucket(Fn fn) const {
    if (total_ == 0) return;
    for (std::size_t i = FirstUsed(), end = EndUsed(); i < end; ++i) {
      if (counts_[i] == 0) continue;
      const std::int64_t v = ValueFromIndex(static_cast<int>(i));
      fn(v, HighestEquivalentValue(v), counts_[i]);
    }
  }
  // Two histograms are equal when layout, counts and the exact min/max/sum agree.
  bool operator==(const Histogram& other) const;

  // HdrHistogram V2 compressed encoding: cookie 0x1c849314, length, then a zlib stream of the
  // 40-byte header and the counts as ZigZag LEB128 (runs of zeros as negative counts).
  std::string EncodeCompressed() const;
  // Decodes a V2 compressed (or uncompressed) histogram. The exact min/max/sum are not part of
  // the format: they become the bucket bounds (and the bucket-median sum), unless the caller
  // restores them with SetExactStats.
  static absl::StatusOr<Histogram> DecodeCompressed(absl::string_view bytes);
  // The same as base64 text, the form of HdrHistogram's logs.
  std::string EncodeBase64() const;
  static absl::StatusOr<Histogram> DecodeBase64(absl::string_view text);
  // Restores statistics serialized beside the counts; rejects values the counts contradict.
  absl::Status SetExactStats(std::int64_t min, std::int64_t max, std::uint64_t sum);

 private:
  int BucketIndex(std::int64_t value) const {
    return leading_zero_count_base_ -
           __builtin_clzll(static_cast<std::uint64_t>(value) | sub_bucket_mask_);
  }
  int SubBucketIndex(std::int64_t value, int bucket) const {
    return static_cast<int>(value >> (bucket + unit_magnitude_));
  }
  int CountsIndex(std::int64_t value) const {
    const int bucket = BucketIndex(value);
    const int sub = SubBucketIndex(value, bucket);
    return ((bucket + 1) << sub_bucket_half_count_magnitude_) + (sub - sub_bucket_half_count_);
  }
  std::int64_t ValueFromIndex(int index) const;
  // The counts that may be non-zero: those from min_'s bucket to max_'s (when total_ > 0), so
  // that adding, resetting and reading a histogram cost what its values span, not its ~32,000
  // buckets.
  std::size_t FirstUsed() const { return static_cast<std::size_t>(CountsIndex(min_)); }
  std::size_t EndUsed() const { return static_cast<std::size_t>(CountsIndex(max_)) + 1; }
  std::string EncodeUncompressed() const;
  static absl::StatusOr<Histogram> DecodeUncompressed(absl::string_view bytes);

  std::int64_t lowest_;
  std::int64_t highest_;
  int digits_;
  int unit_magnitude_;
  int sub_bucket_half_count_magnitude_;
  int sub_bucket_half_count_;
  int sub_bucket_count_;
  std::uint64_t sub_bucket_mask_;
  int leading_zero_count_base_;
  std::vector<std::uint64_t> counts_;
  std::uint64_t total_ = 0;
  std::uint64_t clamped_ = 0;
  std::uint64_t sum_ = 0;
  // Invariant: every non-zero count lies in [CountsIndex(min_), CountsIndex(max_)].
  std::int64_t min_ = INT64_MAX;  // meaningful only when total_ > 0
  std::int64_t max_ = 0;
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_HISTOGRAM_H_
