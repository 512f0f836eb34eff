// One load thread: an epoll loop over many channels, as in wrk.
//
// The thread owns everything it touches -- sockets, payload pool, counters, histograms -- and
// meets the other threads only through the Coordinator: once at start, once per --interval
// (adding its figures to the board under a lock, then resetting its own), and at the end.
//
// One iteration: read the clock once; publish an interval if one ended; in open loop, enqueue
// every request now due (with its intended time, however late the thread is); flush every
// channel with something to send (one sendmsg/sendmmsg each); sleep in epoll_pwait2 until the
// next due request, interval end, or housekeeping tick, with nanosecond precision; then handle
// the events, stamping every reply in the batch with the time the batch was returned.
#include "loadgen/worker.h"

#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <functional>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/sys.h"
#include "loadgen/channel.h"
#include "loadgen/payload.h"
#include "loadgen/schedule.h"
#include "loadgen/tcp_channel.h"
#include "loadgen/udp_channel.h"

namespace upcase::load {
namespace {

constexpr int kMaxEvents = 512;
constexpr std::size_t kRecvBufferBytes = 256 * 1024;
// UDP loss detection, connect timeouts and reconnect retries run this often.
constexpr std::int64_t kHousekeepingNs = 5'000'000;
// Open loop: requests the thread may hold back in total when the server (or the pipeline cap)
// cannot keep up, about 100 MB; beyond it, scheduled requests are dropped and counted.
constexpr std::int64_t kMaxBacklogPerThread = 1 << 22;
constexpr std::int64_t kMinBacklogPerChannel = 1024;

double ThreadCpuSeconds() {
  rusage ru{};
  if (getrusage(RUSAGE_THREAD, &ru) != 0) return 0;
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// epoll_pwait2 (Linux 5.11), not epoll_wait: its timeout is a timespec, so a request due in
// 300 us goes out then and not at the next millisecond. Older kernels (or a seccomp filter that
// does not know it) get epoll_wait with the timeout rounded up to whole milliseconds.
int Wait(int epoll_fd, epoll_event* events, std::int64_t timeout_ns) {
  static std::atomic<bool> have_pwait2{true};
  if (have_pwait2.load(std::memory_order_relaxed)) {
    timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000),
                static_cast<long>(timeout_ns % 1'000'000'000)};
    const int n = ::epoll_pwait2(epoll_fd, events, kMaxEvents, &ts, nullptr);
    if (n >= 0) return n;
    if (errno != ENOSYS && errno != EPERM) return 0;  // EINTR: look at the clock again
    have_pwait2.store(false, std::memory_order_relaxed);
  }
  const std::int64_t ms = std::min<std::int64_t>((timeout_ns + 999'999) / 1'000'000, INT32_MAX);
  const int n = ::epoll_wait(epoll_fd, events, kMaxEvents, static_cast<int>(ms));
  return n < 0 ? 0 : n;
}

// Set once, from a signal handler; read once per loop iteration (a relaxed load is a plain load).
std::atomic<std::int64_t> g_stop_ns{0};
static_assert(std::atomic<std::int64_t>::is_always_lock_free);

}  // namespace

void RequestStop(std::int64_t monotonic_ns) { g_stop_ns.store(monotonic_ns); }
std::int64_t StopRequestedAt() { return g_stop_ns.load(); }

int IntervalCount(const Config& c) {
  const std::int64_t d = absl::ToInt64Nanoseconds(c.duration);
  const std::int64_t i = absl::ToInt64Nanoseconds(c.interval);
  return static_cast<int>((d + i - 1) / i);
}

std::int64_t IntervalEndNs(const Config& c, int k) {
  return std::min(absl::ToInt64Nanoseconds(c.interval) * k, absl::ToInt64Nanoseconds(c.duration));
}

void Coordinator::ReportReady(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++ready_;
  if (!status.ok() && setup_error_.ok()) setup_error_ = status;
  cv_.notify_all();
}

std::optional<std::int64_t> Coordinator::AwaitStart() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return started_ || aborted_; });
  if (aborted_) return std::nullopt;
  return start_ns_;
}

void Coordinator::Publish(int k, const Stats& stats) {
  std::lock_guard<std::mutex> lock(mu_);
  Board& b = board_[k];
  b.stats.Add(stats);
  if (++b.reports == workers_) cv_.notify_all();
}

absl::Status Coordinator::AwaitReady() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return ready_ == workers_; });
  return setup_error_;
}

void Coordinator::Start(std::int64_t start_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  started_ = true;
  start_ns_ = start_ns;
  cv_.notify_all();
}

void Coordinator::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

Stats Coordinator::TakeInterval(int k) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return board_[k].reports == workers_; });
  Stats out = std::move(board_[k].stats);
  board_.erase(k);
  return out;
}

void RunWorker(const Config& config, const WorkerPlan& plan, Coordinator& coordinator,
               WorkerResult* result) {
  auto give_up = [&](const absl::Status& status) {
    coordinator.ReportReady(status);
    (void)coordinator.AwaitStart();  // the main thread aborts on any setup error
  };
  if (plan.cpu.has_value()) {
    if (absl::Status s = PinCurrentThread(*plan.cpu); !s.ok()) return give_up(s);
  }
  // The default 50 us timer slack would let every open-loop wakeup run late by up to that much.
  if (config.open_loop() && ::prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0) != 0) {
    return give_up(ErrnoError("prctl PR_SET_TIMERSLACK", errno));
  }
  Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return give_up(ErrnoError("epoll_create1", errno));

  const std::uint64_t seed = static_cast<std::uint64_t>(MonotonicNanos()) ^
                             (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(plan.index + 1));
  const PayloadPool pool(config.size.max, seed);
  LoopContext ctx;
  ctx.config = &config;
  ctx.target = plan.target;
  ctx.epoll_fd = epoll.get();
  ctx.pool = &pool;
  ctx.rng = Rng(seed * 31 + 7);
  ctx.pipeline = config.pipeline;
  ctx.max_backlog = std::max(kMinBacklogPerChannel, kMaxBacklogPerThread / plan.channels);
  ctx.recv_buffer.resize(kRecvBufferBytes);
  std::optional<UdpBatchBuffers> udp_buffers;
  // One spare byte per datagram, so a reply longer than any request is seen as such.
  if (config.proto == Transport::kUdp) udp_buffers.emplace(config.size.max + 1);

  std::vector<std::unique_ptr<Channel>> channels;
  channels.reserve(static_cast<std::size_t>(plan.channels));
  for (int i = 0; i < plan.channels; ++i) {
    const auto id = static_cast<std::uint32_t>(i);
    if (config.proto == Transport::kTcp) {
      channels.push_back(std::make_unique<TcpChannel>(&ctx, id));
    } else {
      channels.push_back(std::make_unique<UdpChannel>(&ctx, id, &*udp_buffers));
    }
  }
  epoll_event events[kMaxEvents];
  auto dispatch = [&](int n) {
    for (int i = 0; i < n; ++i) channels[events[i].data.u64]->OnEvents(events[i].events);
  };

  // Setup: every connection established before the start, so connecting is not measured (except
  // with --reconnect, where it is the point).
  for (auto& ch : channels) {
    if (absl::Status s = ch->Open(); !s.ok()) return give_up(s);
  }
  const std::int64_t setup_deadline = MonotonicNanos() + absl::ToInt64Nanoseconds(config.timeout);
  while (ctx.setup_error.ok() &&
         !std::all_of(channels.begin(), channels.end(), [](auto& ch) { return ch->Connected(); })) {
    ctx.now = MonotonicNanos();
    if (ctx.now >= setup_deadline) {
      ctx.setup_error = absl::DeadlineExceededError(
          absl::StrCat("connect ", TransportName(config.proto), " ", plan.target.ToString(),
                       ": not connected within ", absl::FormatDuration(config.timeout)));
      break;
    }
    dispatch(Wait(epoll.get(), events, setup_deadline - ctx.now));
  }
  if (!ctx.setup_error.ok()) return give_up(ctx.setup_error);
  coordinator.ReportReady(absl::OkStatus());
  const std::optional<std::int64_t> start = coordinator.AwaitStart();
  if (!start.has_value()) return;

  ctx.stats.Reset();
  ctx.phase = Phase::kRunning;
  ctx.measure_start = *start + absl::ToInt64Nanoseconds(config.warmup);
  ctx.measure_end = ctx.measure_start + absl::ToInt64Nanoseconds(config.duration);
  std::int64_t now = MonotonicNanos();
  ctx.now = now;

  // Open loop: a min-heap of (next intended time, channel).
  using Due = std::pair<std::int64_t, std::uint32_t>;
  std::vector<Due> heap;
  std::vector<ArrivalSchedule> schedules;
  if (config.open_loop()) {
    const double per_channel = config.rate / static_cast<double>(config.connections);
    heap.reserve(channels.size());
    schedules.reserve(channels.size());
    for (std::uint32_t i = 0; i < channels.size(); ++i) {
      const double phase =
          static_cast<double>(plan.first_channel + static_cast<int>(i)) / config.connections;
      schedules.emplace_back(config.arrival, per_channel, *start, phase);
      heap.emplace_back(schedules.back().Next(ctx.rng), i);
    }
    std::make_heap(heap.begin(), heap.end(), std::greater<>());
  } else {
    for (auto& ch : channels) {
      for (std::int64_t i = 0; i < config.pipeline; ++i) ch->Enqueue(0);
    }
  }

  const int intervals = coordinator.intervals();
  int next_interval = 1;
  std::int64_t next_boundary = ctx.measure_start + IntervalEndNs(config, 1);
  std::int64_t next_housekeeping = now + kHousekeepingNs;
  std::int64_t drain_deadline = INT64_MAX;
  bool cpu_started = false;
  double cpu_start = 0;
  double cpu_end = 0;
  while (true) {
    ctx.now = now;
    if (const std::int64_t stop = g_stop_ns.load(std::memory_order_relaxed);
        stop != 0 && ctx.running() && stop < ctx.measure_end) {
      ctx.measure_end = std::max(stop, ctx.measure_start);  // the window ends here
    }
    if (!cpu_started && now >= ctx.measure_start) {
      cpu_started = true;
      cpu_start = ThreadCpuSeconds();
    }
    while (next_interval <= intervals && now >= next_boundary) {
      coordinator.Publish(next_interval, ctx.stats);
      result->total.Add(ctx.stats);
      ctx.stats.Reset();
      ++next_interval;
      next_boundary = ctx.measure_start + IntervalEndNs(config, next_interval);
    }
    if (ctx.phase == Phase::kRunning && now >= ctx.measure_end) {
      // Cut short: the rest of the intervals are published now, empty but for this one's figures.
      while (next_interval <= intervals) {
        coordinator.Publish(next_interval++, ctx.stats);
        result->total.Add(ctx.stats);
        ctx.stats.Reset();
      }
      if (!cpu_started) {
        cpu_started = true;
        cpu_start = ThreadCpuSeconds();
      }
      cpu_end = ThreadCpuSeconds();
      ctx.phase = Phase::kDraining;
      drain_deadline = now + absl::ToInt64Nanoseconds(config.timeout) + kHousekeepingNs;
    }
    if (ctx.phase == Phase::kDraining &&
        (now >= drain_deadline ||
         std::all_of(channels.begin(), channels.end(), [](auto& ch) { return ch->Idle(); }))) {
      break;
    }
    if (ctx.running()) {
      while (!heap.empty() && heap.front().first <= now) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<>());
        const auto [intended, i] = heap.back();
        heap.pop_back();
        if (ctx.InWindow(intended)) ++ctx.stats.counters.scheduled;
        channels[i]->Enqueue(intended);
        const std::int64_t next = schedules[i].Next(ctx.rng);
        if (next < ctx.measure_end) {
          heap.emplace_back(next, i);
          std::push_heap(heap.begin(), heap.end(), std::greater<>());
        }
      }
    }
    if (now >= next_housekeeping) {
      for (auto& ch : channels) ch->Housekeep();
      next_housekeeping = now + kHousekeepingNs;
    }
    for (std::size_t i = 0; i < ctx.dirty.size(); ++i) {
      Channel& ch = *channels[ctx.dirty[i]];
      if (ch.TakeDirty()) ch.Flush();
    }
    ctx.dirty.clear();

    std::int64_t wake =
        std::min(next_housekeeping, ctx.running() ? ctx.measure_end : drain_deadline);
    if (next_interval <= intervals) wake = std::min(wake, next_boundary);
    if (ctx.running() && !heap.empty()) wake = std::min(wake, heap.front().first);
    const int n = Wait(epoll.get(), events, std::max<std::int64_t>(0, wake - now));
    now = MonotonicNanos();
    ctx.now = now;
    dispatch(n);
  }
  for (auto& ch : channels) ch->Finish();
  result->total.Add(ctx.stats);
  result->cpu_seconds = cpu_end - cpu_start;
  result->first_error = ctx.first_error;
  result->first_mismatch = ctx.first_mismatch;
}

}  // namespace upcase::load
