#include "common/uppercase.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace upcase {
namespace {

TEST(UppercaseScalarTest, MapsExactlyLowercaseAsciiLetters) {
  for (int b = 0; b < 256; ++b) {
    const std::uint8_t in = static_cast<std::uint8_t>(b);
    std::uint8_t out = 0;
    UppercaseScalar(&in, &out, 1);
    const std::uint8_t expected = (b >= 'a' && b <= 'z') ? static_cast<std::uint8_t>(b - 32) : in;
    EXPECT_EQ(out, expected) << "byte " << b;
  }
}

class UppercaseImplTest : public ::testing::TestWithParam<UppercaseImpl> {};

TEST_P(UppercaseImplTest, AllByteValuesAtEveryPositionOfAVector) {
  // 256 values shifted through every lane position of the widest vector (and the scalar tail).
  for (int shift = 0; shift < 64; ++shift) {
    std::vector<std::uint8_t> in(256 + 64), out(in.size()), ref(in.size());
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<std::uint8_t>(i + shift);
    GetParam().fn(in.data(), out.data(), in.size());
    UppercaseScalar(in.data(), ref.data(), in.size());
    ASSERT_EQ(out, ref) << GetParam().name << " shift " << shift;
  }
}

TEST_P(UppercaseImplTest, RandomBuffersOfRandomLengthAndAlignment) {
  std::mt19937 rng(563);
  std::uniform_int_distribution<size_t> length(0, 64 * 1024);
  std::uniform_int_distribution<size_t> offset(0, 63);
  std::vector<std::uint8_t> in_storage(64 * 1024 + 64), out_storage(in_storage.size());
  for (int round = 0; round < 300; ++round) {
    const size_t n = round < 70 ? static_cast<size_t>(round) : length(rng);  // all short tails
    const size_t in_off = offset(rng), out_off = offset(rng);
    for (size_t i = 0; i < n; ++i) in_storage[in_off + i] = static_cast<std::uint8_t>(rng());
    std::vector<std::uint8_t> ref(n);
    UppercaseScalar(in_storage.data() + in_off, ref.data(), n);
    // Guard bytes after the output must survive: an implementation must not write past n.
    std::fill(out_storage.begin(), out_storage.end(), 0xA5);
    GetParam().fn(in_storage.data() + in_off, out_storage.data() + out_off, n);
    ASSERT_TRUE(std::equal(ref.begin(), ref.end(), out_storage.begin() + out_off))
        << GetParam().name << " n=" << n << " in_off=" << in_off << " out_off=" << out_off;
    if (out_off + n < out_storage.size()) {
      ASSERT_EQ(out_storage[out_off + n], 0xA5);
    }
    // In place, as the servers use it.
    GetParam().fn(in_storage.data() + in_off, in_storage.data() + in_off, n);
    ASSERT_TRUE(std::equal(ref.begin(), ref.end(), in_storage.begin() + in_off));
  }
}

INSTANTIATE_TEST_SUITE_P(Available, UppercaseImplTest,
                         ::testing::ValuesIn(AvailableUppercaseImpls()),
                         [](const ::testing::TestParamInfo<UppercaseImpl>& p) {
                           return std::string(p.param.name);
                         });

TEST(UppercaseTest, DispatchUsesTheMostCapableImplementation) {
  EXPECT_STREQ(ActiveUppercaseImpl().name, AvailableUppercaseImpls().back().name);
  EXPECT_EQ(UppercaseCopy("eecs563 \xc3\xa9t\xc3\xa9 {z}"), "EECS563 \xc3\xa9T\xc3\xa9 {Z}");
}

}  // namespace
}  // namespace upcase
