// --uring-levers: the names parse as docs/upcase-server.md says, and the uring backend serves the
// service's basics with every optional io_uring feature off and with all of them on, so each
// lever's code path (and the path without it) is exercised. The full conformance suite runs with
// the default levers.
#include "server/uring_levers.h"

#include <sys/socket.h>

#include <algorithm>
#include <csignal>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/backend.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using ::upcase::testing::ConnectTcp;
using ::upcase::testing::Expected;
using ::upcase::testing::RandomBytes;
using ::upcase::testing::RecvExactly;
using ::upcase::testing::RecvUntilEof;
using ::upcase::testing::RoundTrip;
using ::upcase::testing::ServerProcess;
using ::upcase::testing::StartServer;

TEST(UringLeversParseTest, KeywordsNamesAndRemovals) {
  EXPECT_EQ(ParseUringLevers("default").value_or(~0u), kDefaultUringLevers);
  EXPECT_EQ(ParseUringLevers("all").value_or(~0u), kAllUringLevers);
  EXPECT_EQ(ParseUringLevers("none").value_or(~0u), 0u);
  EXPECT_EQ(ParseUringLevers("ring-fd").value_or(~0u), unsigned{kLeverRingFd});
  EXPECT_EQ(ParseUringLevers("all,-ring-fd").value_or(~0u), kAllUringLevers & ~kLeverRingFd);
  EXPECT_EQ(ParseUringLevers("none,ring-fd").value_or(~0u), unsigned{kLeverRingFd});
  EXPECT_EQ(UringLeverNames(0), "none");
  EXPECT_EQ(ParseUringLevers(UringLeverNames(kAllUringLevers)).value_or(~0u), kAllUringLevers);
}

TEST(UringLeversParseTest, BadNamesAreErrorsNamingTheItem) {
  for (const char* bad : {"bogus", "default,ring", "", "ring-fd,", "--ring-fd", "-all"}) {
    absl::StatusOr<unsigned> set = ParseUringLevers(bad);
    ASSERT_FALSE(set.ok()) << "'" << bad << "' parsed as " << *set;
    EXPECT_NE(set.status().message().find("unknown lever"), std::string::npos) << set.status();
  }
}

bool UringRuns() {
  absl::StatusOr<const BackendInfo*> uring = FindBackend("uring");
  return uring.ok();
}

class UringLeversTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!UringRuns()) GTEST_SKIP() << "uring unavailable here";
    stats_path_ = testing::StatsPathForCurrentTest("levers");
    absl::StatusOr<ServerProcess> server = StartServer(
        {"--backend=uring", "--shards=2", "--bind=127.0.0.1",
         absl::StrCat("--uring-levers=", GetParam()), absl::StrCat("--stats-json=", stats_path_)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::make_unique<ServerProcess>(*std::move(server));
  }

  // Stops the server (exit status 0 expected) and checks that --stats-json names the levers in
  // effect: those asked for that this kernel has.
  void TearDown() override {
    if (server_ == nullptr) return;
    server_->process.Signal(SIGTERM);
    nlohmann::json stats = testing::FinishWithStats(*server_, stats_path_);
    const unsigned asked = ParseUringLevers(GetParam()).value_or(0);
    const unsigned expected = UringLeversInEffect(asked, /*sqpoll=*/false);
    EXPECT_EQ(stats.value("uring_levers", std::string("(missing)")), UringLeverNames(expected));
    // Every test reads all its replies: each byte in went out, skipped completions included.
    EXPECT_EQ(stats["total"].value("bytes_out", -1), stats["total"].value("bytes_in", -2));
    if (asked == 0) {
      EXPECT_EQ(stats.value("uring_levers", std::string()), "none");
    }
  }

  Fd Tcp() {
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    EXPECT_TRUE(fd.ok()) << fd.status();
    return fd.ok() ? *std::move(fd) : Fd();
  }

  std::string stats_path_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_P(UringLeversTest, ManyLinesOnOneConnection) {
  Fd fd = Tcp();
  for (int i = 0; i < 1000; ++i) {
    const std::string line = absl::StrCat("line number ", i, " of many, mixed Case\n");
    absl::StatusOr<std::string> reply = RoundTrip(fd.get(), line);
    ASSERT_TRUE(reply.ok()) << "line " << i << ": " << reply.status();
    ASSERT_EQ(*reply, Expected(line));
  }
}

// Written faster than it is read: the server's sends come up short and its output queues fill,
// so every send path runs (direct sends taken in full, cut short, refused; queued sends).
TEST_P(UringLeversTest, FourMebibytesWrittenAheadOfTheReader) {
  Fd fd = Tcp();
  const std::string data = RandomBytes(4 << 20, 27);
  absl::Status write_status;
  std::thread writer([&] {
    constexpr size_t kChunk = 65'537;
    for (size_t off = 0; off < data.size() && write_status.ok(); off += kChunk) {
      write_status = SendAll(fd.get(), data.data() + off, std::min(kChunk, data.size() - off));
    }
  });
  absl::StatusOr<std::string> reply = RecvExactly(fd.get(), data.size());
  writer.join();
  ASSERT_TRUE(write_status.ok()) << write_status;
  ASSERT_TRUE(reply.ok()) << reply.status();
  const std::string expected = Expected(data);
  ASSERT_EQ(reply->size(), expected.size());
  const auto diff = std::mismatch(reply->begin(), reply->end(), expected.begin());
  EXPECT_TRUE(diff.first == reply->end())
      << "first difference at byte " << (diff.first - reply->begin());
}

TEST_P(UringLeversTest, TwentyConcurrentClientsWithPipelinedRequests) {
  constexpr int kClients = 20;
  constexpr int kRounds = 20;
  constexpr int kPipeline = 8;
  std::vector<std::string> failures(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
      if (!fd.ok()) {
        failures[c] = std::string(fd.status().message());
        return;
      }
      for (int r = 0; r < kRounds; ++r) {
        std::string batch;
        for (int p = 0; p < kPipeline; ++p) absl::StrAppend(&batch, "c", c, " r", r, " p", p, "\n");
        absl::StatusOr<std::string> reply = RoundTrip(fd->get(), batch);
        if (!reply.ok() || *reply != Expected(batch)) {
          failures[c] =
              reply.ok() ? "wrong reply: " + *reply : std::string(reply.status().message());
          return;
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(failures[c], "") << "client " << c;
}

TEST_P(UringLeversTest, HalfCloseDeliversAllOutputThenEof) {
  Fd fd = Tcp();
  const std::string request = RandomBytes(300'000, 5);
  ASSERT_TRUE(SendAll(fd.get(), request.data(), request.size()).ok());
  ASSERT_EQ(::shutdown(fd.get(), SHUT_WR), 0);
  absl::StatusOr<std::string> reply = RecvUntilEof(fd.get());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_TRUE(*reply == Expected(request)) << "got " << reply->size() << " bytes";
}

INSTANTIATE_TEST_SUITE_P(Levers, UringLeversTest, ::testing::Values("none", "all"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param);
                         });

}  // namespace
}  // namespace upcase
