// Request payloads: where request bytes come from and how replies are checked.
//
// Each thread generates one pool of random bytes at start (64 KiB, or 8 requests of the largest
// size), and its uppercased image beside it. A
// request is a window of the pool at a random offset (no allocation, no copy: the socket reads
// straight from the pool), and its reply must equal the same window of the image, so
// verification is a memcmp. Half of the pool's bytes are lowercase letters, so the service's
// transform is exercised on every request; the rest cover all 256 byte values. Random offsets
// make a reply that belongs to another request (or another connection) a mismatch.
//
// UDP requests start with an 8-byte sequence header written in bytes >= 0x80, which uppercase
// leaves alone, so a reply names the request it answers even when datagrams are lost, reordered
// or duplicated.
#ifndef UPCASE_LOADGEN_PAYLOAD_H_
#define UPCASE_LOADGEN_PAYLOAD_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace upcase::load {

// xorshift64*: a few cycles per number, plenty for sizes, offsets, payload bytes and arrivals.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed == 0 ? 0x9e3779b97f4a7c15ULL : seed) {}
  std::uint64_t Next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545f4914f6cdd1dULL;
  }
  // Uniform in [0, n); n > 0. The modulo bias is below 2^-40 for the ranges used here.
  std::uint64_t Below(std::uint64_t n) { return Next() % n; }
  // Uniform in (0, 1]: never 0, so -log(x) is finite.
  double UnitOpenZero() { return static_cast<double>((Next() >> 11) + 1) * 0x1.0p-53; }

 private:
  std::uint64_t state_;
};

class PayloadPool {
 public:
  // A pool from which windows of up to max_size bytes can be drawn.
  PayloadPool(std::size_t max_size, std::uint64_t seed);

  // A random offset at which a window of `size` bytes fits.
  std::uint32_t RandomOffset(Rng& rng, std::size_t size) const {
    return static_cast<std::uint32_t>(rng.Below(bytes_.size() - size + 1));
  }
  const char* request(std::uint32_t offset) const { return bytes_.data() + offset; }
  const char* expected(std::uint32_t offset) const { return upper_.data() + offset; }
  // True when `reply` equals the uppercased window at `offset`.
  bool Matches(std::uint32_t offset, const char* reply, std::size_t n) const {
    return std::memcmp(upper_.data() + offset, reply, n) == 0;
  }
  std::size_t size() const { return bytes_.size(); }

 private:
  std::vector<char> bytes_;
  std::vector<char> upper_;
};

// The UDP sequence header: 8 bytes, 7 bits each, high bit set, most significant first.
inline constexpr std::size_t kSeqHeaderBytes = 8;
inline constexpr std::uint64_t kSeqMask = (std::uint64_t{1} << (7 * kSeqHeaderBytes)) - 1;

inline void EncodeSeq(std::uint64_t seq, char* out) {
  for (std::size_t i = 0; i < kSeqHeaderBytes; ++i) {
    out[i] = static_cast<char>(0x80 | ((seq >> (7 * (kSeqHeaderBytes - 1 - i))) & 0x7f));
  }
}

// False when a byte lacks the high bit: not one of our headers (or a corrupted one).
inline bool DecodeSeq(const char* in, std::uint64_t* seq) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < kSeqHeaderBytes; ++i) {
    const auto b = static_cast<std::uint8_t>(in[i]);
    if ((b & 0x80) == 0) return false;
    v = (v << 7) | (b & 0x7f);
  }
  *seq = v;
  return true;
}

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_PAYLOAD_H_
