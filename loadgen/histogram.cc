#include "loadgen/histogram.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace upcase::load {
namespace {

// HdrHistogram's V2 cookies: the low nibble of the second byte (0x10) says "8-byte words,
// LEB128 counts"; readers mask it off with ~0xf0 to find the base.
constexpr std::uint32_t kV2EncodingCookie = 0x1c849313;
constexpr std::uint32_t kV2CompressedEncodingCookie = 0x1c849314;
constexpr std::uint32_t kCookieBaseMask = ~0xf0u;
constexpr std::size_t kHeaderBytes = 40;
constexpr std::size_t kCompressedHeaderBytes = 8;
// A decoded histogram larger than this is corrupt input, not a latency histogram.
constexpr std::size_t kMaxDecodedBytes = 64 << 20;

void PutBigEndian(std::string* out, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint64_t GetBigEndian(absl::string_view in, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<std::uint8_t>(in[at + i]);
  return v;
}

// HdrHistogram's ZigZagEncoding.putLong: LEB128 of the zigzagged value, except that a ninth
// byte, when needed, carries all of its 8 bits.
void PutZigZag(std::string* out, std::int64_t signed_value) {
  std::uint64_t v = (static_cast<std::uint64_t>(signed_value) << 1) ^
                    static_cast<std::uint64_t>(signed_value >> 63);
  for (int i = 0; i < 8; ++i) {
    if ((v >> 7) == 0) {
      out->push_back(static_cast<char>(v));
      return;
    }
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetZigZag(absl::string_view in, std::size_t* pos, std::int64_t* value) {
  std::uint64_t v = 0;
  for (int i = 0; i < 9; ++i) {
    if (*pos >= in.size()) return false;
    const std::uint64_t b = static_cast<std::uint8_t>(in[(*pos)++]);
    if (i == 8) {
      v |= b << 56;
      break;
    }
    v |= (b & 0x7f) << (7 * i);
    if ((b & 0x80) == 0) break;
  }
  *value = static_cast<std::int64_t>((v >> 1) ^ (~(v & 1) + 1));
  return true;
}

int FloorLog2(std::uint64_t v) { return 63 - __builtin_clzll(v); }

}  // namespace

Histogram::Histogram(std::int64_t lowest, std::int64_t highest, int digits)
    : lowest_(std::max<std::int64_t>(lowest, 1)),
      highest_(std::max(highest, 2 * std::max<std::int64_t>(lowest, 1))),
      digits_(std::clamp(digits, 1, 5)) {
  // The geometry HdrHistogram's AbstractHistogram.init computes, step for step: sub-buckets
  // enough to tell apart 2 * 10^digits values at unit resolution, a power of two of them.
  std::int64_t largest_single_unit = 2;
  for (int i = 0; i < digits_; ++i) largest_single_unit *= 10;
  int sub_bucket_count_magnitude = 0;
  while ((std::int64_t{1} << sub_bucket_count_magnitude) < largest_single_unit) {
    ++sub_bucket_count_magnitude;
  }
  sub_bucket_half_count_magnitude_ = std::max(sub_bucket_count_magnitude, 1) - 1;
  unit_magnitude_ = FloorLog2(static_cast<std::uint64_t>(lowest_));
  sub_bucket_count_ = 1 << (sub_bucket_half_count_magnitude_ + 1);
  sub_bucket_half_count_ = sub_bucket_count_ / 2;
  sub_bucket_mask_ = static_cast<std::uint64_t>(sub_bucket_count_ - 1) << unit_magnitude_;
  leading_zero_count_base_ = 64 - unit_magnitude_ - sub_bucket_half_count_magnitude_ - 1;

  std::int64_t smallest_untrackable = std::int64_t{sub_bucket_count_} << unit_magnitude_;
  int buckets = 1;
  while (smallest_untrackable <= highest_) {
    if (smallest_untrackable > std::numeric_limits<std::int64_t>::max() / 2) {
      ++buckets;
      break;
    }
    smallest_untrackable <<= 1;
    ++buckets;
  }
  counts_.assign(static_cast<std::size_t>(buckets + 1) * sub_bucket_half_count_, 0);
}

std::int64_t Histogram::ValueFromIndex(int index) const {
  int bucket = (index >> sub_bucket_half_count_magnitude_) - 1;
  int sub = (index & (sub_bucket_half_count_ - 1)) + sub_bucket_half_count_;
  if (bucket < 0) {
    sub -= sub_bucket_half_count_;
    bucket = 0;
  }
  return static_cast<std::int64_t>(sub) << (bucket + unit_magnitude_);
}

std::int64_t Histogram::LowestEquivalentValue(std::int64_t value) const {
  const int bucket = BucketIndex(value);
  return static_cast<std::int64_t>(SubBucketIndex(value, bucket)) << (bucket + unit_magnitude_);
}

std::int64_t Histogram::SizeOfEquivalentValueRange(std::int64_t value) const {
  const int bucket = BucketIndex(value);
  const int sub = SubBucketIndex(value, bucket);
  return std::int64_t{1} << (unit_magnitude_ + (sub >= sub_bucket_count_ ? bucket + 1 : bucket));
}

std::int64_t Histogram::HighestEquivalentValue(std::int64_t value) const {
  return LowestEquivalentValue(value) + SizeOfEquivalentValueRange(value) - 1;
}

void Histogram::Add(const Histogram& other) {
  if (other.total_ == 0) return;
  if (SameLayout(other)) {
    std::uint64_t* to = counts_.data();
    const std::uint64_t* from = other.counts_.data();
    for (std::size_t i = other.FirstUsed(), end = other.EndUsed(); i < end; ++i) to[i] += from[i];
    total_ += other.total_;
    sum_ += other.sum_;
    clamped_ += other.clamped_;
    max_ = std::max(max_, other.max_);
  } else {
    // Recorded at their values: what lies above this histogram's highest trackable value is
    // clamped (and counted) again here, other's own clamped samples included, so other's clamped
    // count and exact sum and max are only taken when nothing of it can be clamped again.
    const std::uint64_t sum_before = sum_, clamped_before = clamped_;
    other.ForEachBucket([this](std::int64_t lo, std::int64_t, std::uint64_t n) { RecordN(lo, n); });
    if (other.highest_ <= highest_) {
      sum_ = sum_before + other.sum_;
      clamped_ = clamped_before + other.clamped_;
      max_ = std::max(max_, other.max_);
    }
  }
  min_ = std::min(min_, other.min_);
}

void Histogram::Reset() {
  if (total_ > 0) std::fill(counts_.begin() + FirstUsed(), counts_.begin() + EndUsed(), 0);
  total_ = clamped_ = sum_ = 0;
  min_ = INT64_MAX;
  max_ = 0;
}

std::int64_t Histogram::ValueAtPercentile(double percentile) const {
  // HdrHistogram steps just below the requested percentile so that, e.g., 99.9% of 1000 samples
  // is rank 999 and not 1000 through floating-point noise.
  const double requested = std::min(
      std::max(std::nextafter(percentile, -std::numeric_limits<double>::infinity()), 0.0), 100.0);
  std::uint64_t rank =
      static_cast<std::uint64_t>(std::ceil(requested * static_cast<double>(total_) / 100.0));
  rank = std::max<std::uint64_t>(rank, 1);
  if (total_ == 0) return 0;
  std::uint64_t seen = 0;
  for (std::size_t i = FirstUsed(), end = EndUsed(); i < end; ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      const std::int64_t v = ValueFromIndex(static_cast<int>(i));
      return percentile == 0.0 ? LowestEquivalentValue(v) : HighestEquivalentValue(v);
    }
  }
  return 0;
}

bool Histogram::operator==(const Histogram& other) const {
  return SameLayout(other) && total_ == other.total_ && min() == other.min() &&
         max_ == other.max_ && sum_ == other.sum_ && counts_ == other.counts_;
}

std::string Histogram::EncodeUncompressed() const {
  std::size_t limit = 1;  // an empty histogram still encodes count 0 at index 0, as Java does
  for (std::size_t i = counts_.size(); i > 0; --i) {
    if (counts_[i - 1] != 0) {
      limit = i;
      break;
    }
  }
  std::string payload;
  payload.reserve(limit * 2);
  for (std::size_t i = 0; i < limit;) {
    const std::uint64_t count = counts_[i++];
    if (count != 0) {
      PutZigZag(&payload, static_cast<std::int64_t>(count));
      continue;
    }
    std::int64_t zeros = 1;
    while (i < limit && counts_[i] == 0) {
      ++zeros;
      ++i;
    }
    PutZigZag(&payload, zeros > 1 ? -zeros : 0);
  }
  std::string out;
  out.reserve(kHeaderBytes + payload.size());
  PutBigEndian(&out, kV2EncodingCookie, 4);
  PutBigEndian(&out, payload.size(), 4);
  PutBigEndian(&out, 0, 4);  // normalizingIndexOffset: never shifted here
  PutBigEndian(&out, static_cast<std::uint64_t>(digits_), 4);
  PutBigEndian(&out, static_cast<std::uint64_t>(lowest_), 8);
  PutBigEndian(&out, static_cast<std::uint64_t>(highest_), 8);
  const double ratio = 1.0;  // integerToDoubleValueConversionRatio: integer histogram
  std::uint64_t ratio_bits;
  std::memcpy(&ratio_bits, &ratio, sizeof ratio_bits);
  PutBigEndian(&out, ratio_bits, 8);
  out += payload;
  return out;
}

std::string Histogram::EncodeCompressed() const {
  const std::string raw = EncodeUncompressed();
  uLongf compressed_size = compressBound(raw.size());
  std::string out(kCompressedHeaderBytes + compressed_size, '\0');
  // compress2 writes a zlib (RFC 1950) stream, which is what java.util.zip.Deflater produces.
  const int rc =
      compress2(reinterpret_cast<Bytef*>(out.data() + kCompressedHeaderBytes), &compressed_size,
                reinterpret_cast<const Bytef*>(raw.data()), raw.size(), Z_DEFAULT_COMPRESSION);
  if (rc != Z_OK) return {};  // only Z_MEM_ERROR is possible with a compressBound buffer
  out.resize(kCompressedHeaderBytes + compressed_size);
  std::string header;
  PutBigEndian(&header, kV2CompressedEncodingCookie, 4);
  PutBigEndian(&header, compressed_size, 4);
  out.replace(0, kCompressedHeaderBytes, header);
  return out;
}

absl::StatusOr<Histogram> Histogram::DecodeUncompressed(absl::string_view in) {
  if (in.size() < kHeaderBytes) return absl::InvalidArgumentError("histogram: truncated header");
  const std::uint32_t cookie = static_cast<std::uint32_t>(GetBigEndian(in, 0, 4));
  if ((cookie & kCookieBaseMask) != (kV2EncodingCookie & kCookieBaseMask)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "histogram: not a V2 HdrHistogram encoding (cookie 0x", absl::Hex(cookie), ")"));
  }
  const std::uint64_t payload_bytes = GetBigEndian(in, 4, 4);
  const std::uint64_t normalizing_offset = GetBigEndian(in, 8, 4);
  const std::int64_t digits = static_cast<std::int64_t>(GetBigEndian(in, 12, 4));
  const std::int64_t lowest = static_cast<std::int64_t>(GetBigEndian(in, 16, 8));
  const std::int64_t highest = static_cast<std::int64_t>(GetBigEndian(in, 24, 8));
  if (payload_bytes > in.size() - kHeaderBytes) {
    return absl::InvalidArgumentError("histogram: payload shorter than its header says");
  }
  if (normalizing_offset != 0) {
    return absl::InvalidArgumentError("histogram: shifted (normalized) histograms unsupported");
  }
  // The bound on lowest comes before 2 * lowest, which would overflow for a hostile one.
  if (digits < 1 || digits > 5 || lowest < 1 ||
      FloorLog2(static_cast<std::uint64_t>(lowest)) + 17 > 61 || highest < 2 * lowest) {
    return absl::InvalidArgumentError(absl::StrCat("histogram: invalid parameters lowest=", lowest,
                                                   " highest=", highest, " digits=", digits));
  }
  Histogram h(lowest, highest, static_cast<int>(digits));
  const absl::string_view payload = in.substr(kHeaderBytes, payload_bytes);
  std::size_t pos = 0;
  std::size_t index = 0;
  while (pos < payload.size()) {
    std::int64_t count;
    if (!GetZigZag(payload, &pos, &count)) {
      return absl::InvalidArgumentError("histogram: truncated count");
    }
    if (count < 0) {  // a run of zeros; negated unsigned, as -INT64_MIN would overflow
      index += 0 - static_cast<std::uint64_t>(count);
      continue;
    }
    if (index >= h.counts_.size()) {
      return absl::InvalidArgumentError("histogram: count beyond the highest trackable value");
    }
    h.counts_[index++] = static_cast<std::uint64_t>(count);
  }
  // Without the exact statistics, use HdrHistogram's stand-ins: bucket bounds and medians.
  for (std::size_t i = 0; i < h.counts_.size(); ++i) {
    if (h.counts_[i] == 0) continue;
    const std::int64_t v = h.ValueFromIndex(static_cast<int>(i));
    if (h.total_ == 0) h.min_ = v;
    h.max_ = h.HighestEquivalentValue(v);
    if (h.total_ > UINT64_MAX - h.counts_[i]) {
      return absl::InvalidArgumentError("histogram: the counts add up to more than 2^64");
    }
    h.total_ += h.counts_[i];
    h.sum_ += static_cast<std::uint64_t>(v + h.SizeOfEquivalentValueRange(v) / 2) * h.counts_[i];
  }
  return h;
}

absl::StatusOr<Histogram> Histogram::DecodeCompressed(absl::string_view in) {
  if (in.size() < kCompressedHeaderBytes) {
    return absl::InvalidArgumentError("histogram: truncated");
  }
  const std::uint32_t cookie = static_cast<std::uint32_t>(GetBigEndian(in, 0, 4));
  if ((cookie & kCookieBaseMask) == (kV2EncodingCookie & kCookieBaseMask)) {
    return DecodeUncompressed(in);
  }
  if ((cookie & kCookieBaseMask) != (kV2CompressedEncodingCookie & kCookieBaseMask)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "histogram: not a V2 compressed HdrHistogram (cookie 0x", absl::Hex(cookie), ")"));
  }
  const std::uint64_t length = GetBigEndian(in, 4, 4);
  if (length > in.size() - kCompressedHeaderBytes) {
    return absl::InvalidArgumentError("histogram: compressed data shorter than its header says");
  }
  z_stream zs{};
  if (inflateInit(&zs) != Z_OK) return absl::InternalError("histogram: inflateInit failed");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + kCompressedHeaderBytes));
  zs.avail_in = static_cast<uInt>(length);
  std::string raw;
  int rc = Z_OK;
  while (rc == Z_OK) {
    if (raw.size() >= kMaxDecodedBytes) break;
    const std::size_t have = raw.size();
    raw.resize(have + 64 * 1024);
    zs.next_out = reinterpret_cast<Bytef*>(raw.data() + have);
    zs.avail_out = 64 * 1024;
    rc = inflate(&zs, Z_NO_FLUSH);
    raw.resize(have + (64 * 1024 - zs.avail_out));
  }
  inflateEnd(&zs);
  if (rc != Z_STREAM_END) {
    return absl::InvalidArgumentError(absl::StrCat("histogram: bad zlib stream (", rc, ")"));
  }
  return DecodeUncompressed(raw);
}

std::string Histogram::EncodeBase64() const { return absl::Base64Escape(EncodeCompressed()); }

absl::StatusOr<Histogram> Histogram::DecodeBase64(absl::string_view text) {
  std::string bytes;
  if (!absl::Base64Unescape(text, &bytes)) {
    return absl::InvalidArgumentError("histogram: invalid base64");
  }
  return DecodeCompressed(bytes);
}

absl::Status Histogram::SetExactStats(std::int64_t min, std::int64_t max, std::uint64_t sum) {
  if (total_ == 0) {
    if (min != 0 || max != 0 || sum != 0) {
      return absl::InvalidArgumentError("histogram: statistics given for an empty histogram");
    }
    return absl::OkStatus();
  }
  if (min < 0 || max < min || max > highest_ || LowestEquivalentValue(min) != min_ ||
      HighestEquivalentValue(max) != max_) {
    return absl::InvalidArgumentError(
        absl::StrCat("histogram: min ", min, " / max ", max, " disagree with the counts"));
  }
  min_ = min;
  max_ = max;
  sum_ = sum;
  return absl::OkStatus();
}

}  // namespace upcase::load
