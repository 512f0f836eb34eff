// RecvPolicy on its own: how much a uring connection may receive, and which recv it gets, on a
// kernel with the multishot byte limit (Linux >= 6.17) and without it, under and over the shard's
// --output-budget. No ring is involved: the policy is arithmetic over the output queues' state.
#include "server/uring_recv.h"

#include <string>

#include "gtest/gtest.h"

namespace upcase {
namespace {

constexpr std::size_t kKiB = 1024;

ServerConfig Config(std::size_t conn_buffer, std::size_t budget = 0) {
  ServerConfig config;
  config.conn_buffer = conn_buffer;
  config.output_budget = budget;
  return config;
}

// The buffers a multishot recv may still fill must fit into half the cap (see uring_recv.h): 2 of
// them with the byte limit, a burst of 32 without.
TEST(RecvPolicyTest, BufferSizeFollowsTheCapAndTheKernel) {
  struct Case {
    std::size_t conn_buffer;
    bool byte_limit;
    std::uint32_t size;
  };
  for (const Case& c : {Case{256 * kKiB, true, 16 * kKiB}, Case{64 * kKiB, true, 16 * kKiB},
                        Case{32 * kKiB, true, 8 * kKiB}, Case{4 * kKiB, true, 4 * kKiB},
                        Case{256 * kKiB, false, 4 * kKiB}, Case{512 * kKiB, false, 8 * kKiB},
                        Case{1024 * kKiB, false, 16 * kKiB}, Case{64 * kKiB, false, 4 * kKiB}}) {
    const ServerConfig config = Config(c.conn_buffer);
    OutputPool pool(config.conn_buffer);
    const RecvPolicy policy(config, pool, c.byte_limit);
    EXPECT_EQ(policy.buffer_size(), c.size) << c.conn_buffer << " limit " << c.byte_limit;
    const std::size_t in_flight =
        c.byte_limit ? RecvPolicy::kLimitedRecvBuffers : RecvPolicy::kMultishotBurst;
    EXPECT_EQ(policy.headroom(), in_flight * c.size);
  }
}

TEST(RecvPolicyTest, MultishotWhileTheHeadroomFitsThenSingleThenNothing) {
  const ServerConfig config = Config(256 * kKiB);
  OutputPool pool(config.conn_buffer);
  const RecvPolicy policy(config, pool, /*byte_limit=*/true);
  const std::size_t cap = config.conn_buffer;
  const std::size_t headroom = policy.headroom();  // 2 x 16K
  EXPECT_EQ(policy.Choose(0, 1), RecvArm::kMultishot);
  EXPECT_EQ(policy.Choose(cap - headroom, 1), RecvArm::kMultishot);
  EXPECT_EQ(policy.Choose(cap - headroom + 1, 1), RecvArm::kSingle);
  EXPECT_EQ(policy.Choose(cap - 1, 1), RecvArm::kSingle);
  EXPECT_EQ(policy.Choose(cap, 1), RecvArm::kNone);
  EXPECT_EQ(policy.Choose(cap + 5, 1), RecvArm::kNone) << "over the cap (the burst's overflow)";
}

TEST(RecvPolicyTest, ArmedRecvsNeverTakeMoreThanTheRoomLeft) {
  const ServerConfig config = Config(256 * kKiB);
  OutputPool pool(config.conn_buffer);
  const RecvPolicy policy(config, pool, /*byte_limit=*/true);
  const std::size_t cap = config.conn_buffer;
  // The byte limit leaves one buffer for the completion that reaches it.
  EXPECT_EQ(policy.MultishotLimit(0, 1), cap - policy.buffer_size());
  EXPECT_EQ(policy.MultishotLimit(cap - policy.headroom(), 1), policy.buffer_size());
  // A single recv takes a buffer, or the room left when that is less.
  EXPECT_EQ(policy.SingleSize(0, 1), policy.buffer_size());
  EXPECT_EQ(policy.SingleSize(cap - 100, 1), 100u);
  EXPECT_EQ(policy.SingleSize(cap - 1, 1), 1u);
}

TEST(RecvPolicyTest, OnlyKernelsWithoutTheByteLimitCancelUnderTheBudget) {
  const ServerConfig config = Config(256 * kKiB);
  OutputPool pool(config.conn_buffer);
  const RecvPolicy limited(config, pool, /*byte_limit=*/true);
  const RecvPolicy burst(config, pool, /*byte_limit=*/false);
  const std::size_t cap = config.conn_buffer;
  for (const std::size_t unsent : {std::size_t{0}, cap / 2, cap - 1, cap}) {
    EXPECT_FALSE(limited.MustCancel(unsent, 1)) << "the kernel ends it at the limit: " << unsent;
  }
  const std::size_t last = cap - burst.headroom();  // 256K - 32 x 4K
  EXPECT_FALSE(burst.MustCancel(0, 1));
  EXPECT_FALSE(burst.MustCancel(last, 1));
  EXPECT_TRUE(burst.MustCancel(last + 1, 1));
  EXPECT_TRUE(burst.MustCancel(cap, 1));
}

// With a budget, a connection may hold no more than an even split of it over the live
// connections (at least OutputPool::kMinShare), so every recv armed at once stays within it.
TEST(RecvPolicyTest, TheBudgetIsSplitOverTheLiveConnections) {
  const ServerConfig config = Config(256 * kKiB, /*budget=*/1024 * kKiB);
  OutputPool pool(config.conn_buffer, config.output_budget);
  const RecvPolicy policy(config, pool, /*byte_limit=*/true);
  EXPECT_EQ(policy.Allowance(0, 1), 256 * kKiB) << "one connection: the cap";
  EXPECT_EQ(policy.Allowance(0, 0), 256 * kKiB) << "none yet: as for one";
  EXPECT_EQ(policy.Allowance(0, 8), 128 * kKiB);
  EXPECT_EQ(policy.Allowance(0, 1000), OutputPool::kMinShare) << "never below the minimum";
  // 100 connections: 10 KiB each, less than the multishot's 32K of headroom: single recvs only.
  EXPECT_EQ(policy.Choose(0, 100), RecvArm::kSingle);
  EXPECT_EQ(policy.SingleSize(0, 100), 10485u) << "the share (1 MiB / 100), below a 16K buffer";
  EXPECT_EQ(policy.Choose(10485, 100), RecvArm::kNone);
  // Without a budget the number of connections changes nothing.
  const ServerConfig unbudgeted = Config(256 * kKiB);
  const RecvPolicy free_policy(unbudgeted, pool, /*byte_limit=*/true);
  EXPECT_EQ(free_policy.Allowance(0, 1000), 256 * kKiB);
}

// Over the budget a connection's allowance falls below what its multishot recv was armed with, so
// even a kernel with the byte limit cancels the recv.
TEST(RecvPolicyTest, OverTheBudgetEveryKernelCancels) {
  constexpr std::size_t kCap = 64 * kKiB;
  const ServerConfig config = Config(kCap, /*budget=*/100 * kKiB);
  OutputPool pool(config.conn_buffer, config.output_budget);
  const RecvPolicy policy(config, pool, /*byte_limit=*/true);
  OutputQueue a(&pool);
  OutputQueue b(&pool);
  const std::string data(kCap, 'x');
  a.Append(data.data(), kCap);
  EXPECT_FALSE(policy.MustCancel(kCap / 2, 2)) << "under the budget: the byte limit ends it";
  b.Append(data.data(), 40 * kKiB);  // 104K queued: over the budget, fair share 50K
  ASSERT_TRUE(pool.over_budget());
  EXPECT_EQ(policy.Allowance(0, 2), 50 * kKiB);
  EXPECT_TRUE(policy.MustCancel(40 * kKiB, 2)) << "40K + 32K of headroom exceeds the 50K share";
  EXPECT_FALSE(policy.MustCancel(0, 2)) << "an empty queue keeps its multishot recv";
  EXPECT_EQ(policy.Choose(kCap, 2), RecvArm::kNone);
}

}  // namespace
}  // namespace upcase
