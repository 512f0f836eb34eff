// The uppercase kernel's throughput beside memcpy of the same size: memcpy is the ceiling for any
// byte transform that reads and writes every byte once, so the ratio says how much headroom is
// left. Google Benchmark reports bytes_per_second (shown as GB/s-style units).
//
//   build/release/bin/uppercase_bench --benchmark_format=json
#include <cstring>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "common/uppercase.h"

namespace upcase {
namespace {

std::vector<std::uint8_t> Text(std::size_t n) {
  // Mixed-case text with some non-ASCII: the service's realistic input.
  std::mt19937 rng(563);
  std::vector<std::uint8_t> v(n);
  for (auto& b : v) b = static_cast<std::uint8_t>(rng() % 4 == 0 ? rng() : 'a' + rng() % 26);
  return v;
}

void BM_Memcpy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<std::uint8_t> in = Text(n), out(n);
  for (auto _ : state) {
    std::memcpy(out.data(), in.data(), n);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

void BM_Uppercase(benchmark::State& state, UppercaseFn fn) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<std::uint8_t> in = Text(n), out(n);
  for (auto _ : state) {
    fn(in.data(), out.data(), n);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

void BM_UppercaseInPlace(benchmark::State& state) {
  // What the servers do: transform the receive buffer where it lies.
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<std::uint8_t> buf = Text(n);
  for (auto _ : state) {
    Uppercase(buf.data(), buf.data(), n);
    benchmark::DoNotOptimize(buf.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

#define UPCASE_SIZES ->Arg(64)->Arg(1 << 10)->Arg(16 << 10)->Arg(1 << 20)

BENCHMARK(BM_Memcpy) UPCASE_SIZES;
BENCHMARK(BM_UppercaseInPlace) UPCASE_SIZES;

// One benchmark per implementation this CPU runs, named after it (scalar, swar, sse2, avx2).
const bool kRegistered = [] {
  for (const UppercaseImpl& impl : AvailableUppercaseImpls()) {
    benchmark::RegisterBenchmark((std::string("BM_Uppercase/") + impl.name).c_str(), BM_Uppercase,
                                 impl.fn) UPCASE_SIZES;
  }
  return true;
}();

}  // namespace
}  // namespace upcase

BENCHMARK_MAIN();
