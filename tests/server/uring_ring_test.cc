// The io_uring machinery under the uring backend, on its own: the user_data codec, a ring and its
// submission accounting, a provided-buffer ring's add/recycle bookkeeping with a real recv, and
// what the kernel probe says about this kernel.
#include "server/uring_ring.h"

#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/net.h"
#include "common/sys.h"
#include "gtest/gtest.h"
#include "server/uring_levers.h"

namespace upcase {
namespace {

enum class TestOp : std::uint8_t { kFirst = 1, kSecond, kLast = 255 };
using TestData = UserData<TestOp>;

TEST(UserDataTest, RoundTripsEveryField) {
  for (TestOp op : {TestOp::kFirst, TestOp::kSecond, TestOp::kLast}) {
    for (std::uint32_t gen : {0u, 1u, 0x12'3456u, TestData::kGenMask}) {
      for (std::uint32_t index : {0u, 7u, 0xFFFF'FFFFu}) {
        const TestData d = TestData::Decode(TestData{op, gen, index}.Encode());
        EXPECT_EQ(d.op, op);
        EXPECT_EQ(d.gen, gen);
        EXPECT_EQ(d.index, index);
      }
    }
  }
}

TEST(UserDataTest, MatchesTheDrawnLayout) {
  EXPECT_EQ((TestData{TestOp::kSecond, 0xAB'CDEF, 0x1234'5678}.Encode()), 0x02AB'CDEF'1234'5678u);
  // The generation wraps within its 24 bits instead of spilling into the op.
  EXPECT_EQ((TestData{TestOp::kFirst, 0x100'0001, 0}.Encode()), 0x0100'0001'0000'0000u);
}

// The kernel release as {major, minor}, e.g. {6, 17}.
std::pair<int, int> KernelVersion() {
  utsname u{};
  if (::uname(&u) != 0) return {0, 0};
  std::vector<std::string> parts = absl::StrSplit(u.release, absl::ByAnyChar(".-"));
  int major = 0, minor = 0;
  if (parts.size() < 2 || !absl::SimpleAtoi(parts[0], &major) ||
      !absl::SimpleAtoi(parts[1], &minor)) {
    return {0, 0};
  }
  return {major, minor};
}

bool IoUringAllowed() {
  Ring ring;
  return ring.Create({8, 16, false, 0}).ok();
}

TEST(UringProbeTest, AnswersForThisKernel) {
  if (!IoUringAllowed()) GTEST_SKIP() << "io_uring_setup is refused here: " << UringAvailable();
  const auto [major, minor] = KernelVersion();
  const bool new_enough = major > 6 || (major == 6 && minor >= 0);
  EXPECT_EQ(UringAvailable().ok(), new_enough)
      << UringAvailable() << " on " << major << "." << minor;
  const char* env = std::getenv("UPCASE_URING_RECV_LIMIT");
  const bool limit_off = env != nullptr && std::string(env) == "off";
  const bool has_limit = major > 6 || (major == 6 && minor >= 17);
  EXPECT_EQ(UseRecvLimit(), has_limit && !limit_off) << major << "." << minor;
  // Every kernel that runs the backend (6.0) registers ring fds (5.18).
  EXPECT_EQ((UringLeversSupported(false) & kLeverRingFd) != 0, new_enough);
}

class RingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!UringAvailable().ok()) GTEST_SKIP() << UringAvailable();
    ASSERT_TRUE(ring_.Create({8, 64, false, 0}).ok());
    absl::Status s = ring_.Enable(/*register_fd=*/true);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_TRUE(ring_.registered_fd());  // so these tests enter through the registered index
  }

  // Submits and reaps until nothing is in flight; returns the completions seen.
  std::vector<io_uring_cqe> Complete() {
    std::vector<io_uring_cqe> seen;
    while (ring_.in_flight() > 0) {
      absl::Status s = ring_.SubmitAndWait();
      EXPECT_TRUE(s.ok()) << s;
      if (!s.ok()) break;
      ring_.ForEachCompletion([&](const io_uring_cqe& cqe) { seen.push_back(cqe); });
    }
    return seen;
  }

  Ring ring_;
};

TEST_F(RingTest, CountsRequestsInFlightUntilTheirCompletion) {
  EXPECT_EQ(ring_.in_flight(), 0u);
  for (std::uint64_t i = 1; i <= 3; ++i) {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, i);
  }
  EXPECT_EQ(ring_.in_flight(), 3u);
  const std::vector<io_uring_cqe> seen = Complete();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(ring_.in_flight(), 0u);
}

TEST_F(RingTest, AFullSubmissionQueueIsSubmittedEarly) {
  // Twice the SQ's 8 entries: GetSqe hands the first batch to the kernel when it runs out.
  for (int i = 0; i < 16; ++i) {
    io_uring_sqe* sqe = ring_.GetSqe();
    ASSERT_NE(sqe, nullptr);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, 1);
  }
  EXPECT_EQ(Complete().size(), 16u);
}

TEST_F(RingTest, BufferRingHandsOutGivenBuffersAndTakesThemBack) {
  constexpr std::uint16_t kGroup = 3;
  constexpr std::uint32_t kSize = 64;
  BufferRing buffers;
  absl::Status s = buffers.Init(ring_.get(), kGroup, /*count=*/4, kSize, /*initial=*/1);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(buffers.given(), 1u);
  EXPECT_EQ(buffers.given_bytes(), kSize);
  EXPECT_EQ(buffers.pending_returns(), 0) << "Init commits what it gives";

  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  Fd a(pair[0]), b(pair[1]);
  // Writes `message` (if any), then one recv picking a buffer from the group, which must bring
  // `expected`; returns the buffer id it got, or -errno.
  auto recv_one = [&](const std::string& message, const std::string& expected) -> int {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_recv(sqe, a.get(), nullptr, kSize, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kGroup;
    io_uring_sqe_set_data64(sqe, 42);
    if (!message.empty()) {
      EXPECT_EQ(::write(b.get(), message.data(), message.size()),
                static_cast<ssize_t>(message.size()));
    }
    const std::vector<io_uring_cqe> seen = Complete();
    EXPECT_EQ(seen.size(), 1u);
    if (seen.size() != 1) return -1;
    if (seen[0].res < 0) return seen[0].res;
    EXPECT_TRUE(seen[0].flags & IORING_CQE_F_BUFFER);
    const int bid = static_cast<int>(seen[0].flags >> IORING_CQE_BUFFER_SHIFT);
    EXPECT_EQ(std::string(buffers.Buffer(static_cast<std::uint16_t>(bid)), seen[0].res), expected);
    return bid;
  };

  EXPECT_EQ(recv_one("first", "first"), 0);
  // The only buffer given is in use: the kernel has none left for the next recv.
  EXPECT_EQ(recv_one("second", ""), -ENOBUFS);
  // Returned, it is not the kernel's again until Commit().
  buffers.Return(0);
  EXPECT_EQ(buffers.pending_returns(), 1);
  buffers.Commit();
  EXPECT_EQ(buffers.pending_returns(), 0);
  EXPECT_EQ(recv_one("", "second"), 0) << "the returned buffer is reused";
  // Grow gives buffers the kernel never had, up to the count.
  EXPECT_TRUE(buffers.Grow(10));
  EXPECT_EQ(buffers.given(), 4u);
  EXPECT_FALSE(buffers.Grow(1));
  buffers.Commit();
  EXPECT_EQ(recv_one("third", "third"), 1);
  ring_.Close();  // before the buffer ring's memory goes
}

// What lever skip-success (backend_uring.cc, ConfirmSkippedSends) relies on: a MSG_DONTWAIT |
// MSG_WAITALL send with IOSQE_CQE_SKIP_SUCCESS runs inside the io_uring_enter() that submits it,
// posts nothing when the socket takes it all, and posts its completion before that enter returns
// when it comes up short (the bytes taken) or finds the socket full (-EAGAIN).
TEST_F(RingTest, SkippedSendPostsACompletionOnlyWhenShort) {
  if (!(UringLeversSupported(false) & kLeverSkipSuccess)) GTEST_SKIP() << "no CQE_SKIP_SUCCESS";
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  Fd a(pair[0]), b(pair[1]);
  const std::string big(4 << 20, 'x');  // more than a socket buffer takes
  // Submits one skipped send of `n` bytes and a NOP, in one enter that waits for one completion;
  // returns the send's completions (none when it succeeded).
  auto send = [&](std::size_t n) {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_send(sqe, a.get(), big.data(), n, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_WAITALL);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, 1);
    io_uring_sqe* nop_sqe = ring_.GetSqe();
    io_uring_prep_nop(nop_sqe);
    io_uring_sqe_set_data64(nop_sqe, 2);
    EXPECT_TRUE(ring_.SubmitAndWait().ok());
    EXPECT_TRUE(ring_.AllSubmitted());
    std::vector<int> results;
    bool nop = false;
    ring_.ForEachCompletion([&](const io_uring_cqe& cqe) {
      if (cqe.user_data == 1) results.push_back(cqe.res);
      if (cqe.user_data == 2) nop = true;
    });
    EXPECT_TRUE(nop);
    if (results.empty()) ring_.CompletedWithoutCqe();
    return results;
  };
  EXPECT_EQ(send(100), std::vector<int>{}) << "taken in full: no completion";
  EXPECT_EQ(ring_.in_flight(), 0u);
  const std::vector<int> short_send = send(big.size());
  ASSERT_EQ(short_send.size(), 1u) << "a short send completes";
  EXPECT_GT(short_send[0], 0);
  EXPECT_LT(short_send[0], static_cast<int>(big.size()));
  EXPECT_EQ(send(big.size()), std::vector<int>{-EAGAIN}) << "a full socket: EAGAIN";
  EXPECT_EQ(ring_.in_flight(), 0u);
}

// Lever fixed-files: a shard registers its file table in Init, on a ring not enabled yet (and not
// by the thread that will submit), then moves sockets in and out of it by slot.
TEST(RingFilesTest, ADisabledRingTakesAFileTableThatSocketsMoveInAndOutOf) {
  if (!(UringLeversSupported(false) & kLeverFixedFiles)) GTEST_SKIP() << "no sparse file table";
  Ring ring;
  ASSERT_TRUE(ring.Create({8, 16, false, 0}).ok());
  ASSERT_EQ(io_uring_register_files_sparse(ring.get(), 4), 0);
  ASSERT_TRUE(ring.Enable(/*register_fd=*/true).ok());
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  Fd a(pair[0]), b(pair[1]);
  ASSERT_EQ(io_uring_register_files_update(ring.get(), 2, &pair[0], 1), 1);
  // A send naming slot 2 reaches the socket.
  io_uring_sqe* sqe = ring.GetSqe();
  io_uring_prep_send(sqe, 2, "hi", 2, MSG_NOSIGNAL);
  sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(sqe, 1);
  ASSERT_TRUE(ring.SubmitAndWait().ok());
  int res = 0;
  ring.ForEachCompletion([&](const io_uring_cqe& cqe) { res = cqe.res; });
  EXPECT_EQ(res, 2);
  char got[2] = {};
  EXPECT_EQ(::read(b.get(), got, 2), 2);
  // Out of the table and closed, the socket is gone: the peer reads EOF.
  int none = -1;
  ASSERT_EQ(io_uring_register_files_update(ring.get(), 2, &none, 1), 1);
  a.reset();
  EXPECT_EQ(::read(b.get(), got, 2), 0);
}

// Lever min-wait: fewer completions than asked for end the wait only after the minimum wait, and
// no completion at all does not end it (the overall timeout SubmitAndWaitBatch sets keeps the
// kernel waiting for the first one).
TEST_F(RingTest, BatchWaitHoldsForTheMinimumWaitButNotWithoutACompletion) {
  if (!(UringLeversSupported(false) & kLeverMinWait)) GTEST_SKIP() << "no min_wait (Linux 6.12)";
  auto completions = [&] {
    int n = 0;
    ring_.ForEachCompletion([&](const io_uring_cqe&) { ++n; });
    return n;
  };
  // One NOP, four asked for: the enter returns with it, but not before the minimum wait.
  io_uring_prep_nop(ring_.GetSqe());
  std::int64_t start = MonotonicNanos();
  ASSERT_TRUE(ring_.SubmitAndWaitBatch(4, absl::Milliseconds(5)).ok());
  EXPECT_GE(MonotonicNanos() - start, 5'000'000) << "returned before the minimum wait";
  EXPECT_EQ(completions(), 1);
  // Nothing completes within the minimum wait: the enter waits on for the timeout request.
  __kernel_timespec ts{};
  ring_.AddTimeout(&ts, absl::Milliseconds(30), 7);
  start = MonotonicNanos();
  ASSERT_TRUE(ring_.SubmitAndWaitBatch(4, absl::Milliseconds(1)).ok());
  EXPECT_GE(MonotonicNanos() - start, 30'000'000) << "returned without a completion";
  EXPECT_EQ(completions(), 1);
  EXPECT_EQ(ring_.in_flight(), 0u);
}

}  // namespace
}  // namespace upcase
