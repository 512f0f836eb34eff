// Test support: real server processes on ephemeral ports, and socket helpers whose every
// blocking call is bounded by a timeout, so a broken server fails a test instead of hanging it.
#ifndef UPCASE_TESTS_SUPPORT_TEST_UTIL_H_
#define UPCASE_TESTS_SUPPORT_TEST_UTIL_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/net.h"
#include "nlohmann/json.hpp"

namespace upcase::testing {

// Default bound on any single blocking step of a test.
inline constexpr absl::Duration kIoTimeout = absl::Seconds(20);

// Path of a binary built next to the tests (build/<preset>/bin/NAME).
std::string BinaryPath(const std::string& name);

// A child process with pipes on stdin/stdout and stderr captured to a file.
class Subprocess {
 public:
  Subprocess() = default;
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  Subprocess(Subprocess&& other) noexcept;
  ~Subprocess();  // SIGKILLs and reaps a child still running

  // Starts argv[0] (looked up in PATH unless it contains a slash) with the arguments. stdin is a
  // pipe when `pipe_stdin`, else /dev/null.
  absl::Status Start(const std::vector<std::string>& argv, bool pipe_stdin = false);

  // Reads one line from stdout (without the newline) within `timeout`.
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout = kIoTimeout);
  // Reads stdout until EOF within `timeout`.
  absl::StatusOr<std::string> ReadAll(absl::Duration timeout = kIoTimeout);
  absl::Status WriteStdin(const std::string& data);
  void CloseStdin();

  void Signal(int sig);
  // Waits for exit within `timeout`; returns the wait status (use WIFEXITED etc.).
  absl::StatusOr<int> Wait(absl::Duration timeout = kIoTimeout);
  std::string Stderr() const;  // what the child wrote to stderr so far
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  Fd stdin_;
  Fd stdout_;
  std::string stdout_buffer_;
  std::string stderr_path_;
};

// What a command did when run to completion: its exit code (-1 if it did not exit by itself
// within the timeout or was killed by a signal), its stdout and its stderr.
struct Outcome {
  int exit_code = -1;
  std::string stdout_text;
  std::string stderr_text;
};
Outcome RunToExit(const std::vector<std::string>& argv, absl::Duration timeout = kIoTimeout);

// An upcase-server child process started with PORT 0, parsed from its ready line.
struct ServerProcess {
  Subprocess process;
  std::string ready_line;
  std::uint16_t tcp_port = 0;
  std::uint16_t udp_port = 0;
  std::string backend;
  int shards = 0;

  // SIGTERM, then the exit status within the timeout.
  absl::StatusOr<int> Stop(absl::Duration timeout = kIoTimeout);
};

// Starts upcase-server with `flags` plus the port argument "0"; waits for its ready line.
// `prefix` runs it under a wrapper command (e.g. prlimit).
absl::StatusOr<ServerProcess> StartServer(const std::vector<std::string>& flags,
                                          const std::vector<std::string>& prefix = {});
// The same on a given port (one another server got from the kernel, on another address).
absl::StatusOr<ServerProcess> StartServerOnPort(const std::vector<std::string>& flags,
                                                std::uint16_t port,
                                                const std::vector<std::string>& prefix = {});

// The one child of process `pid` (e.g. the server a wrapper such as strace started), or -1 when
// it has none yet or more than one.
pid_t OnlyChild(pid_t pid);

// Many clients that never read: sends all of `data` on every socket at once (non-blocking,
// poll), until each is done or every socket has been blocked for `stalled` (the server stopped
// reading them all), within 60 s. Samples `server`'s RSS into *peak_rss every round. Returns the
// bytes sent per socket; a failed send or RSS read fails the test.
std::vector<std::uint64_t> SendFromAllUntilStalled(const std::vector<Fd>& fds,
                                                   const std::string& data, absl::Duration stalled,
                                                   pid_t server, std::uint64_t* peak_rss);

// A --stats-json path for the running test: TempDir/<tag>-<pid>-<test name>.json.
std::string StatsPathForCurrentTest(absl::string_view tag);
// Waits for `server` to exit (after a signal the caller sent) within `timeout`, expects exit
// status 0, and returns the counters it wrote to `stats_path` (deleting the file). A failed wait
// or a missing or unparsable file fails the test and returns an empty object.
nlohmann::json FinishWithStats(ServerProcess& server, const std::string& stats_path,
                               absl::Duration timeout = kIoTimeout);

// The shared receive buffers a server's --stats-json reported at exit: uring's provided buffers,
// which grow under load up to a fixed number per shard; 0 for the other backends.
inline std::uint64_t ProvidedBufferBytes(const nlohmann::json& stats) {
  return stats.contains("total") ? stats["total"].value("provided_buffer_bytes", std::uint64_t{0})
                                 : 0;
}

// TCP/UDP sockets connected to 127.0.0.1:port (or `host`), with SO_RCVTIMEO/SO_SNDTIMEO set.
absl::StatusOr<Fd> ConnectTcp(std::uint16_t port, const std::string& host = "127.0.0.1",
                              absl::Duration timeout = kIoTimeout);
absl::StatusOr<Fd> ConnectUdp(std::uint16_t port, const std::string& host = "127.0.0.1",
                              absl::Duration timeout = kIoTimeout);

// Reads exactly n bytes (fails on EOF, error or the socket timeout).
absl::StatusOr<std::string> RecvExactly(int fd, std::size_t n);
// Reads until EOF (fails on error or the socket timeout).
absl::StatusOr<std::string> RecvUntilEof(int fd);
// Sends `request` and reads back as many bytes; the reply to a round trip.
absl::StatusOr<std::string> RoundTrip(int fd, const std::string& request);

// The service's contract written independently of common/uppercase (which the servers use), so a
// bug in the kernel cannot hide by appearing on both sides of a comparison.
std::string Expected(absl::string_view request);

// Random bytes covering all 256 values; deterministic for a seed.
std::string RandomBytes(std::size_t n, std::uint32_t seed);

// Current number of open file descriptors of a process (/proc/PID/fd), and its resident set size.
absl::StatusOr<int> OpenFdCount(pid_t pid);
absl::StatusOr<std::uint64_t> RssBytes(pid_t pid);

// RSS bounds do not hold under ASan/TSan: shadow memory (under TSan two shards' 8 MiB of touched
// uring buffers added about 40 MB of RSS) and quarantined frees. The sanitizer builds run those
// tests for everything but the RSS check; Release checks it.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// Socket addresses for tests: V4("127.0.0.1", 5050), V6("::1", 5050); Sa() views either as a
// sockaddr. A bad literal fails the calling test.
sockaddr_in V4(const char* ip, std::uint16_t port);
sockaddr_in6 V6(const char* ip, std::uint16_t port);
inline const sockaddr* Sa(const void* a) { return static_cast<const sockaddr*>(a); }

// Sends one UDP datagram with a forged source address and port, through a raw IPv4 socket
// (IPPROTO_RAW: the IP header is ours). Root only. The UDP checksum is 0, "none" over IPv4; the
// kernel fills in the IP header's.
absl::Status SendForged(const std::string& src_ip, std::uint16_t src_port,
                        const std::string& dst_ip, std::uint16_t dst_port,
                        const std::string& payload);

}  // namespace upcase::testing

#endif  // UPCASE_TESTS_SUPPORT_TEST_UTIL_H_
