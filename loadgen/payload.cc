#include "loadgen/payload.h"

#include <algorithm>

#include "common/uppercase.h"

namespace upcase::load {
namespace {
// Small enough that the pool and its image stay in L2: with random windows over 1 MiB, the copy
// into the socket and the memcmp of the reply each missed the cache and together cost more than
// the rest of the client's user space. 64 Ki distinct offsets still make two outstanding
// requests with the same bytes rare, and a systematic misattribution certain to show.
constexpr std::size_t kMinPoolBytes = 64 << 10;
constexpr std::size_t kMaxSizesPerPool = 8;
}  // namespace

PayloadPool::PayloadPool(std::size_t max_size, std::uint64_t seed)
    : bytes_(std::max(kMinPoolBytes, kMaxSizesPerPool * max_size)), upper_(bytes_.size()) {
  Rng rng(seed);
  for (char& c : bytes_) {
    const std::uint64_t r = rng.Next();
    c = (r & 1) ? static_cast<char>('a' + (r >> 8) % 26) : static_cast<char>(r >> 16);
  }
  // The scalar reference, not the SIMD kernel the servers use: a kernel bug must not be able to
  // hide by appearing on both sides of the comparison.
  UppercaseScalar(reinterpret_cast<const std::uint8_t*>(bytes_.data()),
                  reinterpret_cast<std::uint8_t*>(upper_.data()), bytes_.size());
}

}  // namespace upcase::load
