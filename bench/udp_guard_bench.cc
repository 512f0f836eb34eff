// The reflection guard's cost per datagram (server/udp_guard.h), in isolation: what every UDP path
// adds to a request it answers. The worst case is a client that keeps sending requests of one
// length from one socket (a load generator): each request is hashed and compared, and each reply
// hashed and stored. A request from another peer, or of another length, costs only the slot's
// lookup.
//
//   build/release/bin/udp_guard_bench --benchmark_format=json
#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "server/udp_guard.h"

namespace upcase {
namespace {

sockaddr_in Peer(std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// One peer, requests of one size that differ from the last reply (on: a lookup, uppercasing, one
// hash of the reply; off: uppercasing only).
void BM_GuardSamePeerSameLength(benchmark::State& state) {
  ReflectionGuard guard(state.range(1) != 0);
  const sockaddr_in peer = Peer(40000);
  const auto* sa = reinterpret_cast<const sockaddr*>(&peer);
  std::string request(static_cast<std::size_t>(state.range(0)), 'a');
  std::uint64_t refused = 0;
  std::uint32_t seq = 0;
  for (auto _ : state) {
    request[0] = static_cast<char>('a' + (seq++ & 15));  // a new request each time
    request[1] = 'a';                                    // uppercased by the last round
    refused += !guard.UppercaseUnlessReflection(sa, request.data(), request.size());
  }
  benchmark::DoNotOptimize(refused);
}
BENCHMARK(BM_GuardSamePeerSameLength)->ArgsProduct({{64, 1024}, {1, 0}})->ArgNames({"bytes", "on"});

// The worst case: requests that differ from the last reply only past their first 8 bytes, so the
// request is hashed too.
void BM_GuardSameHead(benchmark::State& state) {
  ReflectionGuard guard(true);
  const sockaddr_in peer = Peer(40000);
  const auto* sa = reinterpret_cast<const sockaddr*>(&peer);
  std::string request(static_cast<std::size_t>(state.range(0)), 'A');
  std::uint64_t refused = 0;
  std::uint32_t seq = 0;
  for (auto _ : state) {
    request.back() = static_cast<char>('0' + (seq++ & 7));
    refused += !guard.UppercaseUnlessReflection(sa, request.data(), request.size());
  }
  benchmark::DoNotOptimize(refused);
}
BENCHMARK(BM_GuardSameHead)->Arg(64)->Arg(1024)->ArgName("bytes");

// 64 peers taking turns (64 sockets of one load generator).
void BM_GuardManyPeers(benchmark::State& state) {
  ReflectionGuard guard(true);
  std::vector<sockaddr_in> peers;
  for (std::uint16_t p = 0; p < 64; ++p) peers.push_back(Peer(40000 + p));
  std::string request(64, 'a');
  std::uint64_t refused = 0;
  std::uint32_t seq = 0;
  for (auto _ : state) {
    const auto* sa = reinterpret_cast<const sockaddr*>(&peers[seq & 63]);
    request[0] = static_cast<char>('a' + (seq++ >> 6 & 15));
    request[1] = 'a';
    refused += !guard.UppercaseUnlessReflection(sa, request.data(), request.size());
  }
  benchmark::DoNotOptimize(refused);
}
BENCHMARK(BM_GuardManyPeers);

}  // namespace
}  // namespace upcase

BENCHMARK_MAIN();
