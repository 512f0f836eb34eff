// Implementations of the uppercase kernel. The trick shared by the vector versions: adding
// (0x80 - 'a') maps 'a'..'z' onto the 26 smallest signed bytes (-128..-103), so one signed
// compare finds the lowercase letters; XOR with 0x20 then clears their case bit.
#include "common/uppercase.h"

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace upcase {
namespace {

constexpr std::uint8_t kCaseBit = 0x20;

inline std::uint64_t SwarWord(std::uint64_t x) {
  constexpr std::uint64_t kOnes = 0x0101010101010101ULL;
  constexpr std::uint64_t kHigh = 0x8080808080808080ULL;
  // Work on the low seven bits of every byte, so the additions below cannot carry into the next
  // byte (0x7F + 0x1F < 0x100), and the high bit of each sum answers one comparison.
  const std::uint64_t heptets = x & ~kHigh;
  const std::uint64_t above_z = heptets + (0x7F - 'z') * kOnes;  // high bit: heptet > 'z'
  const std::uint64_t from_a = heptets + (0x80 - 'a') * kOnes;   // high bit: heptet >= 'a'
  const std::uint64_t lower = ~x & (from_a ^ above_z) & kHigh;   // ASCII and in 'a'..'z'
  return x ^ (lower >> 2);                                       // 0x80 >> 2 == kCaseBit
}

#if defined(__x86_64__)
void UppercaseSse2(const std::uint8_t* in, std::uint8_t* out, std::size_t n) {
  const __m128i shift = _mm_set1_epi8(static_cast<char>(0x80 - 'a'));
  const __m128i limit = _mm_set1_epi8(static_cast<char>(-128 + 26));
  const __m128i flip = _mm_set1_epi8(kCaseBit);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    const __m128i lower = _mm_cmplt_epi8(_mm_add_epi8(v, shift), limit);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm_xor_si128(v, _mm_and_si128(lower, flip)));
  }
  UppercaseSwar(in + i, out + i, n - i);
}

__attribute__((target("avx2"))) void UppercaseAvx2(const std::uint8_t* in, std::uint8_t* out,
                                                   std::size_t n) {
  const __m256i shift = _mm256_set1_epi8(static_cast<char>(0x80 - 'a'));
  const __m256i limit = _mm256_set1_epi8(static_cast<char>(-128 + 26));
  const __m256i flip = _mm256_set1_epi8(kCaseBit);
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    const __m256i lower = _mm256_cmpgt_epi8(limit, _mm256_add_epi8(v, shift));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm256_xor_si256(v, _mm256_and_si256(lower, flip)));
  }
  UppercaseSse2(in + i, out + i, n - i);
}
#endif

std::vector<UppercaseImpl> DetectImpls() {
  std::vector<UppercaseImpl> impls = {{"scalar", &UppercaseScalar}, {"swar", &UppercaseSwar}};
#if defined(__x86_64__)
  impls.push_back({"sse2", &UppercaseSse2});  // part of the x86-64 baseline
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) impls.push_back({"avx2", &UppercaseAvx2});
#endif
  return impls;
}

}  // namespace

void UppercaseScalar(const std::uint8_t* in, std::uint8_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t c = in[i];
    out[i] = (c >= 'a' && c <= 'z') ? static_cast<std::uint8_t>(c ^ kCaseBit) : c;
  }
}

void UppercaseSwar(const std::uint8_t* in, std::uint8_t* out, std::size_t n) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t word;
    std::memcpy(&word, in + i, sizeof word);  // unaligned-safe; compiles to one load
    word = SwarWord(word);
    std::memcpy(out + i, &word, sizeof word);
  }
  UppercaseScalar(in + i, out + i, n - i);
}

const std::vector<UppercaseImpl>& AvailableUppercaseImpls() {
  static const std::vector<UppercaseImpl> impls = DetectImpls();
  return impls;
}

const UppercaseImpl& ActiveUppercaseImpl() {
  // The last entry is the most capable one this CPU runs.
  static const UppercaseImpl& active = AvailableUppercaseImpls().back();
  return active;
}

void Uppercase(const std::uint8_t* in, std::uint8_t* out, std::size_t n) {
  static const UppercaseFn fn = ActiveUppercaseImpl().fn;
  fn(in, out, n);
}

std::string UppercaseCopy(absl::string_view s) {
  std::string out(s);
  UppercaseInPlace(out.data(), out.size());
  return out;
}

}  // namespace upcase
