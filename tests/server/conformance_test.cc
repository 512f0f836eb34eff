// The backend conformance suite: the service's contract (docs/upcase-server.md, "The service"),
// checked over real loopback sockets against a real upcase-server process for every registered
// backend. A new backend joins by registering in server/registry.cc; sharded backends run with 1
// and 4 shards.
#include <sys/socket.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/backend.h"
#include "tests/support/test_util.h"

namespace upcase {
namespace {

using ::upcase::testing::ConnectTcp;
using ::upcase::testing::ConnectUdp;
using ::upcase::testing::RandomBytes;
using ::upcase::testing::RecvExactly;
using ::upcase::testing::RecvUntilEof;
using ::upcase::testing::RoundTrip;
using ::upcase::testing::ServerProcess;
using ::upcase::testing::StartServer;

struct Variant {
  std::string backend;
  int shards;
};

std::vector<Variant> AllVariants() {
  std::vector<Variant> out;
  for (const BackendInfo& info : Backends()) {
    if (!info.available().ok()) continue;  // e.g. uring on a kernel without io_uring
    if (info.sharded) {
      out.push_back({std::string(info.name), 1});
      out.push_back({std::string(info.name), 4});
    } else {
      out.push_back({std::string(info.name), 1});
    }
  }
  return out;
}

class ConformanceTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    absl::StatusOr<ServerProcess> server =
        StartServer({absl::StrCat("--backend=", GetParam().backend),
                     absl::StrCat("--shards=", GetParam().shards), "--bind=127.0.0.1"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::make_unique<ServerProcess>(*std::move(server));
  }

  void TearDown() override {
    if (server_ == nullptr) return;
    absl::StatusOr<int> status = server_->Stop();
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
        << "wait status " << *status << "; stderr: " << server_->process.Stderr();
  }

  Fd Tcp() {
    absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
    EXPECT_TRUE(fd.ok()) << fd.status();
    return fd.ok() ? *std::move(fd) : Fd();
  }

  std::unique_ptr<ServerProcess> server_;
};

TEST_P(ConformanceTest, ReadyLineNamesBackendAndBothProtocols) {
  EXPECT_EQ(server_->backend, GetParam().backend);
  EXPECT_EQ(server_->shards, GetParam().shards);
  EXPECT_NE(server_->tcp_port, 0);
  EXPECT_EQ(server_->tcp_port, server_->udp_port) << server_->ready_line;
}

TEST_P(ConformanceTest, TcpRoundTrip) {
  Fd fd = Tcp();
  absl::StatusOr<std::string> reply = RoundTrip(fd.get(), "eecs563 Hello, World! 123 \xc3\xa9\n");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(*reply, "EECS563 HELLO, WORLD! 123 \xc3\xa9\n");
}

TEST_P(ConformanceTest, ManyLinesOnOneConnection) {
  Fd fd = Tcp();
  for (int i = 0; i < 2000; ++i) {
    const std::string line = absl::StrCat("line number ", i, " of many, mixed Case\n");
    absl::StatusOr<std::string> reply = RoundTrip(fd.get(), line);
    ASSERT_TRUE(reply.ok()) << "line " << i << ": " << reply.status();
    ASSERT_EQ(*reply, testing::Expected(line));
  }
}

TEST_P(ConformanceTest, RequestWrittenOneByteAtATime) {
  Fd fd = Tcp();
  const std::string request = "one byte at a time, please\n";
  for (char c : request) ASSERT_EQ(::send(fd.get(), &c, 1, MSG_NOSIGNAL), 1);
  absl::StatusOr<std::string> reply = RecvExactly(fd.get(), request.size());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(*reply, testing::Expected(request));
}

TEST_P(ConformanceTest, EightMebibytesOfRandomBytesVerified) {
  Fd fd = Tcp();
  const std::string data = RandomBytes(8 << 20, 563);
  // Write and read concurrently: the server echoes as it reads, so a writer that never reads
  // would deadlock against full socket buffers.
  absl::Status write_status;
  std::thread writer([&] {
    constexpr size_t kChunk = 100'003;  // deliberately not a power of two
    for (size_t off = 0; off < data.size() && write_status.ok(); off += kChunk) {
      write_status = SendAll(fd.get(), data.data() + off, std::min(kChunk, data.size() - off));
    }
  });
  absl::StatusOr<std::string> reply = RecvExactly(fd.get(), data.size());
  writer.join();
  ASSERT_TRUE(write_status.ok()) << write_status;
  ASSERT_TRUE(reply.ok()) << reply.status();
  const std::string expected = testing::Expected(data);
  ASSERT_EQ(reply->size(), expected.size());
  const auto diff = std::mismatch(reply->begin(), reply->end(), expected.begin());
  EXPECT_TRUE(diff.first == reply->end())
      << "first difference at byte " << (diff.first - reply->begin());
}

TEST_P(ConformanceTest, FiftyConcurrentClientsAllComplete) {
  constexpr int kClients = 50;
  constexpr int kRequests = 20;
  std::atomic<int> completed{0};
  std::vector<std::thread> clients;
  std::vector<std::string> failures(kClients);
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      absl::StatusOr<Fd> fd = ConnectTcp(server_->tcp_port);
      if (!fd.ok()) {
        failures[c] = std::string(fd.status().message());
        return;
      }
      for (int r = 0; r < kRequests; ++r) {
        const std::string request = absl::StrCat("client ", c, " request ", r, " xyz\n");
        absl::StatusOr<std::string> reply = RoundTrip(fd->get(), request);
        if (!reply.ok() || *reply != testing::Expected(request)) {
          failures[c] =
              reply.ok() ? "wrong reply: " + *reply : std::string(reply.status().message());
          return;
        }
      }
      ++completed;
    });
  }
  for (std::thread& t : clients) t.join();
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(failures[c], "") << "client " << c;
  EXPECT_EQ(completed.load(), kClients);
}

TEST_P(ConformanceTest, HalfCloseDeliversAllOutputThenEof) {
  Fd fd = Tcp();
  const std::string data = RandomBytes(300'000, 7) + "tail in lowercase";
  ASSERT_TRUE(SendAll(fd.get(), data.data(), data.size()).ok());
  ASSERT_EQ(::shutdown(fd.get(), SHUT_WR), 0);
  absl::StatusOr<std::string> reply = RecvUntilEof(fd.get());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->size(), data.size());
  EXPECT_TRUE(*reply == testing::Expected(data));
}

TEST_P(ConformanceTest, UdpDatagramsOfEdgeSizes) {
  absl::StatusOr<Fd> fd = ConnectUdp(server_->udp_port);
  ASSERT_TRUE(fd.ok()) << fd.status();
  const int buf = 1 << 20;
  ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  ::setsockopt(fd->get(), SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  for (size_t size : {0, 1, 1472, 65507}) {
    const std::string request = RandomBytes(size, static_cast<std::uint32_t>(size));
    ASSERT_EQ(::send(fd->get(), request.data(), request.size(), 0),
              static_cast<ssize_t>(request.size()));
    std::string reply(65536, '\0');
    const ssize_t n = ::recv(fd->get(), reply.data(), reply.size(), 0);
    ASSERT_GE(n, 0) << "size " << size << ": " << std::strerror(errno);
    reply.resize(static_cast<size_t>(n));
    EXPECT_EQ(reply.size(), size);
    EXPECT_TRUE(reply == testing::Expected(request)) << "size " << size;
  }
}

TEST_P(ConformanceTest, UdpRepliesGoToTheirSource) {
  constexpr int kClients = 6;
  constexpr int kRounds = 30;
  std::vector<Fd> fds;
  for (int c = 0; c < kClients; ++c) {
    absl::StatusOr<Fd> fd = ConnectUdp(server_->udp_port);
    ASSERT_TRUE(fd.ok()) << fd.status();
    fds.push_back(*std::move(fd));
  }
  for (int r = 0; r < kRounds; ++r) {
    // All clients send before any reads, so replies to different sources interleave.
    for (int c = 0; c < kClients; ++c) {
      const std::string request = absl::StrCat("from client ", c, " round ", r);
      ASSERT_GT(::send(fds[c].get(), request.data(), request.size(), 0), 0);
    }
    for (int c = 0; c < kClients; ++c) {
      char buf[256];
      const ssize_t n = ::recv(fds[c].get(), buf, sizeof buf, 0);
      ASSERT_GT(n, 0) << "client " << c << " round " << r << ": " << std::strerror(errno);
      EXPECT_EQ(std::string(buf, static_cast<size_t>(n)),
                testing::Expected(absl::StrCat("from client ", c, " round ", r)));
    }
  }
}

TEST_P(ConformanceTest, LabClientThroughAPipe) {
  for (const char* proto : {"tcp", "udp"}) {
    testing::Subprocess client;
    ASSERT_TRUE(client
                    .Start({testing::BinaryPath("upcase-client"), proto, "127.0.0.1",
                            absl::StrCat(server_->tcp_port)},
                           /*pipe_stdin=*/true)
                    .ok());
    ASSERT_TRUE(client.WriteStdin("eecs563\nMixed case & symbols *!\n\n").ok());
    client.CloseStdin();
    absl::StatusOr<std::string> out = client.ReadAll();
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_NE(out->find("Local address: 127.0.0.1:"), std::string::npos) << *out;
    EXPECT_NE(out->find(absl::StrCat("Foreign address: 127.0.0.1:", server_->tcp_port)),
              std::string::npos)
        << *out;
    EXPECT_NE(out->find("Please enter the statement: Return text from the server: EECS563\n"),
              std::string::npos)
        << *out;
    EXPECT_NE(out->find("Return text from the server: MIXED CASE & SYMBOLS *!\n"),
              std::string::npos)
        << *out;
    absl::StatusOr<int> status = client.Wait();
    ASSERT_TRUE(status.ok());
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << proto << client.Stderr();
  }
}

// upcase-client sends and receives at once (poll): a line far larger than the socket buffers
// between it and the server comes back whole. Sending all of it before reading deadlocks: the
// server stops reading while its replies wait for the client to read them. The 8 MiB fit
// into loopback's autotuned buffers here (tcp_rmem up to 32 MiB); the old client hung from
// 16 MiB on, so the test sends 32.
TEST_P(ConformanceTest, LabClientHandlesA32MebibyteLine) {
  std::string line(32 << 20, '\0');
  for (std::size_t i = 0; i < line.size(); ++i) line[i] = static_cast<char>('a' + i % 26);
  testing::Subprocess client;
  ASSERT_TRUE(client
                  .Start({testing::BinaryPath("upcase-client"), "tcp", "127.0.0.1",
                          absl::StrCat(server_->tcp_port)},
                         /*pipe_stdin=*/true)
                  .ok());
  absl::Status write_status;
  std::thread writer([&] {
    write_status = client.WriteStdin(line + "\n");
    client.CloseStdin();
  });
  absl::StatusOr<std::string> out = client.ReadAll(absl::Seconds(30));
  writer.join();
  ASSERT_TRUE(write_status.ok()) << write_status;
  ASSERT_TRUE(out.ok()) << out.status() << " (the client deadlocked?) " << client.Stderr();
  const std::string reply = absl::StrCat("Return text from the server: ", testing::Expected(line));
  EXPECT_NE(out->find(reply + "\n"), std::string::npos)
      << out->size() << " bytes of output; stderr: " << client.Stderr();
  absl::StatusOr<int> status = client.Wait();
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << client.Stderr();
}

INSTANTIATE_TEST_SUITE_P(AllBackends, ConformanceTest, ::testing::ValuesIn(AllVariants()),
                         [](const ::testing::TestParamInfo<Variant>& p) {
                           return absl::StrCat(p.param.backend, "_shards", p.param.shards);
                         });

}  // namespace
}  // namespace upcase
