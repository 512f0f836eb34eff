// OutputQueue and OutputPool on their own: the cap, partial consumption, order across chunk
// boundaries and beyond the cap, storage handed back and reused, memory that follows what a queue
// holds (not its cap), and the shard's --output-budget.
#include "server/output_queue.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using ::upcase::testing::Expected;
using ::upcase::testing::RandomBytes;

// Everything the queue holds, in order, by consuming it in runs of at most `step` bytes.
std::string Drain(OutputQueue& q, std::size_t step) {
  std::string out;
  while (!q.empty()) {
    const std::size_t n = std::min(step, q.front_size());
    EXPECT_GT(n, 0u);
    if (n == 0) break;
    out.append(q.front(), n);
    q.Consume(n);
  }
  return out;
}

TEST(OutputQueueTest, EmptyQueueHoldsNoStorage) {
  OutputPool pool(1024);
  OutputQueue q(&pool);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.room(), 1024u);
  EXPECT_EQ(q.front_size(), 0u);
  q.Append("", 0);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(pool.spares(), 0u) << "nothing was taken, so nothing comes back";
}

TEST(OutputQueueTest, RoomShrinksToZeroAtTheCap) {
  OutputPool pool(1024);
  OutputQueue q(&pool);
  q.Append(std::string(1000, 'a').data(), 1000);
  EXPECT_EQ(q.size(), 1000u);
  EXPECT_EQ(q.room(), 24u);
  q.Append(std::string(24, 'b').data(), 24);
  EXPECT_EQ(q.room(), 0u);
  EXPECT_EQ(q.front_size(), 1024u);
}

TEST(OutputQueueTest, PartialConsumptionKeepsTheRestInOrder) {
  OutputPool pool(1024);
  OutputQueue q(&pool);
  const std::string data = RandomBytes(700, 1);
  q.Append(data.data(), data.size());
  q.Consume(100);
  EXPECT_EQ(q.size(), 600u);
  EXPECT_EQ(std::string(q.front(), 10), data.substr(100, 10));
  EXPECT_EQ(Drain(q, 7), data.substr(100));
}

TEST(OutputQueueTest, OrderHoldsAcrossTheWrap) {
  OutputPool pool(1024);
  OutputQueue q(&pool);
  const std::string a = RandomBytes(900, 2);
  const std::string b = RandomBytes(500, 3);
  q.Append(a.data(), a.size());
  q.Consume(800);                // head at 800, 100 left
  q.Append(b.data(), b.size());  // 124 bytes up to the end, then 376 from offset 0
  EXPECT_EQ(q.size(), 600u);
  EXPECT_EQ(q.front_size(), 224u) << "the first run ends at the end of its chunk";
  EXPECT_EQ(Drain(q, 1024), a.substr(800) + b);
}

TEST(OutputQueueTest, AppendUppercasedUppercasesOnTheWay) {
  OutputPool pool(1024);
  OutputQueue q(&pool);
  const std::string data = RandomBytes(1000, 4);
  q.Append(data.data(), 500);
  q.Consume(450);
  q.AppendUppercased(data.data() + 500, 500);  // wraps
  EXPECT_EQ(Drain(q, 333), data.substr(450, 50) + Expected(data.substr(500)));
}

TEST(OutputQueueTest, BeyondTheCapBytesWaitInOrder) {
  OutputPool pool(1024);
  OutputQueue q(&pool);
  const std::string data = RandomBytes(3000, 5);
  q.AppendUppercased(data.data(), 1500);
  q.AppendUppercased(data.data() + 1500, 1500);
  EXPECT_EQ(q.size(), 3000u);
  EXPECT_EQ(q.room(), 0u);
  EXPECT_LE(q.front_size(), 1024u);
  EXPECT_EQ(Drain(q, 100), Expected(data));
}

TEST(OutputQueueTest, WritingRestartsAtTheFrontWhenDrained) {
  OutputPool pool(1024);
  OutputQueue q(&pool);
  q.Append("hello", 5);
  const char* first = q.front();
  q.Consume(5);
  q.Append("again", 5);
  EXPECT_EQ(q.front(), first) << "request/response traffic keeps using the first page";
  EXPECT_EQ(std::string(q.front(), 5), "again");
}

TEST(OutputQueueTest, DrainedStorageGoesBackToThePoolAndIsReused) {
  OutputPool pool(1024);
  OutputQueue a(&pool);
  OutputQueue b(&pool);
  a.Append("x", 1);
  const char* storage = a.front();
  EXPECT_EQ(pool.spares(), 0u);
  a.Consume(1);
  EXPECT_EQ(pool.spares(), 1u);
  b.Append("y", 1);
  EXPECT_EQ(b.front(), storage) << "the spare is reused, not freed and faulted in again";
  EXPECT_EQ(pool.spares(), 0u);
  b.Clear();
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(pool.spares(), 1u);
}

TEST(OutputQueueTest, DestroyingAQueueGivesItsStorageBack) {
  OutputPool pool(1024);
  {
    OutputQueue q(&pool);
    q.Append("abc", 3);
  }
  EXPECT_EQ(pool.spares(), 1u);
}

// A slow reader whose queue stays non-empty while data streams through it: the chunks it holds
// follow what it holds, never its cap. (A ring of the cap's size that rewinds only when empty
// had its write position travel the whole ring.)
TEST(OutputQueueTest, StreamingThroughANonEmptyQueueHoldsOnlyWhatItHolds) {
  constexpr std::size_t kCap = std::size_t{1} << 30;
  constexpr std::size_t kHeld = 3 << 20;  // what the queue keeps while the stream goes through
  OutputPool pool(kCap);
  OutputQueue q(&pool);
  const std::string block = RandomBytes(64 << 10, 6);
  std::string expected_head;
  std::size_t streamed = 0;
  std::size_t most_chunks = 0;
  while (streamed < (64u << 20)) {  // 64 MiB through, never emptied
    q.AppendUppercased(block.data(), block.size());
    while (q.size() > kHeld) {
      const std::size_t n = std::min<std::size_t>(q.front_size(), 10'000);
      if (streamed == 0) expected_head.assign(q.front(), std::min<std::size_t>(n, 16));
      q.Consume(n);
      streamed += n;
    }
    most_chunks = std::max(most_chunks, pool.chunks_held());
  }
  EXPECT_FALSE(q.empty());
  EXPECT_EQ(expected_head, Expected(block.substr(0, 16)));
  // What it holds, plus the unused ends of its first and last chunk.
  EXPECT_LE(most_chunks * pool.chunk_size(), kHeld + block.size() + 2 * pool.chunk_size());
  EXPECT_LE(pool.spares(), pool.max_spares());
  q.Clear();
  EXPECT_EQ(pool.chunks_held(), 0u);
  EXPECT_EQ(pool.holders(), 0u);
}

TEST(OutputQueueTest, OrderHoldsAcrossManyChunks) {
  OutputPool pool(std::size_t{1} << 20);  // chunks of 256 KiB
  OutputQueue q(&pool);
  const std::string data = RandomBytes(1'000'003, 7);
  q.Append(data.data(), 300'001);
  q.AppendUppercased(data.data() + 300'001, data.size() - 300'001);
  EXPECT_EQ(pool.chunks_held(), 4u);
  EXPECT_EQ(q.front_size(), OutputPool::kMaxChunk);
  EXPECT_EQ(Drain(q, 77'777), data.substr(0, 300'001) + Expected(data.substr(300'001)));
  EXPECT_EQ(pool.chunks_held(), 0u);
}

TEST(OutputPoolTest, SparesAreBoundedInBytes) {
  OutputPool small(256 << 10);
  EXPECT_EQ(small.max_spares(), OutputPool::kMaxSpareBytes / (256 << 10));
  OutputPool large(64 << 20);
  EXPECT_EQ(large.chunk_size(), OutputPool::kMaxChunk) << "a large cap is stored in chunks";
  EXPECT_EQ(large.max_spares(), OutputPool::kMaxSpareBytes / OutputPool::kMaxChunk);

  std::vector<std::unique_ptr<OutputQueue>> queues;
  for (std::size_t i = 0; i < small.max_spares() + 5; ++i) {
    queues.push_back(std::make_unique<OutputQueue>(&small));
    queues.back()->Append("z", 1);
  }
  queues.clear();  // every queue gives its storage back; the pool keeps only max_spares()
  EXPECT_EQ(small.spares(), small.max_spares());
}

// --output-budget: the pool counts every queue's unsent bytes; above the budget a queue may hold
// only a fair share (budget / queues holding output), so the largest stop being read (room 0)
// while small and empty ones still are; below three quarters of the budget the cap applies again.
TEST(OutputPoolTest, OverTheBudgetTheLargestQueuesGetNoRoom) {
  constexpr std::size_t kCap = 64 << 10;
  constexpr std::size_t kBudget = 100 << 10;
  OutputPool pool(kCap, kBudget);
  OutputQueue big(&pool);
  OutputQueue small(&pool);
  OutputQueue empty(&pool);
  const std::string data = RandomBytes(kCap, 3);
  big.Append(data.data(), kCap);  // 64K: under the budget, the cap is all that counts
  EXPECT_FALSE(pool.over_budget());
  EXPECT_EQ(big.room(), 0u);
  EXPECT_EQ(small.room(), kCap);
  small.Append(data.data(), 40 << 10);  // 104K in all: over
  EXPECT_EQ(pool.queued(), (104u << 10));
  EXPECT_EQ(pool.holders(), 2u);
  EXPECT_TRUE(pool.over_budget());
  // The fair share is 50K: the 64K queue gets no room, the 40K one 10K, an empty one 50K.
  EXPECT_EQ(pool.Allowance(0), 50u << 10);
  EXPECT_EQ(big.room(), 0u);
  EXPECT_EQ(small.room(), 10u << 10);
  EXPECT_EQ(empty.room(), 50u << 10);

  // Hysteresis: still over at 76K (above 3/4 of the budget, 75K)...
  big.Consume(28 << 10);
  EXPECT_EQ(pool.queued(), (76u << 10));
  EXPECT_TRUE(pool.over_budget());
  // ...and back to the cap at 75K.
  big.Consume(1 << 10);
  EXPECT_FALSE(pool.over_budget());
  EXPECT_EQ(empty.room(), kCap);
  EXPECT_EQ(small.room(), kCap - (40u << 10));

  big.Clear();
  small.Clear();
  EXPECT_EQ(pool.queued(), 0u);
  EXPECT_EQ(pool.holders(), 0u);
}

// Fair shares shrink as more queues hold output, so queues that filled to an earlier, larger
// share could together pass the budget by far; the ceiling stops all of them at twice the budget,
// except for the few KiB an empty queue may always take.
TEST(OutputPoolTest, AllQueuesTogetherStopAtTwiceTheBudget) {
  constexpr std::size_t kBudget = 64 << 10;
  OutputPool pool(64 << 10, kBudget);
  std::vector<std::unique_ptr<OutputQueue>> queues;
  const std::string data = RandomBytes(64 << 10, 5);
  // Each newcomer fills whatever room it gets, as a connection whose client never reads would.
  for (int i = 0; i < 40; ++i) {
    queues.push_back(std::make_unique<OutputQueue>(&pool));
    OutputQueue& q = *queues.back();
    const std::size_t room = q.room();
    EXPECT_GE(room, std::min<std::size_t>(OutputPool::kMinShare, 64 << 10)) << "queue " << i;
    q.Append(data.data(), room);
    EXPECT_LE(pool.queued(), 2 * kBudget + (i + 1) * OutputPool::kMinShare) << "queue " << i;
  }
  EXPECT_TRUE(pool.over_budget());
  EXPECT_LE(pool.queued(), 2 * kBudget + 40 * OutputPool::kMinShare);
  // At the ceiling a queue holding something gets no more room; an empty one the minimum.
  EXPECT_EQ(queues[1]->room(), 0u);
  OutputQueue newcomer(&pool);
  EXPECT_EQ(newcomer.room(), OutputPool::kMinShare) << "an empty queue can still be read";
}

TEST(OutputPoolTest, NoBudgetMeansTheCapOnly) {
  OutputPool unbounded(64 << 10);  // budget 0: none
  const std::string data = RandomBytes(4 << 10, 4);
  std::vector<std::unique_ptr<OutputQueue>> queues;
  for (int i = 0; i < 100; ++i) {
    queues.push_back(std::make_unique<OutputQueue>(&unbounded));
    queues.back()->Append(data.data(), data.size());
  }
  EXPECT_FALSE(unbounded.over_budget());
  OutputQueue q(&unbounded);
  EXPECT_EQ(q.room(), 64u << 10);
}

}  // namespace
}  // namespace upcase
