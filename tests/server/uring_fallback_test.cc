// What happens when io_uring cannot be used: `--backend=uring` fails with one clear line, and the
// default backend falls back to epoll with a one-line notice and still serves. The failure is
// simulated with deny-io-uring (tests/support), which runs the server under a seccomp filter that
// makes io_uring_setup fail as on a kernel without io_uring (ENOSYS) or in a container that
// forbids it (EPERM); the server itself has no test hook.
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/backend.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using ::upcase::testing::BinaryPath;
using ::upcase::testing::ConnectTcp;
using ::upcase::testing::ConnectUdp;
using ::upcase::testing::Outcome;
using ::upcase::testing::RoundTrip;
using ::upcase::testing::ServerProcess;
using ::upcase::testing::StartServer;

std::vector<std::string> Denied(const char* err) {
  return {BinaryPath("deny-io-uring"), absl::StrCat("--errno=", err)};
}

Outcome RunDenied(const char* err, const std::vector<std::string>& args) {
  std::vector<std::string> argv = Denied(err);
  argv.push_back(BinaryPath("upcase-server"));
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::RunToExit(argv);
}

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

class UringFallbackTest : public ::testing::TestWithParam<const char*> {
 protected:
  // The errno io_uring_setup fails with, and the text the server must report for it.
  const char* err() const { return GetParam(); }
  std::string ErrText() const {
    return std::strcmp(err(), "ENOSYS") == 0 ? std::strerror(ENOSYS) : std::strerror(EPERM);
  }
};

TEST_P(UringFallbackTest, ForcedUringExitsWithOneLineNamingTheCause) {
  const Outcome o = RunDenied(err(), {"--backend=uring", "0"});
  EXPECT_NE(o.exit_code, 0);
  EXPECT_NE(o.exit_code, -1) << "did not exit by itself";
  EXPECT_EQ(o.stdout_text, "") << "no ready line";
  EXPECT_EQ(Lines(o.stderr_text), 1) << o.stderr_text;
  EXPECT_NE(o.stderr_text.find("backend 'uring' unavailable: io_uring_setup: " + ErrText()),
            std::string::npos)
      << o.stderr_text;
}

TEST_P(UringFallbackTest, DefaultFallsBackToEpollWithANoticeAndServes) {
  absl::StatusOr<ServerProcess> server = StartServer({"--bind=127.0.0.1"}, Denied(err()));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(server->backend, "epoll") << server->ready_line;

  const std::string notice = server->process.Stderr();
  EXPECT_EQ(Lines(notice), 1) << notice;
  EXPECT_NE(notice.find("using backend epoll: uring unavailable (io_uring_setup: " + ErrText()),
            std::string::npos)
      << notice;

  absl::StatusOr<Fd> tcp = ConnectTcp(server->tcp_port);
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  EXPECT_EQ(RoundTrip(tcp->get(), "still served over tcp\n").value_or(""),
            "STILL SERVED OVER TCP\n");
  absl::StatusOr<Fd> udp = ConnectUdp(server->udp_port);
  ASSERT_TRUE(udp.ok()) << udp.status();
  const std::string datagram = "and over udp";
  ASSERT_EQ(::send(udp->get(), datagram.data(), datagram.size(), 0),
            static_cast<ssize_t>(datagram.size()));
  char reply[64];
  const ssize_t n = ::recv(udp->get(), reply, sizeof reply, 0);
  ASSERT_GT(n, 0) << std::strerror(errno);
  EXPECT_EQ(std::string(reply, static_cast<std::size_t>(n)), "AND OVER UDP");

  absl::StatusOr<int> status = server->Stop();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << server->process.Stderr();
}

TEST_P(UringFallbackTest, HelpMarksUringUnavailableWithTheReason) {
  const Outcome o = RunDenied(err(), {"--help"});
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_NE(o.stdout_text.find("[unavailable: io_uring_setup: " + ErrText()), std::string::npos)
      << o.stdout_text;
}

INSTANTIATE_TEST_SUITE_P(SetupFailsWith, UringFallbackTest, ::testing::Values("ENOSYS", "EPERM"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param);
                         });

// Without the filter, on a kernel that has what uring needs, the default is uring, silently.
TEST(UringDefaultTest, DefaultIsUringWhereAvailable) {
  const BackendInfo* uring = nullptr;
  for (const BackendInfo& info : Backends()) {
    if (info.name == "uring") uring = &info;
  }
  ASSERT_NE(uring, nullptr) << "uring is not registered";
  if (absl::Status s = uring->available(); !s.ok()) GTEST_SKIP() << s;
  absl::StatusOr<ServerProcess> server = StartServer({"--bind=127.0.0.1"});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(server->backend, "uring") << server->ready_line;
  EXPECT_EQ(server->process.Stderr(), "");
  absl::StatusOr<int> status = server->Stop();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << server->process.Stderr();
}

}  // namespace
}  // namespace upcase
