// The shared limits on their own (server/limits.h, server/accept_errors.h): which UDP sources are
// refused, the per-address connection table (exact under concurrent shards), the idle clock, the
// default output budget, and how every backend classifies accept() failures.
#include "server/limits.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/accept_errors.h"
#include "server/config.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using ::upcase::testing::Sa;
using ::upcase::testing::V4;
using ::upcase::testing::V6;

TEST(RefuseDatagramTest, WellKnownPortsAndTheServersOwnPortAreRefused) {
  constexpr std::uint16_t kOwn = 5050;
  for (std::uint16_t port : {0, 7, 13, 19, 53, 123, 1023}) {
    const sockaddr_in v4 = V4("127.0.0.1", port);
    const sockaddr_in6 v6 = V6("::1", port);
    EXPECT_TRUE(RefuseDatagram(Sa(&v4), kOwn)) << port;
    EXPECT_TRUE(RefuseDatagram(Sa(&v6), kOwn)) << port;
  }
  const sockaddr_in self = V4("192.0.2.1", kOwn);  // another host's server on our port
  EXPECT_TRUE(RefuseDatagram(Sa(&self), kOwn));
  const sockaddr_in6 self6 = V6("2001:db8::1", kOwn);
  EXPECT_TRUE(RefuseDatagram(Sa(&self6), kOwn));
  for (std::uint16_t port : {1024, 5049, 5051, 40000, 65535}) {
    const sockaddr_in v4 = V4("127.0.0.1", port);
    const sockaddr_in6 v6 = V6("::1", port);
    EXPECT_FALSE(RefuseDatagram(Sa(&v4), kOwn)) << port;
    EXPECT_FALSE(RefuseDatagram(Sa(&v6), kOwn)) << port;
  }
  sockaddr unknown{};
  unknown.sa_family = AF_UNIX;
  EXPECT_TRUE(RefuseDatagram(&unknown, kOwn));
}

TEST(PeerKeyTest, TheAddressCountsNotThePort) {
  const sockaddr_in a1 = V4("127.0.0.1", 4000);
  const sockaddr_in a2 = V4("127.0.0.1", 4001);
  const sockaddr_in b = V4("127.0.0.2", 4000);
  EXPECT_EQ(PeerKeyOf(Sa(&a1)), PeerKeyOf(Sa(&a2)));
  EXPECT_NE(PeerKeyOf(Sa(&a1)), PeerKeyOf(Sa(&b)));
  // An IPv4 client seen through an IPv6 socket is the same client.
  const sockaddr_in6 mapped = V6("::ffff:127.0.0.1", 9);
  EXPECT_EQ(PeerKeyOf(Sa(&a1)), PeerKeyOf(Sa(&mapped)));
  const sockaddr_in6 loop6 = V6("::1", 9);
  EXPECT_NE(PeerKeyOf(Sa(&a1)), PeerKeyOf(Sa(&loop6)));
}

// One host with an IPv6 /64 has 2^64 addresses: by default they all count as one client.
TEST(PeerKeyTest, IPv6PeersAreKeyedByTheirPrefix) {
  const sockaddr_in6 a = V6("fd00::1", 9);
  const sockaddr_in6 b = V6("fd00::ffff:1234:5678:9abc", 9);
  const sockaddr_in6 other_64 = V6("fd00:0:0:1::1", 9);
  EXPECT_EQ(PeerKeyOf(Sa(&a)), PeerKeyOf(Sa(&b)));
  EXPECT_NE(PeerKeyOf(Sa(&a)), PeerKeyOf(Sa(&other_64)));
  EXPECT_NE(PeerKeyOf(Sa(&a), {32, 128}), PeerKeyOf(Sa(&b), {32, 128}));
  EXPECT_EQ(PeerKeyOf(Sa(&a), {32, 48}), PeerKeyOf(Sa(&other_64), {32, 48}));
  // A prefix that is not a multiple of 8: fd00:0:0:2:: and fd00:0:0:3:: share /63, not /64.
  const sockaddr_in6 c2 = V6("fd00:0:0:2::1", 9);
  const sockaddr_in6 c3 = V6("fd00:0:0:3::1", 9);
  EXPECT_EQ(PeerKeyOf(Sa(&c2), {32, 63}), PeerKeyOf(Sa(&c3), {32, 63}));
  EXPECT_NE(PeerKeyOf(Sa(&c2), {32, 64}), PeerKeyOf(Sa(&c3), {32, 64}));
  EXPECT_NE(PeerKeyOf(Sa(&other_64), {32, 63}), PeerKeyOf(Sa(&c3), {32, 63}));
}

// IPv4 keeps its own prefix, whether it arrives as IPv4 or IPv4-mapped IPv6.
TEST(PeerKeyTest, IPv4AndMappedIPv4UseTheIPv4Prefix) {
  const sockaddr_in a = V4("10.1.2.3", 9);
  const sockaddr_in b = V4("10.1.2.200", 9);
  const sockaddr_in6 mapped_b = V6("::ffff:10.1.2.200", 9);
  EXPECT_NE(PeerKeyOf(Sa(&a)), PeerKeyOf(Sa(&b)));
  EXPECT_EQ(PeerKeyOf(Sa(&a), {24, 64}), PeerKeyOf(Sa(&b), {24, 64}));
  EXPECT_EQ(PeerKeyOf(Sa(&a), {24, 64}), PeerKeyOf(Sa(&mapped_b), {24, 64}));
  // The IPv6 prefix does not cut a mapped address (it would merge every IPv4 client).
  EXPECT_NE(PeerKeyOf(Sa(&a), {32, 64}), PeerKeyOf(Sa(&mapped_b), {32, 64}));
  // A table built with a prefix counts by it.
  ConnsPerAddress table(1, {24, 64});
  EXPECT_TRUE(table.Admit(table.KeyOf(Sa(&a))));
  EXPECT_FALSE(table.Admit(table.KeyOf(Sa(&mapped_b))));
}

TEST(ConnsPerAddressTest, AdmitsUpToTheLimitPerAddress) {
  ConnsPerAddress table(2);
  const sockaddr_in a = V4("127.0.0.1", 1);
  const sockaddr_in b = V4("127.0.0.2", 1);
  const PeerKey ka = PeerKeyOf(Sa(&a));
  const PeerKey kb = PeerKeyOf(Sa(&b));
  EXPECT_TRUE(table.Admit(ka));
  EXPECT_TRUE(table.Admit(ka));
  EXPECT_FALSE(table.Admit(ka)) << "a third from the same address";
  EXPECT_TRUE(table.Admit(kb)) << "another address is not affected";
  table.Release(ka);
  EXPECT_TRUE(table.Admit(ka)) << "a slot given back is free again";
  table.Release(ka);
  table.Release(ka);
  table.Release(kb);
  EXPECT_EQ(table.addresses(), 0u) << "no entry stays behind for a gone address";
}

TEST(ConnsPerAddressTest, ZeroMeansNoLimitAndNoTable) {
  ConnsPerAddress table(0);
  EXPECT_FALSE(table.enabled());
  const sockaddr_in a = V4("127.0.0.1", 1);
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(table.Admit(PeerKeyOf(Sa(&a))));
  EXPECT_EQ(table.addresses(), 0u);
}

// Shards admit and release concurrently; the count stays exact (and TSan sees the locking).
TEST(ConnsPerAddressTest, ExactUnderConcurrentShards) {
  constexpr int kLimit = 10;
  constexpr int kThreads = 4;
  constexpr int kRounds = 2000;
  ConnsPerAddress table(kLimit);
  const sockaddr_in a = V4("10.0.0.1", 1);
  const PeerKey key = PeerKeyOf(Sa(&a));
  std::atomic<int> held{0};
  std::atomic<int> most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        if (!table.Admit(key)) continue;
        const int now = ++held;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        --held;
        table.Release(key);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_LE(most.load(), kLimit);
  EXPECT_EQ(table.addresses(), 0u);
}

// auto is a quarter of --max-conns, never 0 (which would mean no limit) while --max-conns has one.
TEST(ConnsPerAddressTest, AutoIsAQuarterOfMaxConnsButAtLeastOne) {
  EXPECT_EQ(DefaultConnsPerIp(10'000), 2'500u);
  EXPECT_EQ(DefaultConnsPerIp(7), 1u);
  for (std::size_t max_conns : {1u, 2u, 3u}) EXPECT_EQ(DefaultConnsPerIp(max_conns), 1u);
  EXPECT_EQ(DefaultConnsPerIp(0), 0u);  // --max-conns=0: no limit either way
}

TEST(IdleClockTest, TicksAreAnEighthOfTheTimeoutWithinBounds) {
  EXPECT_FALSE(IdleClock(absl::ZeroDuration()).enabled());
  EXPECT_EQ(IdleClock(absl::Seconds(60)).tick(), absl::Seconds(1));
  EXPECT_EQ(IdleClock(absl::Seconds(1)).tick(), absl::Milliseconds(125));
  EXPECT_EQ(IdleClock(absl::Milliseconds(20)).tick(), absl::Milliseconds(10));
}

TEST(IdleClockTest, IdleOnlyAfterTheTimeoutHasPassed) {
  IdleClock clock(absl::Seconds(1));  // 8 ticks of 125 ms
  const std::uint32_t stamped = clock.now();
  for (int i = 0; i < 8; ++i) {
    clock.Advance();
    EXPECT_FALSE(clock.Idle(stamped)) << "after " << i + 1 << " ticks";
  }
  clock.Advance();  // more than 8 ticks: at least the full second has passed
  EXPECT_TRUE(clock.Idle(stamped));
  EXPECT_FALSE(clock.Idle(clock.now()));
}

TEST(IdleClockTest, StampsAreComparedAcrossTheWrap) {
  IdleClock clock(absl::Seconds(1));  // idle after more than 8 ticks
  for (int i = 0; i < 3; ++i) clock.Advance();
  // now() is 3: a stamp of 2^32 - 4 was taken 7 ticks ago, one of 2^32 - 6 nine ticks ago.
  EXPECT_FALSE(clock.Idle(0xFFFF'FFFC));
  EXPECT_TRUE(clock.Idle(0xFFFF'FFFA));
}

TEST(DefaultOutputBudgetTest, AnEighthOfMemoryPerShardWithinBounds) {
  for (int shards : {1, 2, 64, 4096}) {
    const std::size_t budget = DefaultOutputBudget(shards);
    EXPECT_GE(budget, std::size_t{32} << 20) << shards;
    EXPECT_LE(budget, std::size_t{1} << 30) << shards;
  }
  EXPECT_GE(DefaultOutputBudget(1), DefaultOutputBudget(64));
}

// The kernel's send buffers: capped at budget / 64 (at least 64 KiB) when that is below what the
// kernel's autotuning would allow, else left alone.
TEST(SendBufferCapTest, SmallBudgetsCapTheKernelsSendBuffers) {
  constexpr std::size_t kWmemMax = 4 << 20;
  EXPECT_EQ(SendBufferCap(0, kWmemMax), 0) << "no budget, no cap";
  EXPECT_EQ(SendBufferCap(64 << 20, kWmemMax), 1 << 20);
  EXPECT_EQ(SendBufferCap(64 << 10, kWmemMax), 64 << 10) << "never below 64 KiB";
  EXPECT_EQ(SendBufferCap(std::size_t{1} << 30, kWmemMax), 0) << "16 MiB: not below 4 MiB";
  EXPECT_EQ(SendBufferCap(64 << 20, 512 << 10), 0) << "the kernel's own maximum is smaller";
  EXPECT_EQ(SendBufferCap(64 << 20, 0), 1 << 20) << "unknown maximum: the kernel's default";
  EXPECT_GT(TcpWmemMax(), 0u) << "/proc/sys/net/ipv4/tcp_wmem is readable here";
}

TEST(AcceptErrorsTest, PerConnectionErrorsAreRetried) {
  for (int err : {EINTR, ECONNABORTED, EPERM, ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET,
                  EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH, ETIMEDOUT}) {
    EXPECT_EQ(ClassifyAcceptError(err), AcceptAction::kRetry) << std::strerror(err);
  }
}

TEST(AcceptErrorsTest, RunningOutBacksOff) {
  for (int err : {EMFILE, ENFILE, ENOBUFS, ENOMEM}) {
    EXPECT_EQ(ClassifyAcceptError(err), AcceptAction::kBackOff) << std::strerror(err);
  }
  EXPECT_EQ(ClassifyAcceptError(EIO), AcceptAction::kBackOff) << "unknown: neither stop nor spin";
}

TEST(AcceptErrorsTest, OnlyABrokenListenerIsFatal) {
  for (int err : {EBADF, EINVAL, ENOTSOCK, EFAULT}) {
    EXPECT_EQ(ClassifyAcceptError(err), AcceptAction::kFatal) << std::strerror(err);
  }
}

}  // namespace
}  // namespace upcase
