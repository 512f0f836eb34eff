// upcase-server: the uppercase service over TCP and UDP with a choice of I/O model.
//
//   upcase-server 5050                     # the lab's server, best backend, TCP+UDP on 5050
//   upcase-server --backend=threads 0      # port 0: the "ready" line tells the chosen port
//
// main() parses flags, opens the backend's sockets, prints the ready line, then waits for
// SIGINT/SIGTERM (through a signalfd, so no code runs in signal context) and asks the backend
// to shut down gracefully.
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/flags.h"
#include "common/net.h"
#include "common/sys.h"
#include "nlohmann/json.hpp"
#include "server/backend.h"
#include "server/config.h"
#include "server/hiccups.h"
#include "server/limits.h"
#include "server/sharded_backend.h"
#include "server/uring_levers.h"

namespace upcase {
namespace {

constexpr char kProgram[] = "upcase-server";
// Beyond the backend's own grace period, how long main waits before declaring shutdown stuck.
constexpr absl::Duration kShutdownWatchdogSlack = absl::Seconds(3);

// Bounds of the size flags, checked at start (README "Limits and failure behaviour"): values
// beyond them are typos or would fail later, inside a shard (--conn-buffer=1024G is one
// allocation per connection).
constexpr std::int64_t kMaxConnsLimit = 10'000'000;
constexpr std::int64_t kMaxShards = 1024;
constexpr std::uint64_t kMinConnBuffer = 1024;
constexpr std::uint64_t kMaxConnBuffer = std::uint64_t{1} << 30;
constexpr std::uint64_t kMinOutputBudget = 64 << 10;
constexpr std::uint64_t kMaxOutputBudget = std::uint64_t{1} << 40;
constexpr std::uint64_t kMinUdpRcvbuf = 1024;  // the kernel raises it to its own minimum (4.5K)
constexpr std::uint64_t kMaxUdpRcvbuf = std::uint64_t{1} << 30;
constexpr absl::Duration kMaxGrace = absl::Hours(1);
constexpr absl::Duration kMaxIdleTimeout = absl::Hours(24);
constexpr absl::Duration kMaxUringMinWait = absl::Milliseconds(10);
// The value of --max-conns-per-ip and --output-budget that asks for the default.
constexpr char kAuto[] = "auto";

std::string UsageText() {
  std::string backends;
  for (const BackendInfo& b : Backends()) {
    absl::Status available = b.available();
    absl::StrAppend(&backends, "  ", b.name, std::string(10 - b.name.size(), ' '), b.summary,
                    available.ok() ? "" : absl::StrCat(" [unavailable: ", available.message(), "]"),
                    "\n");
  }
  return absl::StrCat(
      "usage: upcase-server [flags] PORT\n\n"
      "Serves the uppercase service (a..z -> A..Z, every other byte unchanged) over TCP and UDP\n"
      "on PORT (0 = pick a free port). Prints one line when ready, e.g.\n"
      "  ready backend=epoll shards=2 tcp=0.0.0.0:5050 udp=0.0.0.0:5050\n"
      "and exits 0 on SIGINT/SIGTERM after delivering the output it has produced.\n\n"
      "Backends (I/O models):\n",
      backends);
}

struct Options {
  std::string backend;
  std::int64_t shards = 0;
  std::string proto = "both";
  std::string bind = "0.0.0.0";
  bool pin = false;
  std::int64_t max_conns = kDefaultMaxConns;
  std::string max_conns_per_ip = kAuto;
  std::string per_ip_prefix = "32,64";
  std::uint64_t conn_buffer = kDefaultConnBuffer;
  std::string output_budget = kAuto;
  absl::Duration idle_timeout = kDefaultIdleTimeout;
  std::string stats_json;
  absl::Duration grace = kDefaultGrace;
  bool sqpoll = false;
  std::string uring_levers = "default";
  absl::Duration uring_min_wait = absl::Microseconds(50);
  bool hiccups = false;
  bool udp_reflection_guard = true;
  std::uint64_t udp_rcvbuf = kDefaultUdpRcvbuf;
};

// A bad command line: one line on stderr, exit status 2.
[[noreturn]] void CommandLineError(absl::string_view message) {
  std::fprintf(stderr, "%s: %s\n", kProgram, std::string(message).c_str());
  std::exit(2);
}

// A byte count as --help writes it: with the largest suffix that divides it exactly.
std::string FormatBytes(std::uint64_t n) {
  for (const auto& [shift, suffix] : {std::pair{30, "G"}, std::pair{20, "M"}, std::pair{10, "K"}}) {
    if (n != 0 && n % (std::uint64_t{1} << shift) == 0) return absl::StrCat(n >> shift, suffix);
  }
  return absl::StrCat(n);
}

void CheckBytes(absl::string_view flag, std::uint64_t value, std::uint64_t min, std::uint64_t max) {
  if (value < min) {
    CommandLineError(
        absl::StrCat("--", flag, "=", FormatBytes(value), ": at least ", FormatBytes(min)));
  }
  if (value > max) {
    CommandLineError(
        absl::StrCat("--", flag, "=", FormatBytes(value), ": at most ", FormatBytes(max)));
  }
}

void CheckDuration(absl::string_view flag, absl::Duration value, absl::Duration max) {
  if (value > max) {  // also "inf"
    CommandLineError(absl::StrCat("--", flag, "=", absl::FormatDuration(value), ": at most ",
                                  absl::FormatDuration(max)));
  }
}

std::vector<std::string> ParseFlags(int argc, char** argv, Options& o) {
  FlagSet flags(kProgram, UsageText());
  std::vector<std::string> names;
  for (const BackendInfo& b : Backends()) names.emplace_back(b.name);
  flags.String("backend", &o.backend, "I/O model; default: best available (uring, else epoll)",
               names);
  flags.Int("shards", &o.shards, 0, kMaxShards,
            "reactor threads for epoll/uring; 0 = the CPUs this process may use");
  flags.String("proto", &o.proto, "protocols to serve", {"tcp", "udp", "both"});
  flags.String("bind", &o.bind, "local address, IPv4 or IPv6 (e.g. ::1)");
  flags.Bool("pin", &o.pin, "pin shard i to the i-th CPU this process may use (epoll/uring)");
  flags.Int("max-conns", &o.max_conns, 1, kMaxConnsLimit,
            "TCP connections served at once; over it new ones are closed at once");
  flags.String("max-conns-per-ip", &o.max_conns_per_ip,
               "TCP connections from one client address at once, over all shards; over it new "
               "ones are closed at once; auto = a quarter of --max-conns, 0 = no limit");
  flags.String("per-ip-prefix", &o.per_ip_prefix,
               "V4,V6: what --max-conns-per-ip counts as one client address: the first V4 bits "
               "of an IPv4 address (IPv4-mapped IPv6 included), the first V6 bits of an IPv6 one");
  flags.Bytes("conn-buffer", &o.conn_buffer,
              "cap on unsent output per connection (1K..1G); above it the server stops reading "
              "it");
  flags.String(
      "output-budget", &o.output_budget,
      "the reactors (epoll/uring/poll/select/sigio): unsent output of all of a shard's connections "
      "(64K..1024G); over it those holding the most stop being read; auto = RAM/8/shards "
      "within 32M..1G, "
      "0 = none");
  flags.Duration("idle-timeout", &o.idle_timeout,
                 "close a TCP connection that neither sends nor reads for this long (at most "
                 "24h; 0 = never)");
  flags.String("stats-json", &o.stats_json, "write the per-shard counters to FILE at exit");
  flags.Duration("grace", &o.grace,
                 "at shutdown, how long to spend delivering pending output (at most 1h)");
  flags.Bool("udp-reflection-guard", &o.udp_reflection_guard,
             "UDP: refuse a datagram that is the very reply sent to its source (address and port) "
             "within the last second, which only a loop (a forged datagram between two "
             "uppercase or echo services) or a client echoing replies back sends; off: answer it");
  flags.Bytes("udp-rcvbuf", &o.udp_rcvbuf,
              "UDP: each socket's receive buffer (1K..1G), room for bursts; without root at most "
              "net.core.rmem_max; 0 = the kernel's default; the size obtained is in --stats-json "
              "(udp_rcvbuf)");
  flags.Bool("sqpoll", &o.sqpoll, "uring: let a kernel thread poll the submission queue");
  flags.String("uring-levers", &o.uring_levers,
               absl::StrCat("uring: optional io_uring features, to measure each: default, all, "
                            "none, or a comma-separated list of ",
                            AllUringLeverNames(),
                            ", each -NAME to drop it (e.g. default,-ring-fd); default = ",
                            UringLeverNames(kDefaultUringLevers),
                            "; those in effect on this kernel are in --stats-json "
                            "(uring_levers)"));
  flags.Duration("uring-min-wait", &o.uring_min_wait,
                 "uring, lever min-wait: once a completion has arrived, how long a shard may wait "
                 "for more before handling them (1us..10ms)");
  flags.Bool("hiccups", &o.hiccups,
             "run a hiccup recorder on each CPU the server uses (a thread sleeping 1 ms, recording "
             "how late it wakes: the host's stalls); reported at exit and in --stats-json "
             "(hiccup_us)");
  return flags.ParseOrExit(argc, argv);
}

ServerConfig BuildConfig(const Options& o, const std::vector<std::string>& args) {
  if (args.size() != 1) {
    CommandLineError(args.empty()
                         ? "missing PORT (see --help)"
                         : absl::StrCat("expected one PORT, got '", absl::StrJoin(args, " "), "'"));
  }
  absl::StatusOr<std::uint16_t> port = ParsePort(args[0]);
  if (!port.ok()) CommandLineError(port.status().message());
  absl::StatusOr<SocketAddress> bind = ParseIpAddress(o.bind, *port);
  if (!bind.ok()) CommandLineError(bind.status().message());
  CheckBytes("conn-buffer", o.conn_buffer, kMinConnBuffer, kMaxConnBuffer);
  if (o.udp_rcvbuf != 0) CheckBytes("udp-rcvbuf", o.udp_rcvbuf, kMinUdpRcvbuf, kMaxUdpRcvbuf);
  CheckDuration("grace", o.grace, kMaxGrace);
  CheckDuration("idle-timeout", o.idle_timeout, kMaxIdleTimeout);
  ServerConfig config;
  config.backend = o.backend;
  config.bind = *bind;
  config.tcp = o.proto != "udp";
  config.udp = o.proto != "tcp";
  config.pin = o.pin;
  config.max_conns = static_cast<std::size_t>(o.max_conns);
  config.conn_buffer = o.conn_buffer;
  config.grace = o.grace;
  config.sqpoll = o.sqpoll;
  absl::StatusOr<unsigned> levers = ParseUringLevers(o.uring_levers);
  if (!levers.ok()) CommandLineError(levers.status().message());
  config.uring_levers = *levers;
  CheckDuration("uring-min-wait", o.uring_min_wait, kMaxUringMinWait);
  if (o.uring_min_wait < absl::Microseconds(1)) {
    CommandLineError(absl::StrCat("--uring-min-wait=", absl::FormatDuration(o.uring_min_wait),
                                  ": at least 1us"));
  }
  config.uring_min_wait = o.uring_min_wait;
  config.shards = o.shards > 0 ? static_cast<int>(o.shards) : static_cast<int>(ShardCpus().size());
  config.idle_timeout = o.idle_timeout;
  config.udp_reflection_guard = o.udp_reflection_guard;
  config.udp_rcvbuf = o.udp_rcvbuf;

  if (o.max_conns_per_ip == kAuto) {
    config.max_conns_per_ip = DefaultConnsPerIp(config.max_conns);
  } else {
    std::int64_t n = 0;
    if (!absl::SimpleAtoi(o.max_conns_per_ip, &n) || n < 0 || n > kMaxConnsLimit) {
      CommandLineError(absl::StrCat("--max-conns-per-ip='", o.max_conns_per_ip,
                                    "': expected auto or an integer from 0 to ", kMaxConnsLimit));
    }
    config.max_conns_per_ip = static_cast<std::size_t>(n);
  }
  {
    std::vector<std::string> bits = absl::StrSplit(o.per_ip_prefix, ',');
    if (bits.size() != 2 || !absl::SimpleAtoi(bits[0], &config.per_ip_prefix.ipv4_bits) ||
        !absl::SimpleAtoi(bits[1], &config.per_ip_prefix.ipv6_bits) ||
        config.per_ip_prefix.ipv4_bits < 0 || config.per_ip_prefix.ipv4_bits > 32 ||
        config.per_ip_prefix.ipv6_bits < 0 || config.per_ip_prefix.ipv6_bits > 128) {
      CommandLineError(absl::StrCat("--per-ip-prefix='", o.per_ip_prefix,
                                    "': expected V4,V6 prefix lengths, 0..32 and 0..128 "
                                    "(e.g. 32,64)"));
    }
  }
  if (o.output_budget == kAuto) {
    config.output_budget = DefaultOutputBudget(config.shards);
  } else {
    absl::StatusOr<std::uint64_t> budget = ParseBytes(o.output_budget);
    if (!budget.ok()) CommandLineError(absl::StrCat("--output-budget=", budget.status().message()));
    if (*budget != 0) CheckBytes("output-budget", *budget, kMinOutputBudget, kMaxOutputBudget);
    config.output_budget = *budget;
  }
  return config;
}

const BackendInfo& ChooseBackend(const ServerConfig& config) {
  if (!config.backend.empty()) {
    absl::StatusOr<const BackendInfo*> found = FindBackend(config.backend);
    DieIfError(kProgram, found.status());
    return **found;
  }
  std::string notice;
  const BackendInfo& chosen = DefaultBackend(&notice);
  if (!notice.empty()) std::fprintf(stderr, "%s: %s\n", kProgram, notice.c_str());
  return chosen;
}

std::string ReadyLine(const BackendInfo& info, int shards, const Endpoints& endpoints) {
  std::string line = absl::StrCat("ready backend=", info.name, " shards=", shards);
  if (endpoints.tcp) absl::StrAppend(&line, " tcp=", endpoints.tcp->ToString());
  if (endpoints.udp) absl::StrAppend(&line, " udp=", endpoints.udp->ToString());
  return line;
}

// Waits until SIGINT/SIGTERM arrives (returns true) or `done_fd` becomes readable (false).
bool WaitForSignalOrDone(int signal_fd, int done_fd) {
  pollfd fds[2] = {{signal_fd, POLLIN, 0}, {done_fd, POLLIN, 0}};
  while (true) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      DieIfError(kProgram, ErrnoError("poll", errno));
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info;
      if (read(signal_fd, &info, sizeof info) != sizeof info) {
        DieIfError(kProgram, ErrnoError("read signalfd", errno));
      }
      return true;
    }
    if (fds[1].revents & POLLIN) return false;
  }
}

bool WaitReadable(int fd, absl::Duration timeout) {
  pollfd p{fd, POLLIN, 0};
  const int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  int rc;
  do {
    rc = poll(&p, 1, ms);
  } while (rc < 0 && errno == EINTR);
  return rc > 0;
}

// --hiccups: the CPUs the shards run on -- with --pin those of the first shards, else every CPU
// this process may use (as taskset set it).
std::vector<int> HiccupCpus(const ServerConfig& config) {
  std::vector<int> cpus = ShardCpus();
  if (config.pin && config.shards < static_cast<int>(cpus.size())) cpus.resize(config.shards);
  return cpus;
}

int Main(int argc, char** argv) {
  Options options;
  std::vector<std::string> args = ParseFlags(argc, argv, options);
  ServerConfig config = BuildConfig(options, args);
  const BackendInfo& info = ChooseBackend(config);
  if (!info.sharded) {
    if (options.shards > 1 || options.pin) {
      std::fprintf(stderr,
                   "%s: note: --shards and --pin apply to epoll and uring; %s runs one "
                   "acceptor\n",
                   kProgram, std::string(info.name).c_str());
    }
    config.shards = 1;
    // poll, select and sigio queue output too: their one shard gets the whole default budget.
    if (options.output_budget == kAuto) config.output_budget = DefaultOutputBudget(1);
  }
  config.backend = std::string(info.name);

  // Signals are taken synchronously through a signalfd; every thread inherits this mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr) != 0) {
    DieIfError(kProgram, ErrnoError("pthread_sigmask", errno));
  }
  Fd signal_fd(signalfd(-1, &stop_signals, SFD_CLOEXEC));
  if (!signal_fd.valid()) DieIfError(kProgram, ErrnoError("signalfd", errno));
  Fd done_fd(eventfd(0, EFD_CLOEXEC));
  if (!done_fd.valid()) DieIfError(kProgram, ErrnoError("eventfd", errno));
  signal(SIGPIPE, SIG_IGN);  // a vanished peer is an EPIPE to handle, not a reason to die
  RaiseFdLimit();

  std::unique_ptr<Backend> backend = info.create(config);
  absl::StatusOr<Endpoints> endpoints = backend->Open();
  DieIfError(kProgram, endpoints.status());
  ServerHiccups hiccups;
  if (options.hiccups) DieIfError(kProgram, hiccups.Start(HiccupCpus(config)));
  if (endpoints->udp && config.udp_rcvbuf > 0 && endpoints->udp_rcvbuf < config.udp_rcvbuf) {
    std::fprintf(stderr,
                 "%s: note: --udp-rcvbuf=%s: the kernel granted %s (net.core.rmem_max; root may "
                 "exceed it)\n",
                 kProgram, FormatBytes(config.udp_rcvbuf).c_str(),
                 FormatBytes(endpoints->udp_rcvbuf).c_str());
  }
  std::printf("%s\n", ReadyLine(info, config.shards, *endpoints).c_str());
  std::fflush(stdout);

  absl::Status run_status;
  std::thread runner([&] {
    run_status = backend->Run();
    const std::uint64_t one = 1;
    if (write(done_fd.get(), &one, sizeof one) != sizeof one) std::abort();
  });
  if (WaitForSignalOrDone(signal_fd.get(), done_fd.get())) {
    backend->Stop();
    if (!WaitReadable(done_fd.get(), config.grace + kShutdownWatchdogSlack)) {
      std::fprintf(stderr, "%s: shutdown did not finish within the grace period (%s); exiting\n",
                   kProgram, absl::FormatDuration(config.grace).c_str());
      std::fflush(stderr);
      _exit(1);
    }
  }
  runner.join();
  hiccups.Stop();

  const std::vector<ShardStats> stats = backend->Stats();
  for (size_t i = 0; i < stats.size(); ++i) {
    std::fprintf(stderr, "%s\n", FormatShardStats(static_cast<int>(i), stats[i]).c_str());
  }
  if (options.hiccups) std::fprintf(stderr, "%s\n", hiccups.Format().c_str());
  if (!options.stats_json.empty()) {
    std::ofstream out(options.stats_json);
    nlohmann::json j = StatsToJson(config.backend, stats);
    if (endpoints->udp) j["udp_rcvbuf"] = endpoints->udp_rcvbuf;
    if (options.hiccups) j["hiccup_us"] = hiccups.ToJson();
    if (config.backend == "uring") {
      j["uring_levers"] = UringLeverNames(UringLeversInEffect(config.uring_levers, config.sqpoll));
    }
    out << j.dump(2) << "\n";
    if (!out) {
      DieIfError(kProgram, absl::UnavailableError(
                               absl::StrCat("cannot write --stats-json=", options.stats_json)));
    }
  }
  DieIfError(kProgram, run_status);
  return 0;
}

}  // namespace
}  // namespace upcase

int main(int argc, char** argv) { return upcase::Main(argc, argv); }
