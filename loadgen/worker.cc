// One load thread: an epoll loop over many channels, as in wrk.
//
// The thread owns everything it touches -- sockets, payload pool, counters -- and meets the other
// threads only through the Coordinator: once at start, once per --interval (handing its Stats
// over for an empty spare, a pointer swap), and at the end, when the last interval, which also
// holds what the drain recorded, is handed over.
//
// Its life, in the order of this file: setup (pin, epoll set, channels, every connection
// established), the schedule (open loop: a min-heap of each channel's next intended send time),
// the loop, and the finish (the drain's end: requests still unanswered are accounted for).
//
// One iteration of the loop: read the clock; publish an interval if one ended; in open loop,
// enqueue every request now due (with its intended time, however late the thread is); flush
// every channel with something to send (one sendmsg/sendmmsg each); wait in epoll_pwait2 until
// the next due request, interval end, or housekeeping tick -- asleep, or in open loop spinning
// through the last stretch before a send (pacer.h) -- then handle the events, stamping every
// reply in the batch with the time the batch was returned.
#include "loadgen/worker.h"

#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/sys.h"
#include "loadgen/channel.h"
#include "loadgen/pacer.h"
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

// epoll_pwait2 (Linux 5.11), not epoll_wait: its timeout is a timespec, so a request due in
// 300 us goes out then and not at the next millisecond. Older kernels (or a seccomp filter that
// does not know it) get epoll_wait with the timeout rounded up to whole milliseconds.
int PollEvents(int epoll_fd, epoll_event* events, std::int64_t timeout_ns) {
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

class Worker {
 public:
  Worker(const Config& config, const WorkerPlan& plan, Coordinator& coordinator,
         WorkerResult* result)
      : config_(config), plan_(plan), coordinator_(coordinator), result_(result), pacer_(config) {}

  void Run() {
    if (absl::Status s = SetUp(); !s.ok()) return ReportSetupFailure(s);
    coordinator_.ReportReady(absl::OkStatus());
    const std::optional<std::int64_t> start = coordinator_.AwaitStart();
    if (!start.has_value()) return;
    StartSchedule(*start);
    Loop();
    Finish();
  }

 private:
  // --- Setup ---------------------------------------------------------------------------------

  void ReportSetupFailure(const absl::Status& status) {
    coordinator_.ReportReady(status);
    // The main thread aborts on any setup error: this returns nullopt, nothing to act on.
    static_cast<void>(coordinator_.AwaitStart());
  }

  absl::Status SetUp() {
    if (plan_.cpu.has_value()) {
      if (absl::Status s = PinCurrentThread(*plan_.cpu); !s.ok()) return s;
    }
    // The default 50 us timer slack would let every open-loop wakeup run late by up to that much.
    if (config_.open_loop() && ::prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0) != 0) {
      return ErrnoError("prctl PR_SET_TIMERSLACK", errno);
    }
    epoll_ = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_.valid()) return ErrnoError("epoll_create1", errno);

    const std::uint64_t seed =
        static_cast<std::uint64_t>(MonotonicNanos()) ^
        (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(plan_.index + 1));
    pool_.emplace(config_.size.max, seed);
    ctx_.config = &config_;
    ctx_.target = plan_.target;
    ctx_.epoll_fd = epoll_.get();
    ctx_.pool = &*pool_;
    ctx_.rng = Rng(seed * 31 + 7);
    ctx_.stats = coordinator_.FirstStats(plan_.index);
    ctx_.pipeline = config_.pipeline;
    ctx_.max_backlog = std::max(kMinBacklogPerChannel, kMaxBacklogPerThread / plan_.channels);
    ctx_.recv_buffer.resize(kRecvBufferBytes);
    // One spare byte per datagram, so a reply longer than any request is seen as such.
    if (config_.proto == Transport::kUdp) udp_buffers_.emplace(config_.size.max + 1);

    channels_.reserve(static_cast<std::size_t>(plan_.channels));
    for (int i = 0; i < plan_.channels; ++i) {
      const auto id = static_cast<std::uint32_t>(i);
      if (config_.proto == Transport::kTcp) {
        channels_.push_back(std::make_unique<TcpChannel>(&ctx_, id));
      } else {
        channels_.push_back(std::make_unique<UdpChannel>(&ctx_, id, &*udp_buffers_));
      }
    }
    return ConnectAll();
  }

  // Every connection is established before the start, so connecting is not measured (except
  // with --reconnect, where it is the point).
  absl::Status ConnectAll() {
    for (auto& ch : channels_) {
      if (absl::Status s = ch->Open(); !s.ok()) return s;
    }
    const std::int64_t deadline = MonotonicNanos() + absl::ToInt64Nanoseconds(config_.timeout);
    while (ctx_.setup_error.ok() && !std::all_of(channels_.begin(), channels_.end(),
                                                 [](auto& ch) { return ch->Connected(); })) {
      ctx_.now = MonotonicNanos();
      if (ctx_.now >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("connect ", TransportName(config_.proto), " ", plan_.target.ToString(),
                         ": not connected within ", absl::FormatDuration(config_.timeout)));
      }
      Dispatch(PollEvents(epoll_.get(), events_, deadline - ctx_.now));
    }
    return ctx_.setup_error;
  }

  // --- The schedule --------------------------------------------------------------------------

  void StartSchedule(std::int64_t start) {
    ctx_.stats->counters = Counters{};  // what setup counted is not the run's
    ctx_.phase = Phase::kRunning;
    ctx_.measure_start = start + absl::ToInt64Nanoseconds(config_.warmup);
    ctx_.measure_end = ctx_.measure_start + absl::ToInt64Nanoseconds(config_.duration);
    ctx_.now = MonotonicNanos();
    intervals_ = coordinator_.intervals();
    next_boundary_ = ctx_.measure_start + IntervalEndNs(config_, 1);
    next_housekeeping_ = ctx_.now + kHousekeepingNs;
    if (!config_.open_loop()) {
      for (auto& ch : channels_) {
        for (std::int64_t i = 0; i < config_.pipeline; ++i) ch->Enqueue(0);
      }
      return;
    }
    const double per_channel = config_.rate / static_cast<double>(config_.connections);
    heap_.reserve(channels_.size());
    schedules_.reserve(channels_.size());
    for (std::uint32_t i = 0; i < channels_.size(); ++i) {
      const double phase =
          static_cast<double>(plan_.first_channel + static_cast<int>(i)) / config_.connections;
      schedules_.emplace_back(config_.arrival, per_channel, start, phase);
      heap_.emplace_back(schedules_.back().Next(ctx_.rng), i);
    }
    std::make_heap(heap_.begin(), heap_.end(), std::greater<>());
  }

  // Open loop: hands every request due by now, and before the window's end, to its channel.
  // False when there was none.
  bool EnqueueDue() {
    auto due = [&] {
      return !heap_.empty() && heap_.front().first <= ctx_.now &&
             heap_.front().first < ctx_.measure_end;  // a stop request may move the end earlier
    };
    if (!ctx_.running() || !due()) return false;
    while (due()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
      const auto [intended, i] = heap_.back();
      heap_.pop_back();
      if (ctx_.InWindow(intended)) ++ctx_.stats->counters.scheduled;
      channels_[i]->Enqueue(intended);
      const std::int64_t next = schedules_[i].Next(ctx_.rng);
      if (next < ctx_.measure_end) {
        heap_.emplace_back(next, i);
        std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
      }
    }
    return true;
  }

  // --- The loop ------------------------------------------------------------------------------

  void Loop() {
    while (true) {
      const std::int64_t iteration_start = ctx_.now;
      bool worked = dispatched_;  // handling the last batch of events took this iteration's time
      worked |= NoteWindowProgress();
      // Before the window's end is acted on: a thread that wakes late still sends every request
      // due inside the window.
      worked |= EnqueueDue();
      if (ctx_.running() && ctx_.now >= ctx_.measure_end) {
        EndWindow();
        worked = true;
      }
      if (ctx_.phase == Phase::kDraining && DrainOver()) return;
      if (ctx_.now >= next_housekeeping_) {
        for (auto& ch : channels_) ch->Housekeep();
        next_housekeeping_ = ctx_.now + kHousekeepingNs;
        worked = true;
      }
      worked |= FlushDirty();
      WaitForEvents(iteration_start, worked);
    }
  }

  // A stop request, the CPU clock and interval boundaries. True when an interval was published.
  bool NoteWindowProgress() {
    const std::int64_t now = ctx_.now;
    if (const std::int64_t stop = g_stop_ns.load(std::memory_order_relaxed);
        stop != 0 && ctx_.running() && stop < ctx_.measure_end) {
      ctx_.measure_end = std::max(stop, ctx_.measure_start);  // the window ends here
    }
    if (!cpu_started_ && now >= ctx_.measure_start) StartCpuClock();
    bool published = false;
    while (BoundaryPassed()) {
      coordinator_.Publish(plan_.index, next_interval_++, &ctx_.stats);
      next_boundary_ = ctx_.measure_start + IntervalEndNs(config_, next_interval_);
      published = true;
    }
    return published;
  }

  void StartCpuClock() {
    cpu_started_ = true;
    cpu_start_ = CpuSeconds(RUSAGE_THREAD);
  }

  // An interval other than the window's last one ended. The last one, which ends with the
  // window, takes in the drain too and is published by Finish().
  bool BoundaryPassed() const {
    return next_interval_ < intervals_ && ctx_.now >= next_boundary_ &&
           next_boundary_ < ctx_.measure_end;
  }

  void EndWindow() {
    if (!cpu_started_) StartCpuClock();
    result_->cpu_seconds = CpuSeconds(RUSAGE_THREAD) - cpu_start_;
    result_->spin_seconds = static_cast<double>(spin_ns_) / 1e9;
    ctx_.phase = Phase::kDraining;
    drain_deadline_ = ctx_.now + absl::ToInt64Nanoseconds(config_.drain);
  }

  bool DrainOver() const {
    return ctx_.now >= drain_deadline_ ||
           std::all_of(channels_.begin(), channels_.end(), [](auto& ch) { return ch->Idle(); });
  }

  // One sendmsg/sendmmsg per channel with something to send. False when none had.
  bool FlushDirty() {
    if (ctx_.dirty.empty()) return false;
    for (std::size_t i = 0; i < ctx_.dirty.size(); ++i) {
      Channel& ch = *channels_[ctx_.dirty[i]];
      if (ch.TakeDirty()) ch.Flush();
    }
    ctx_.dirty.clear();
    return true;
  }

  // Sleeps (or spins) until the next deadline or event, then handles the events. `worked`: this
  // iteration did more than look at the clock, so its time is not spinning.
  void WaitForEvents(std::int64_t iteration_start, bool worked) {
    std::int64_t other =
        std::min(next_housekeeping_, ctx_.running() ? ctx_.measure_end : drain_deadline_);
    if (ctx_.running() && next_interval_ < intervals_) other = std::min(other, next_boundary_);
    const std::int64_t send_due =
        ctx_.running() && !heap_.empty() ? heap_.front().first : INT64_MAX;
    // A fresh clock read: dispatching and flushing since the last one took time.
    const std::int64_t before = MonotonicNanos();
    const Pacer::Wait wait = pacer_.Next(before, send_due, other);
    const int n = PollEvents(epoll_.get(), events_, wait.timeout_ns);
    ctx_.now = MonotonicNanos();
    if (n == 0 && wait.timeout_ns > 0) pacer_.LearnOversleep(before + wait.timeout_ns, ctx_.now);
    if (n == 0 && wait.spinning && !worked && iteration_start >= ctx_.measure_start) {
      spin_ns_ += ctx_.now - iteration_start;
    }
    Dispatch(n);
    dispatched_ = n > 0;
  }

  void Dispatch(int n) {
    for (int i = 0; i < n; ++i) channels_[events_[i].data.u64]->OnEvents(events_[i].events);
  }

  // --- Finish --------------------------------------------------------------------------------

  // The drain is over: the unanswered requests are counted (and recorded) in the last interval
  // the window reached, with its replies from the drain; later intervals (after a stop request)
  // have nothing.
  void Finish() {
    for (auto& ch : channels_) ch->CloseAndCountUnanswered();
    coordinator_.Publish(plan_.index, next_interval_, &ctx_.stats);
    if (next_interval_ < intervals_)
      coordinator_.PublishNothingFrom(plan_.index, next_interval_ + 1);
    result_->first_error = ctx_.first_error;
    result_->first_mismatch = ctx_.first_mismatch;
  }

  const Config& config_;
  const WorkerPlan& plan_;
  Coordinator& coordinator_;
  WorkerResult* const result_;

  Fd epoll_;
  std::optional<PayloadPool> pool_;
  LoopContext ctx_;
  std::optional<UdpBatchBuffers> udp_buffers_;
  std::vector<std::unique_ptr<Channel>> channels_;  // indexed by epoll user data
  epoll_event events_[kMaxEvents];

  // Open loop: a min-heap of (next intended time, channel), and each channel's schedule.
  std::vector<std::pair<std::int64_t, std::uint32_t>> heap_;
  std::vector<ArrivalSchedule> schedules_;
  Pacer pacer_;

  std::int64_t intervals_ = 0;
  std::int64_t next_interval_ = 1;
  std::int64_t next_boundary_ = 0;
  std::int64_t next_housekeeping_ = 0;
  std::int64_t drain_deadline_ = INT64_MAX;
  bool cpu_started_ = false;
  double cpu_start_ = 0;
  std::int64_t spin_ns_ = 0;  // inside the window
  bool dispatched_ = false;   // the last wait returned events
};

}  // namespace

void RunWorker(const Config& config, const WorkerPlan& plan, Coordinator& coordinator,
               WorkerResult* result) {
  Worker(config, plan, coordinator, result).Run();
}

void RequestStop(std::int64_t monotonic_ns) { g_stop_ns.store(monotonic_ns); }
std::int64_t StopRequestedAt() { return g_stop_ns.load(); }

std::int64_t IntervalCount(const Config& c) {
  const std::int64_t d = absl::ToInt64Nanoseconds(c.duration);
  const std::int64_t i = absl::ToInt64Nanoseconds(c.interval);
  return (d + i - 1) / i;
}

std::int64_t IntervalEndNs(const Config& c, std::int64_t k) {
  // k <= IntervalCount + 1, so the product is below duration + 2 intervals: no overflow.
  return std::min(absl::ToInt64Nanoseconds(c.interval) * k, absl::ToInt64Nanoseconds(c.duration));
}

}  // namespace upcase::load
