// The uppercase kernel: the whole of the service's computation.
//
// Maps exactly the bytes 'a'..'z' (0x61..0x7A) to 'A'..'Z'; every other byte value passes
// unchanged, so output length equals input length and UTF-8 is never split or altered.
//
// Uppercase() picks the fastest implementation this CPU supports once, at first use
// (AVX2 if present, else SSE2 on x86-64, else 8-byte SWAR). The individual implementations are
// exported so tests can check each against UppercaseScalar and benchmarks can compare them.
#ifndef UPCASE_COMMON_UPPERCASE_H_
#define UPCASE_COMMON_UPPERCASE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace upcase {

// Signature shared by every implementation. `in` and `out` may be the same buffer (in place);
// otherwise they must not overlap.
using UppercaseFn = void (*)(const std::uint8_t* in, std::uint8_t* out, std::size_t n);

// Uppercases n bytes from `in` into `out` with the best implementation for this CPU.
void Uppercase(const std::uint8_t* in, std::uint8_t* out, std::size_t n);

// Convenience for in-place use on a char buffer (the servers' hot path).
inline void UppercaseInPlace(char* data, std::size_t n) {
  auto* p = reinterpret_cast<std::uint8_t*>(data);
  Uppercase(p, p, n);
}

// Returns an uppercased copy; for tests, tools and the client, not for hot paths.
std::string UppercaseCopy(absl::string_view s);

// The reference: one byte at a time, obviously correct.
void UppercaseScalar(const std::uint8_t* in, std::uint8_t* out, std::size_t n);
// Eight bytes per step in a 64-bit register; portable.
void UppercaseSwar(const std::uint8_t* in, std::uint8_t* out, std::size_t n);

struct UppercaseImpl {
  const char* name;
  UppercaseFn fn;
};

// Every implementation this CPU can run, reference first. The one Uppercase() uses is
// ActiveUppercaseImpl().
const std::vector<UppercaseImpl>& AvailableUppercaseImpls();
const UppercaseImpl& ActiveUppercaseImpl();

}  // namespace upcase

#endif  // UPCASE_COMMON_UPPERCASE_H_
