#include "loadgen/run.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/env.h"
#include "common/procfs.h"
#include "common/sys.h"
#include "common/uppercase.h"
#include "loadgen/hdr_log.h"
#include "loadgen/hiccup_recorder.h"
#include "loadgen/host.h"
#include "loadgen/worker.h"

namespace upcase::load {
namespace {

// What the probe sends: lowercase so that a server that echoes without uppercasing is caught
// before any load is generated.
constexpr char kProbe[] = "upcase-load probe: is the uppercase service there?\n";
constexpr int kUdpProbeAttempts = 3;
// File descriptors needed beyond one per connection (epoll sets, stdio, the log files).
constexpr std::uint64_t kSpareFds = 64;

// Waits until fd is ready for `events`; false on timeout.
bool PollFor(int fd, short events, std::int64_t deadline_ns) {
  while (true) {
    const std::int64_t left_ms = (deadline_ns - MonotonicNanos() + 999'999) / 1'000'000;
    if (left_ms <= 0) return false;
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left_ms, INT32_MAX)));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return false;
  }
}

// One request over a fresh connection: the run starts only against a live, correct server.
absl::Status ProbeTcp(const SocketAddress& addr, absl::Duration timeout) {
  const std::string where = absl::StrCat("tcp ", addr.ToString());
  const std::int64_t deadline = MonotonicNanos() + absl::ToInt64Nanoseconds(timeout);
  Fd fd(::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket", errno);
  if (::connect(fd.get(), addr.get(), addr.size()) != 0 && errno != EINPROGRESS) {
    return ErrnoError(absl::StrCat("connect ", where), errno);
  }
  if (!PollFor(fd.get(), POLLOUT, deadline)) {
    return absl::DeadlineExceededError(
        absl::StrCat("connect ", where, ": no answer within ", absl::FormatDuration(timeout)));
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) return ErrnoError(absl::StrCat("connect ", where), err);
  const std::string probe = kProbe;
  if (::send(fd.get(), probe.data(), probe.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(probe.size())) {
    return ErrnoError(absl::StrCat("send ", where), errno);
  }
  std::string reply;
  char buf[256];
  while (reply.size() < probe.size()) {
    if (!PollFor(fd.get(), POLLIN, deadline)) {
      return absl::DeadlineExceededError(
          absl::StrCat(where, ": no reply to a probe within ", absl::FormatDuration(timeout)));
    }
    const ssize_t got = ::recv(fd.get(), buf, sizeof buf, 0);
    if (got == 0) return absl::UnavailableError(absl::StrCat(where, ": closed by the server"));
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoError(absl::StrCat("recv ", where), errno);
    }
    reply.append(buf, static_cast<std::size_t>(got));
  }
  if (reply != UppercaseCopy(probe)) {
    return absl::DataLossError(absl::StrCat(where, ": the reply to a probe was not its uppercase"));
  }
  return absl::OkStatus();
}

absl::Status ProbeUdp(const SocketAddress& addr, absl::Duration timeout) {
  const std::string where = absl::StrCat("udp ", addr.ToString());
  Fd fd(::socket(addr.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket", errno);
  if (::connect(fd.get(), addr.get(), addr.size()) != 0) {
    return ErrnoError(absl::StrCat("connect ", where), errno);
  }
  const std::string probe = kProbe;
  for (int attempt = 0; attempt < kUdpProbeAttempts; ++attempt) {
    if (::send(fd.get(), probe.data(), probe.size(), 0) < 0) {
      if (errno == ECONNREFUSED) break;
      return ErrnoError(absl::StrCat("send ", where), errno);
    }
    const std::int64_t deadline = MonotonicNanos() + absl::ToInt64Nanoseconds(timeout);
    if (!PollFor(fd.get(), POLLIN, deadline)) continue;  // lost: UDP may drop; try again
    char buf[512];
    const ssize_t got = ::recv(fd.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (got < 0 && errno == ECONNREFUSED) {
      return absl::UnavailableError(
          absl::StrCat("no UDP server at ", addr.ToString(), " (port unreachable)"));
    }
    if (got < 0) return ErrnoError(absl::StrCat("recv ", where), errno);
    if (std::string(buf, static_cast<std::size_t>(got)) != UppercaseCopy(probe)) {
      return absl::DataLossError(
          absl::StrCat(where, ": the reply to a probe was not its uppercase"));
    }
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat("no UDP server at ", addr.ToString(), " (",
                                             kUdpProbeAttempts, " probes unanswered within ",
                                             absl::FormatDuration(timeout), " each)"));
}

absl::StatusOr<SocketAddress> FindServer(const Config& c) {
  absl::StatusOr<std::vector<SocketAddress>> addrs = Resolve(c.host, c.port, c.proto);
  if (!addrs.ok()) return addrs.status();
  absl::Status last = absl::NotFoundError(absl::StrCat("no address for '", c.host, "'"));
  for (const SocketAddress& addr : *addrs) {
    last = c.proto == Transport::kTcp ? ProbeTcp(addr, c.timeout) : ProbeUdp(addr, c.timeout);
    if (last.ok()) return addr;
  }
  return last;
}

// False when a signal asked to stop first.
bool SleepUntilUnix(double unix_s) {
  timespec ts;
  ts.tv_sec = static_cast<time_t>(unix_s);
  ts.tv_nsec = static_cast<long>((unix_s - std::floor(unix_s)) * 1e9);
  while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    if (StopRequestedAt() != 0) return false;
  }
  return StopRequestedAt() == 0;
}

// `start` and `end`: the interval's bounds in seconds after the window's start.
void PrintProgress(const Config& c, double start, double end, const Stats& s,
                   const std::vector<CpuNoise>& cpus) {
  const double rate = static_cast<double>(s.counters.requests) / (end - start);
  std::string line =
      absl::StrFormat("upcase-load: [%6.1fs] %10.1f req/s  p50 %8.1f us  p99 %8.1f us  errors %d",
                      end, rate, s.latency.ValueAtPercentile(50) / 1000.0,
                      s.latency.ValueAtPercentile(99) / 1000.0, s.counters.errors_total());
  if (s.counters.failed > 0) absl::StrAppend(&line, "  failed ", s.counters.failed);
  if (s.counters.mismatches > 0) absl::StrAppend(&line, "  MISMATCHES ", s.counters.mismatches);
  if (c.proto == Transport::kUdp) absl::StrAppend(&line, "  lost ", s.counters.udp_lost);
  if (c.open_loop()) absl::StrAppendFormat(&line, "  (requested %.1f req/s)", c.rate);
  if (c.hiccups) absl::StrAppendFormat(&line, "  hiccup max %.1f us", s.hiccups.max() / 1000.0);
  double steal = 0, foreign = 0;
  for (const CpuNoise& n : cpus) {
    steal = std::max(steal, n.steal_pct);
    foreign = std::max(foreign, n.foreign_pct);
  }
  if (!cpus.empty())
    absl::StrAppendFormat(&line, "  steal %.1f %%  foreign %.1f %%", steal, foreign);
  std::fprintf(stderr, "%s\n", line.c_str());
}

// Thread i's share of the connections, its CPU, and the server.
std::vector<WorkerPlan> PlanWorkers(const Config& c, const SocketAddress& target) {
  const int threads = static_cast<int>(c.threads);
  std::vector<WorkerPlan> plans(static_cast<std::size_t>(threads));
  for (int i = 0; i < threads; ++i) {
    WorkerPlan& p = plans[i];
    p.index = i;
    p.first_channel = static_cast<int>(c.connections * i / threads);
    p.channels = static_cast<int>(c.connections * (i + 1) / threads) - p.first_channel;
    if (!c.cpus.empty()) p.cpu = c.cpus[static_cast<std::size_t>(i) % c.cpus.size()];
    p.target = target;
  }
  return plans;
}

// The hiccup recorders' CPUs: one per distinct CPU of --cpus the threads use, pinned there; without
// --cpus, one unpinned recorder per thread, at most one per CPU this process may use.
std::vector<std::optional<int>> PlanRecorders(const Config& c) {
  std::vector<std::optional<int>> cpus;
  if (!c.hiccups) return cpus;
  if (!c.cpus.empty()) {
    std::vector<int> used;
    for (std::size_t i = 0; i < c.cpus.size() && i < static_cast<std::size_t>(c.threads); ++i) {
      used.push_back(c.cpus[i]);
    }
    std::sort(used.begin(), used.end());
    used.erase(std::unique(used.begin(), used.end()), used.end());
    cpus.assign(used.begin(), used.end());
    return cpus;
  }
  absl::StatusOr<std::vector<int>> allowed = AllowedCpus();
  const std::int64_t n = std::min<std::int64_t>(
      c.threads, allowed.ok() ? static_cast<std::int64_t>(allowed->size()) : 1);
  cpus.resize(static_cast<std::size_t>(std::max<std::int64_t>(n, 1)));
  return cpus;
}

// Starts one load thread per plan. They block SIGINT and SIGTERM (they inherit the mask), so the
// main thread receives them, even while it sleeps until --start-at.
absl::Status StartWorkers(const Config& c, const std::vector<WorkerPlan>& plans,
                          const std::vector<std::optional<int>>& recorders,
                          Coordinator& coordinator, std::vector<WorkerResult>& results,
                          std::vector<std::thread>* workers) {
  sigset_t stop_signals, previous;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (const int rc = pthread_sigmask(SIG_BLOCK, &stop_signals, &previous); rc != 0) {
    return ErrnoError("pthread_sigmask", rc);
  }
  workers->reserve(plans.size() + recorders.size());
  for (std::size_t i = 0; i < plans.size(); ++i) {
    workers->emplace_back(RunWorker, std::cref(c), std::cref(plans[i]), std::ref(coordinator),
                          &results[i]);
  }
  // Lanes after the load threads' (Coordinator).
  for (std::size_t r = 0; r < recorders.size(); ++r) {
    workers->emplace_back(RunHiccupRecorder, std::cref(c), static_cast<int>(plans.size() + r),
                          recorders[r], std::ref(coordinator));
  }
  if (const int rc = pthread_sigmask(SIG_SETMASK, &previous, nullptr); rc != 0) {
    return ErrnoError("pthread_sigmask", rc);
  }
  return absl::OkStatus();
}

// --start-at: sleeps until then. An error when a signal asked to stop first.
absl::Status WaitForStartAt(const Config& c) {
  if (c.start_at <= 0) return absl::OkStatus();
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  if (c.start_at <= now) {
    std::fprintf(stderr, "upcase-load: --start-at was %.1f s ago; starting now\n",
                 now - c.start_at);
    return absl::OkStatus();
  }
  if (!c.quiet) {
    std::fprintf(stderr, "upcase-load: connected; starting in %.1f s (--start-at)\n",
                 c.start_at - now);
  }
  if (!SleepUntilUnix(c.start_at)) return absl::CancelledError("interrupted before --start-at");
  return absl::OkStatus();
}

void AnnounceStart(const Config& c, const SocketAddress& target) {
  if (c.quiet) return;
  const std::string load = c.open_loop() ? absl::StrFormat("open loop at %.1f req/s", c.rate)
                                         : absl::StrCat("closed loop, pipeline ", c.pipeline);
  std::fprintf(
      stderr, "%s\n",
      absl::StrFormat("upcase-load: %s %s, %d connection%s on %d thread%s, %s; %s "
                      "warmup, then %s",
                      TransportName(c.proto), target.ToString(), c.connections,
                      c.connections == 1 ? "" : "s", c.threads, c.threads == 1 ? "" : "s", load,
                      absl::FormatDuration(c.warmup), absl::FormatDuration(c.duration))
          .c_str());
}

// The window measured: --duration, or up to a stop request (empty when it came in the warmup).
std::int64_t WindowLengthNs(const Config& c, std::int64_t window_start_ns) {
  const std::int64_t full = absl::ToInt64Nanoseconds(c.duration);
  const std::int64_t stop = StopRequestedAt();
  return stop == 0 ? full : std::clamp<std::int64_t>(stop - window_start_ns, 0, full);
}

// False when a stop request cut the sleep short (or came before it: after a stop the intervals
// left are taken at once).
bool SleepUntilMonotonic(std::int64_t ns) {
  if (StopRequestedAt() != 0) return false;
  timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    if (StopRequestedAt() != 0) return false;
  }
  return true;
}

// The host's CPUs of the run (common/procfs.h), sampled by the main thread at the window's start
// and at every interval's end: the load's CPUs (--cpus, else every CPU it may use) and the
// server's (--server-cpus, else --server-pid's affinity). upcase-load's own threads and the
// server's are not foreign.
class HostWatch {
 public:
  explicit HostWatch(const Config& c) {
    pids_.push_back(::getpid());
    std::vector<int> load = c.cpus;
    if (load.size() > static_cast<std::size_t>(c.threads)) load.resize(c.threads);
    if (load.empty()) load = AllowedCpus().value_or(std::vector<int>{});
    std::vector<int> server = c.server_cpus;
    if (c.server_pid != 0) {
      pids_.push_back(static_cast<pid_t>(c.server_pid));
      if (server.empty()) {
        for (const TaskTicks& t : ReadProcessTasks("", static_cast<pid_t>(c.server_pid))) {
          server.insert(server.end(), t.allowed.begin(), t.allowed.end());
        }
      }
    }
    watched_ = WatchedCpus(load, server);
    for (const auto& [cpu, role] : watched_) cpus_.push_back(cpu);
  }

  HostSample Sample() const { return SampleHost("", pids_); }
  void SampleStart() { start_ = last_ = end_ = Sample(); }

  // The interval [from, to] (seconds into the window) ended when `now` was sampled: its figures.
  std::vector<CpuNoise> EndInterval(HostSample now, double from, double to,
                                    const Histogram& hiccups, bool hiccups_on) {
    std::vector<CpuNoise> noise = CpuNoiseBetween(last_, now, cpus_);
    if (to > from) {
      nlohmann::json cpus = nlohmann::json::array();
      for (const CpuNoise& n : noise) {
        cpus.push_back({{"cpu", n.cpu},
                        {"steal_pct", n.steal_pct},
                        {"irq_pct", n.irq_pct},
                        {"foreign_pct", n.foreign_pct},
                        {"foreign_exact", n.foreign_exact}});
      }
      intervals_.push_back(
          {{"start_s", from},
           {"end_s", to},
           {"hiccup_us", hiccups_on ? HiccupSummaryJson(hiccups) : nlohmann::json(nullptr)},
           {"cpus", cpus},
           {"involuntary_switches", InvoluntarySwitchesBetween(last_, now, pids_[0])}});
      end_ = now;
    }
    last_ = std::move(now);
    return noise;
  }

  HostFigures Finish(const Config& c, Histogram hiccups) const {
    HostFigures h;
    h.present = true;
    h.hiccups_on = c.hiccups;
    h.hiccups = std::move(hiccups);
    const std::vector<CpuNoise> window = CpuNoiseBetween(start_, end_, cpus_);
    for (const CpuNoise& n : window) {
      const auto it = std::find_if(watched_.begin(), watched_.end(),
                                   [&](const auto& w) { return w.first == n.cpu; });
      h.cpus.push_back({n, it == watched_.end() ? "" : it->second});
    }
    h.involuntary_switches = InvoluntarySwitchesBetween(start_, end_, pids_[0]);
    h.intervals = intervals_;
    return h;
  }

 private:
  std::vector<pid_t> pids_;  // upcase-load first
  std::vector<std::pair<int, std::string>> watched_;
  std::vector<int> cpus_;
  HostSample start_, last_, end_;
  nlohmann::json intervals_ = nlohmann::json::array();
};

// Takes every interval as the threads publish it: a progress line, --hdr-log lines, and the run's
// total. The last interval comes when the drain is over.
absl::Status TakeIntervals(const Config& c, Coordinator& coordinator, std::int64_t window_start_ns,
                           HdrLogWriter* log, HostWatch* host, Stats* total) {
  absl::Status log_status;
  Stats s;
  SleepUntilMonotonic(window_start_ns);
  host->SampleStart();
  for (std::int64_t k = 1; k <= coordinator.intervals(); ++k) {
    // The host is sampled at the interval's end, not when its figures come in: the last
    // interval's come after the drain.
    SleepUntilMonotonic(window_start_ns + IntervalEndNs(c, k));
    const double from = absl::ToDoubleSeconds(c.interval) * static_cast<double>(k - 1);
    const double to =
        static_cast<double>(std::min(IntervalEndNs(c, k), WindowLengthNs(c, window_start_ns))) /
        1e9;
    HostSample sample = host->Sample();
    coordinator.TakeInterval(k, &s);
    total->Add(s);
    const std::vector<CpuNoise> noise =
        host->EndInterval(std::move(sample), from, to, s.hiccups, c.hiccups);
    if (to > from) {  // else after a stop request
      if (!c.quiet) PrintProgress(c, from, to, s, noise);
      if (log != nullptr && log_status.ok()) {
        log_status = log->Write(from, to - from, s.latency);
        if (log_status.ok()) {
          log_status = log->Write(from, to - from, s.latency_uncorrected, "uncorrected");
        }
      }
    }
    s.Reset();
  }
  return log_status;
}

Report Summarize(const Config& c, Stats total, const std::vector<WorkerResult>& results,
                 double measure_unix, std::int64_t window_ns, const HostWatch& host,
                 nlohmann::json env) {
  Report r;
  r.env = std::move(env);
  r.host = host.Finish(c, std::move(total.hiccups));
  r.config = c.ToJson();
  r.start_unix_s = measure_unix;
  r.duration_s = static_cast<double>(window_ns) / 1e9;
  r.stopped_early = StopRequestedAt() != 0;
  r.warmup_s = absl::ToDoubleSeconds(c.warmup);
  r.threads = c.threads;
  r.connections = c.connections;
  r.open_loop = c.open_loop();
  r.requested_rps = c.rate;
  r.counters = total.counters;
  r.latency = std::move(total.latency);
  r.latency_uncorrected = std::move(total.latency_uncorrected);
  r.send_lag = std::move(total.send_lag);
  for (const WorkerResult& w : results) {
    r.client_cpu_s += w.cpu_seconds;
    r.client_spin_s += w.spin_seconds;
    if (r.first_error.empty()) r.first_error = w.first_error;
    if (r.first_mismatch.empty()) r.first_mismatch = w.first_mismatch;
  }
  if (r.duration_s > 0) {
    r.throughput_rps = static_cast<double>(r.counters.requests) / r.duration_s;
    r.bytes_per_s = static_cast<double>(r.counters.bytes_received) / r.duration_s;
    r.sent_rps = static_cast<double>(r.counters.sent) / r.duration_s;
  }
  r.client_cpu_total_s = CpuSeconds(RUSAGE_SELF);
  return r;
}

}  // namespace

absl::StatusOr<Report> RunLoad(const Config& c) {
  absl::StatusOr<SocketAddress> target = FindServer(c);
  if (!target.ok()) return target.status();
  const std::uint64_t fd_limit = RaiseFdLimit();
  if (static_cast<std::uint64_t>(c.connections) + kSpareFds > fd_limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat("--connections=", c.connections, " needs about ", c.connections + kSpareFds,
                     " file descriptors; the limit is ", fd_limit, " (raise it with ulimit -n)"));
  }

  // Before any thread of the run starts: its io_uring probe and /proc scan stay out of the window.
  nlohmann::json env = EnvFingerprint();
  HostWatch host(c);
  const std::vector<WorkerPlan> plans = PlanWorkers(c, *target);
  const std::vector<std::optional<int>> recorders = PlanRecorders(c);
  std::vector<WorkerResult> results(plans.size());
  Coordinator coordinator(static_cast<int>(plans.size() + recorders.size()), IntervalCount(c));
  std::vector<std::thread> workers;
  auto join_all = [&] {
    for (std::thread& t : workers) t.join();
  };
  // Before the start, any failure calls the run off: the threads return from AwaitStart.
  auto call_off = [&](const absl::Status& why) {
    coordinator.Abort();
    join_all();
    return why;
  };
  if (absl::Status s = StartWorkers(c, plans, recorders, coordinator, results, &workers); !s.ok()) {
    return call_off(s);
  }
  if (absl::Status s = coordinator.AwaitReady(); !s.ok()) return call_off(s);
  if (absl::Status s = WaitForStartAt(c); !s.ok()) return call_off(s);

  const double measure_unix =
      absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()) + absl::ToDoubleSeconds(c.warmup);
  std::optional<HdrLogWriter> log;
  if (!c.hdr_log_path.empty()) {
    absl::StatusOr<HdrLogWriter> w = HdrLogWriter::Open(
        c.hdr_log_path, measure_unix,
        "[upcase-load: latency in ns; untagged: from the intended send time (coordinated "
        "omission corrected); Tag=uncorrected: from the actual send]");
    if (!w.ok()) return call_off(w.status());
    log.emplace(*std::move(w));
  }
  AnnounceStart(c, *target);
  const std::int64_t start_ns = MonotonicNanos();
  const std::int64_t window_start_ns = start_ns + absl::ToInt64Nanoseconds(c.warmup);
  coordinator.Start(start_ns);

  Stats total;
  absl::Status log_status = TakeIntervals(c, coordinator, window_start_ns,
                                          log.has_value() ? &*log : nullptr, &host, &total);
  join_all();
  if (log.has_value() && log_status.ok()) log_status = log->Close();
  if (!log_status.ok()) return log_status;
  return Summarize(c, std::move(total), results, measure_unix, WindowLengthNs(c, window_start_ns),
                   host, std::move(env));
}

}  // namespace upcase::load
