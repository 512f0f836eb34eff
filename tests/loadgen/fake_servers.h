// Misbehaving uppercase servers for upcase-load's tests, run as threads of the test process on
// 127.0.0.1 and an ephemeral port: one that stalls once for a known time, one that corrupts one
// byte, one that cuts its replies into tiny writes, one that stops answering after a number of
// bytes, one that resets a connection it stopped answering, and a UDP one that drops, duplicates or
// reorders datagrams, or stops answering. Each stops (and joins its threads) in its destructor.
#ifndef UPCASE_TESTS_LOADGEN_FAKE_SERVERS_H_
#define UPCASE_TESTS_LOADGEN_FAKE_SERVERS_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/net.h"

namespace upcase::testing {

struct FakeTcpOptions {
  // When the server's total reply stream (all connections) reaches this byte, every connection
  // stops answering for `stall`.
  std::uint64_t stall_at_byte = UINT64_MAX;
  absl::Duration stall = absl::ZeroDuration();
  // This byte of the total reply stream is sent with its lowest bit flipped.
  std::uint64_t corrupt_at_byte = UINT64_MAX;
  // Non-zero: replies go out in sends of 1..max_write bytes (random), and requests are read in
  // chunks of at most read_chunk bytes, so messages never line up with requests.
  std::size_t max_write = 0;
  std::size_t read_chunk = 64 * 1024;
  // Each connection's reply stream ends after this many bytes: the server keeps reading, and
  // never answers the rest.
  std::uint64_t answer_bytes_per_connection = UINT64_MAX;
  // The first connection whose reply stream reaches this many bytes stops answering there, as
  // above, and is reset (RST) `reset_after` later, with what it was sent unanswered; every other
  // connection is answered in full. A server that fails one connection mid-stream.
  std::uint64_t reset_first_at_byte = UINT64_MAX;
  absl::Duration reset_after = absl::ZeroDuration();
};

class FakeTcpServer {
 public:
  static absl::StatusOr<std::unique_ptr<FakeTcpServer>> Start(const FakeTcpOptions& options);
  ~FakeTcpServer();
  std::uint16_t port() const { return port_; }

 private:
  explicit FakeTcpServer(const FakeTcpOptions& options) : options_(options) {}
  void AcceptLoop();
  void Serve(Fd conn, std::uint32_t seed);

  const FakeTcpOptions options_;
  Fd listener_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> reply_bytes_{0};
  std::atomic<std::int64_t> stall_until_ns_{0};
  std::atomic<bool> reset_taken_{false};  // a connection has reached reset_first_at_byte
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> connections_;
};

struct FakeUdpOptions {
  int drop_every = 0;       // drop datagram N, 2N, 3N ... (counting every datagram received)
  int duplicate_every = 0;  // answer datagram N, 2N ... twice
  // Hold each odd-numbered load datagram (those starting with a byte >= 0x80) and answer it
  // after the next one.
  bool swap_pairs = false;
  // Answer only the first N datagrams (0: all of them); the later ones are read and ignored.
  std::uint64_t answer_first = 0;
};

class FakeUdpServer {
 public:
  static absl::StatusOr<std::unique_ptr<FakeUdpServer>> Start(const FakeUdpOptions& options);
  ~FakeUdpServer();
  std::uint16_t port() const { return port_; }

 private:
  explicit FakeUdpServer(const FakeUdpOptions& options) : options_(options) {}
  void Loop();

  const FakeUdpOptions options_;
  Fd socket_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A TCP and UDP port on 127.0.0.1 with nothing listening (bound, then closed).
absl::StatusOr<std::uint16_t> UnusedPort();

}  // namespace upcase::testing

#endif  // UPCASE_TESTS_LOADGEN_FAKE_SERVERS_H_
