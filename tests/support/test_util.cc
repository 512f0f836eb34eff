#include "tests/support/test_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/sys.h"
#include "gtest/gtest.h"

extern char** environ;

namespace upcase::testing {

std::string BinaryPath(const std::string& name) { return absl::StrCat(UPCASE_BIN_DIR, "/", name); }

Subprocess::Subprocess(Subprocess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      stdin_(std::move(other.stdin_)),
      stdout_(std::move(other.stdout_)),
      stdout_buffer_(std::move(other.stdout_buffer_)),
      stderr_path_(std::move(other.stderr_path_)) {}

Subprocess::~Subprocess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (!stderr_path_.empty()) ::unlink(stderr_path_.c_str());
}

absl::Status Subprocess::Start(const std::vector<std::string>& argv, bool pipe_stdin) {
  // A child that exits before reading its stdin must give WriteStdin an EPIPE error, not kill
  // the test binary with SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  int out_pipe[2];
  int in_pipe[2] = {-1, -1};
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return ErrnoError("pipe2", errno);
  if (pipe_stdin && ::pipe2(in_pipe, O_CLOEXEC) != 0) return ErrnoError("pipe2", errno);
  char path[] = "/tmp/upcase-test-stderr-XXXXXX";
  Fd err_fd(::mkstemp(path));
  if (!err_fd.valid()) return ErrnoError("mkstemp", errno);
  stderr_path_ = path;

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (pipe_stdin) {
    posix_spawn_file_actions_adddup2(&actions, in_pipe[0], 0);
  } else {
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  }
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_fd.get(), 2);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int rc = posix_spawnp(&pid_, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  stdout_.reset(out_pipe[0]);
  if (pipe_stdin) {
    ::close(in_pipe[0]);
    stdin_.reset(in_pipe[1]);
  }
  if (rc != 0) {
    pid_ = -1;
    return ErrnoError(absl::StrCat("posix_spawn ", argv[0]), rc);
  }
  return absl::OkStatus();
}

namespace {
// Waits until fd is readable or the deadline passes.
bool WaitReadable(int fd, absl::Time deadline) {
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd p{fd, POLLIN, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return false;
  }
}
}  // namespace

absl::StatusOr<std::string> Subprocess::ReadLine(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (size_t nl = stdout_buffer_.find('\n'); nl != std::string::npos) {
      std::string line = stdout_buffer_.substr(0, nl);
      stdout_buffer_.erase(0, nl + 1);
      return line;
    }
    if (!WaitReadable(stdout_.get(), deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "no line on stdout within ", absl::FormatDuration(timeout), "; stderr: ", Stderr()));
    }
    char buf[4096];
    const ssize_t n = ::read(stdout_.get(), buf, sizeof buf);
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat("stdout closed; stderr: ", Stderr()));
    }
    stdout_buffer_.append(buf, static_cast<size_t>(n));
  }
}

absl::StatusOr<std::string> Subprocess::ReadAll(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (!WaitReadable(stdout_.get(), deadline)) {
      return absl::DeadlineExceededError("stdout not closed in time");
    }
    char buf[4096];
    const ssize_t n = ::read(stdout_.get(), buf, sizeof buf);
    if (n < 0) return ErrnoError("read stdout", errno);
    if (n == 0) return std::exchange(stdout_buffer_, "");
    stdout_buffer_.append(buf, static_cast<size_t>(n));
  }
}

absl::Status Subprocess::WriteStdin(const std::string& data) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    const ssize_t n = ::write(stdin_.get(), p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write stdin", errno);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

void Subprocess::CloseStdin() { stdin_.reset(); }

void Subprocess::Signal(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

absl::StatusOr<int> Subprocess::Wait(absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("no child");
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return status;
    }
    if (r < 0 && errno != EINTR) return ErrnoError("waitpid", errno);
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("child did not exit within ", absl::FormatDuration(timeout)));
    }
    ::usleep(2000);  // polling a child's exit; nothing to synchronise with
  }
}

std::string Subprocess::Stderr() const {
  std::ifstream in(stderr_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Outcome RunToExit(const std::vector<std::string>& argv, absl::Duration timeout) {
  Subprocess p;
  Outcome out;
  if (!p.Start(argv).ok()) return out;
  out.stdout_text = p.ReadAll(timeout).value_or("");
  absl::StatusOr<int> status = p.Wait(timeout);
  if (status.ok() && WIFEXITED(*status)) out.exit_code = WEXITSTATUS(*status);
  out.stderr_text = p.Stderr();
  return out;
}

absl::StatusOr<int> ServerProcess::Stop(absl::Duration timeout) {
  process.Signal(SIGTERM);
  return process.Wait(timeout);
}

absl::StatusOr<ServerProcess> StartServer(const std::vector<std::string>& flags,
                                          const std::vector<std::string>& prefix) {
  return StartServerOnPort(flags, 0, prefix);
}

pid_t OnlyChild(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/task/", pid, "/children"));
  std::vector<pid_t> children;
  pid_t child;
  while (in >> child) children.push_back(child);
  return children.size() == 1 ? children[0] : -1;
}

absl::StatusOr<ServerProcess> StartServerOnPort(const std::vector<std::string>& flags,
                                                std::uint16_t server_port,
                                                const std::vector<std::string>& prefix) {
  ServerProcess server;
  std::vector<std::string> argv = prefix;
  argv.push_back(BinaryPath("upcase-server"));
  argv.insert(argv.end(), flags.begin(), flags.end());
  argv.push_back(absl::StrCat(server_port));
  if (absl::Status s = server.process.Start(argv); !s.ok()) return s;
  absl::StatusOr<std::string> line = server.process.ReadLine();
  if (!line.ok()) return line.status();
  server.ready_line = *line;
  // ready backend=NAME shards=N tcp=ADDR:PORT udp=ADDR:PORT
  for (absl::string_view field : absl::StrSplit(*line, ' ')) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(field, '=');
    auto port_of = [](absl::string_view addr) {
      int port = 0;
      (void)absl::SimpleAtoi(addr.substr(addr.rfind(':') + 1), &port);  // 0 fails the caller
      return static_cast<std::uint16_t>(port);
    };
    if (kv.first == "backend") server.backend = std::string(kv.second);
    if (kv.first == "shards") (void)absl::SimpleAtoi(kv.second, &server.shards);
    if (kv.first == "tcp") server.tcp_port = port_of(kv.second);
    if (kv.first == "udp") server.udp_port = port_of(kv.second);
  }
  if (!absl::StartsWith(*line, "ready ") || (server.tcp_port == 0 && server.udp_port == 0)) {
    return absl::InternalError(absl::StrCat("malformed ready line: '", *line, "'"));
  }
  return server;
}

namespace {
absl::StatusOr<Fd> Connect(std::uint16_t port, const std::string& host, Transport transport,
                           absl::Duration timeout) {
  absl::StatusOr<SocketAddress> addr = ParseIpAddress(host, port);
  if (!addr.ok()) return addr.status();
  Fd fd(::socket(addr->family(),
                 (transport == Transport::kTcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket", errno);
  const timeval tv = absl::ToTimeval(timeout);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd.get(), addr->get(), addr->size()) != 0) {
    return ErrnoError(absl::StrCat("connect ", addr->ToString()), errno);
  }
  if (transport == Transport::kTcp) {
    if (absl::Status s = SetNoDelay(fd.get()); !s.ok()) return s;
  }
  return fd;
}
}  // namespace

absl::StatusOr<Fd> ConnectTcp(std::uint16_t port, const std::string& host, absl::Duration timeout) {
  return Connect(port, host, Transport::kTcp, timeout);
}

absl::StatusOr<Fd> ConnectUdp(std::uint16_t port, const std::string& host, absl::Duration timeout) {
  return Connect(port, host, Transport::kUdp, timeout);
}

absl::StatusOr<std::string> RecvExactly(int fd, std::size_t n) {
  std::string out(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
    if (r == 0) return absl::UnavailableError(absl::StrCat("EOF after ", got, " of ", n, " bytes"));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(absl::StrCat("recv after ", got, " of ", n, " bytes"), errno);
    }
    got += static_cast<std::size_t>(r);
  }
  return out;
}

absl::StatusOr<std::string> RecvUntilEof(int fd) {
  std::string out;
  char buf[65536];
  while (true) {
    const ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r == 0) return out;
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(absl::StrCat("recv after ", out.size(), " bytes"), errno);
    }
    out.append(buf, static_cast<std::size_t>(r));
  }
}

absl::StatusOr<std::string> RoundTrip(int fd, const std::string& request) {
  if (absl::Status s = SendAll(fd, request.data(), request.size()); !s.ok()) return s;
  return RecvExactly(fd, request.size());
}

std::string Expected(absl::string_view request) {
  std::string out(request);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

std::string RandomBytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<char>(rng() & 0xFF);
  return out;
}

absl::StatusOr<int> OpenFdCount(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/fd");
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return ErrnoError(absl::StrCat("opendir ", path), errno);
  int count = 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count;
}

absl::StatusOr<std::uint64_t> RssBytes(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      std::uint64_t kb = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 6 - 3)), &kb)) {
        return kb * 1024;
      }
    }
  }
  return absl::NotFoundError("VmRSS not found");
}

std::vector<std::uint64_t> SendFromAllUntilStalled(const std::vector<Fd>& fds,
                                                   const std::string& data, absl::Duration stalled,
                                                   pid_t server, std::uint64_t* peak_rss) {
  std::vector<std::uint64_t> sent(fds.size(), 0);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    std::vector<pollfd> pfds;
    std::vector<std::size_t> who;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (sent[i] < data.size()) {
        pfds.push_back({fds[i].get(), POLLOUT, 0});
        who.push_back(i);
      }
    }
    if (pfds.empty()) break;
    const int ready =
        ::poll(pfds.data(), pfds.size(), static_cast<int>(absl::ToInt64Milliseconds(stalled)));
    if (ready < 0 && errno != EINTR) {
      ADD_FAILURE() << "poll: " << std::strerror(errno);
      break;
    }
    absl::StatusOr<std::uint64_t> rss = RssBytes(server);
    if (!rss.ok()) {
      ADD_FAILURE() << rss.status();
      break;
    }
    *peak_rss = std::max(*peak_rss, *rss);
    if (ready == 0) break;  // every sender is blocked
    for (std::size_t k = 0; k < pfds.size(); ++k) {
      if (pfds[k].revents == 0) continue;
      const std::size_t i = who[k];
      const ssize_t n = ::send(fds[i].get(), data.data() + sent[i], data.size() - sent[i],
                               MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) {
        ADD_FAILURE() << "client " << i << ": " << std::strerror(errno);
        return sent;
      }
      sent[i] += static_cast<std::uint64_t>(n);
    }
  }
  return sent;
}

std::string StatsPathForCurrentTest(absl::string_view tag) {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(::testing::TempDir(), "/", tag, "-", ::getpid(), "-",
                      absl::StrReplaceAll(info->name(), {{"/", "-"}}), ".json");
}

nlohmann::json FinishWithStats(ServerProcess& server, const std::string& stats_path,
                               absl::Duration timeout) {
  absl::StatusOr<int> status = server.process.Wait(timeout);
  EXPECT_TRUE(status.ok()) << status.status();
  if (!status.ok()) return nlohmann::json::object();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << "wait status " << *status << "; stderr: " << server.process.Stderr();
  std::ifstream in(stats_path);
  nlohmann::json stats = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(stats.is_discarded()) << "no stats in " << stats_path;
  ::unlink(stats_path.c_str());
  return stats.is_discarded() ? nlohmann::json::object() : stats;
}

sockaddr_in V4(const char* ip, std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  EXPECT_EQ(inet_pton(AF_INET, ip, &a.sin_addr), 1);
  return a;
}

sockaddr_in6 V6(const char* ip, std::uint16_t port) {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  EXPECT_EQ(inet_pton(AF_INET6, ip, &a.sin6_addr), 1);
  return a;
}

absl::Status SendForged(const std::string& src_ip, std::uint16_t src_port,
                        const std::string& dst_ip, std::uint16_t dst_port,
                        const std::string& payload) {
  Fd raw(::socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (!raw.valid()) return ErrnoError("socket(AF_INET, SOCK_RAW, IPPROTO_RAW)", errno);
  iphdr ip{};
  ip.version = 4;
  ip.ihl = sizeof ip / 4;
  ip.ttl = 64;
  ip.protocol = IPPROTO_UDP;
  ip.tot_len = htons(static_cast<std::uint16_t>(sizeof(iphdr) + sizeof(udphdr) + payload.size()));
  if (::inet_pton(AF_INET, src_ip.c_str(), &ip.saddr) != 1 ||
      ::inet_pton(AF_INET, dst_ip.c_str(), &ip.daddr) != 1) {
    return absl::InvalidArgumentError("not an IPv4 address");
  }
  udphdr udp{};
  udp.source = htons(src_port);
  udp.dest = htons(dst_port);
  udp.len = htons(static_cast<std::uint16_t>(sizeof(udphdr) + payload.size()));
  std::string packet(reinterpret_cast<const char*>(&ip), sizeof ip);
  packet.append(reinterpret_cast<const char*>(&udp), sizeof udp);
  packet.append(payload);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = ip.daddr;
  if (::sendto(raw.get(), packet.data(), packet.size(), 0, reinterpret_cast<sockaddr*>(&to),
               sizeof to) != static_cast<ssize_t>(packet.size())) {
    return ErrnoError("sendto (raw)", errno);
  }
  return absl::OkStatus();
}

}  // namespace upcase::testing
