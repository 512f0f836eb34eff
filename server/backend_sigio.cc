// sigio: one thread, signal-driven I/O (UNIX Network Programming §6.2 and §25): the kernel sends
// a signal when a socket changes state, and the thread takes the signals one by one.
//
// The model: every socket is given a real-time signal to raise (F_SETSIG), an owner to raise it
// at (F_SETOWN_EX: this thread), and O_ASYNC. The signal stays blocked, so no handler ever runs:
// the thread takes each one from its queue with sigtimedwait(), and the signal's siginfo says
// which descriptor it is about (si_fd) and what happened (si_band: the poll bits). A real-time
// signal is queued once per event, not merged like SIGIO, so none is lost while the queue has
// room. When it has none (RLIMIT_SIGPENDING), the kernel sends a plain SIGIO instead: events were
// dropped, so the thread throws the queue away and sweeps every socket with one poll(2), as the
// servers that used this model (phhttpd, the Linux 2.4 "RT signal" web servers) did; each sweep
// counts in sigio_sweeps. How a ready socket is served (accept under the limits, read, answer,
// queue, flush, UDP in batches, idle timeout, shutdown) is shared with epoll, poll and select:
// server/readiness_shard.h.
//
// The trade-off: nothing is copied into the kernel per wait (unlike poll and select) and nothing
// scans idle sockets, but every event costs a signal dequeued with its own system call, and a
// signal marks a change, not a state: it says "data arrived", once, not "data is waiting". A
// handler that stops early (its fairness budget, a full output queue) and a socket watched anew
// would each lose what is left, so after serving a batch of signals the thread looks again, with
// poll() and no timeout, at the descriptors it served or re-armed, and serves those still ready:
// readiness is only ever lost to an edge, never to the thread's own choices. Setting a socket up
// costs three fcntl() calls per connection. One thread: --shards does not apply.
//
// Not every descriptor can raise a signal: sockets and pipes can (the stop request is a pipe for
// that reason), but a timerfd cannot, so --idle-timeout's tick is a deadline of the wait instead.
//
// Kernel needs: F_SETSIG and F_SETOWN_EX (Linux 2.6.32), sigtimedwait(2), poll(2), and what the
// shared reactor uses (recvmmsg/sendmmsg, timerfd).
// Try it: upcase-server --backend=sigio 5050, then `nc 127.0.0.1 5050` in a few terminals;
// `strace -e trace=rt_sigtimedwait -p <pid>` shows one siginfo, si_fd and si_band per event.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/net.h"
#include "common/sys.h"
#include "server/backend.h"
#include "server/readiness_shard.h"
#include "server/sharded_backend.h"

namespace upcase {
namespace {

// Signals served before the thread looks again at the descriptors it served, even if more are
// queued: a connection cut short by its fairness budget waits at most this long.
constexpr int kSignalsPerRecheck = 64;
// The shared reactor speaks epoll's event bits; si_band carries poll's, the same numbers.
constexpr std::uint32_t kEventBits = EPOLLIN | EPOLLOUT | EPOLLERR | EPOLLHUP;
static_assert(POLLIN == EPOLLIN && POLLOUT == EPOLLOUT && POLLERR == EPOLLERR &&
              POLLHUP == EPOLLHUP);

// The real-time signal every socket raises. glibc's SIGRTMIN already skips the ones it keeps.
int SocketSignal() { return SIGRTMIN; }

class SigioShard : public ReadinessShard {
 public:
  using ReadinessShard::ReadinessShard;

  // The loop: take a signal and serve its descriptor; when none is queued, look again at what was
  // served; when there is nothing to look at either, sleep in sigtimedwait().
  absl::Status Run() override {
    if (absl::Status s = TakeSignals(); !s.ok()) return s;
    // Events before the signals were armed raised none: look at everything once.
    if (absl::Status s = Sweep(); !s.ok()) return s;
    int since_recheck = 0;
    while (serving()) {
      siginfo_t info;
      const int sig = TakeSignal(recheck_.empty() ? WaitMs() : 0, &info);
      if (sig < 0) return ErrnoError("sigtimedwait", errno);
      absl::Status s;
      if (sig == SIGIO) {
        s = Resync();  // the queue overflowed: events were dropped
      } else if (sig != 0) {
        s = ServeSignal(info);
      }
      // Look again once the queue is empty, or after a long run of signals.
      if (s.ok() && !recheck_.empty() && (sig == 0 || ++since_recheck >= kSignalsPerRecheck)) {
        s = Recheck();
        since_recheck = 0;
      }
      if (!s.ok()) return s;
      if (absl::Status t = TickIfDue(); !t.ok()) return t;
      if (absl::Status t = HandleTimers(); !t.ok()) return t;
    }
    return absl::OkStatus();
  }

 private:
  struct Entry {
    bool watched = false;
    bool recheck = false;  // in recheck_
    Source source = Source::kStop;
    std::uint32_t events = 0;  // what the shared reactor wants to hear about
  };

  // ---- the kernel interface ----

  absl::Status Watch(int fd, std::uint32_t events, Source source) override {
    if (static_cast<std::size_t>(fd) >= entries_.size()) entries_.resize(fd + 1);
    entries_[fd] = {true, false, source, events};
    if (source == Source::kIdleTick) return ScheduleTick(fd);
    if (owner_ == 0) return absl::OkStatus();  // Init(), before Run(): armed by TakeSignals()
    if (absl::Status s = RaiseSignals(fd); !s.ok()) return s;
    MarkForRecheck(fd);  // what arrived before O_ASYNC raised nothing
    return absl::OkStatus();
  }

  absl::Status Rewatch(int fd, std::uint32_t events, Source /*source*/) override {
    entries_[fd].events = events;
    if (events != 0) MarkForRecheck(fd);  // what arrived while nobody listened raised its signal
    return absl::OkStatus();
  }

  absl::Status Unwatch(int fd, bool closing) override {
    entries_[fd].watched = false;
    if (fd == idle_timer_) idle_timer_ = -1;
    // close() takes the descriptor off the signal list; one that stays open (the stop pipe) is
    // taken off here. Its signals still queued are stale: ServeSignal() skips them.
    if (closing || owner_ == 0 || entries_[fd].source == Source::kIdleTick) {
      return absl::OkStatus();
    }
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_ASYNC) != 0) {
      return ErrnoError("fcntl F_SETFL ~O_ASYNC", errno);
    }
    return absl::OkStatus();
  }

  // Blocks the signals on this thread (they are only ever taken with sigtimedwait) and makes
  // every descriptor watched so far raise them here.
  absl::Status TakeSignals() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SocketSignal());
    sigaddset(&signals_, SIGIO);
    if (int err = ::pthread_sigmask(SIG_BLOCK, &signals_, nullptr); err != 0) {
      return ErrnoError("pthread_sigmask", err);
    }
    owner_ = ::gettid();
    for (std::size_t fd = 0; fd < entries_.size(); ++fd) {
      if (!entries_[fd].watched || entries_[fd].source == Source::kIdleTick) continue;
      if (absl::Status s = RaiseSignals(static_cast<int>(fd)); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // Accepted sockets inherit none of this from the listener, so every connection costs these.
  absl::Status RaiseSignals(int fd) {
    if (::fcntl(fd, F_SETSIG, SocketSignal()) != 0) return ErrnoError("fcntl F_SETSIG", errno);
    const f_owner_ex owner{F_OWNER_TID, owner_};
    if (::fcntl(fd, F_SETOWN_EX, &owner) != 0) return ErrnoError("fcntl F_SETOWN_EX", errno);
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_ASYNC) != 0) {
      return ErrnoError("fcntl F_SETFL O_ASYNC", errno);
    }
    return absl::OkStatus();
  }

  // ---- taking signals ----

  // The next queued signal in *info, waiting up to `timeout_ms` (-1: forever) for one: the signal
  // number, 0 when none came, -1 on error (errno).
  int TakeSignal(int timeout_ms, siginfo_t* info) {
    timespec timeout{timeout_ms / 1000, (timeout_ms % 1000) * 1'000'000L};
    const int sig = ::sigtimedwait(&signals_, info, timeout_ms < 0 ? nullptr : &timeout);
    if (sig < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    return sig;
  }

  absl::Status ServeSignal(const siginfo_t& info) {
    // From the kernel's F_SETSIG path si_code is the POLL_* reason; anything else (a signal
    // someone sent by hand) names no descriptor: look at everything.
    if (info.si_code < POLL_IN || info.si_code > POLL_HUP) return Sweep();
    return Serve(info.si_fd, static_cast<std::uint32_t>(info.si_band) & kEventBits);
  }

  absl::Status Serve(int fd, std::uint32_t events) {
    // A signal queued before its descriptor was closed (and perhaps reused) costs at most a read
    // that says EAGAIN (readiness_shard.h).
    if (fd < 0 || static_cast<std::size_t>(fd) >= entries_.size() || !entries_[fd].watched) {
      return absl::OkStatus();
    }
    const Source source = entries_[fd].source;
    if (source == Source::kConnection || source == Source::kListener || source == Source::kUdp) {
      MarkForRecheck(fd);  // its handler may stop before the socket is drained
    }
    return Dispatch(source, fd, events);
  }

  void MarkForRecheck(int fd) {
    if (entries_[fd].recheck) return;
    entries_[fd].recheck = true;
    recheck_.push_back(fd);
  }

  // Looks at the descriptors served or re-armed since the last look, and serves those still
  // ready (they are marked again, until one look finds them drained).
  absl::Status Recheck() {
    candidates_.clear();
    for (int fd : recheck_) {
      entries_[fd].recheck = false;
      if (entries_[fd].watched) candidates_.push_back(fd);
    }
    recheck_.clear();
    return PollAndServe();
  }

  // The signal queue overflowed: the kernel dropped events and sent SIGIO. The signals still
  // queued describe the past, so they are thrown away (ignoring a signal discards its queue),
  // then every descriptor is looked at.
  absl::Status Resync() {
    ++stats_.sigio_sweeps;
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    struct sigaction previous {};
    if (::sigaction(SocketSignal(), &ignore, &previous) != 0 ||
        ::sigaction(SocketSignal(), &previous, nullptr) != 0) {
      return ErrnoError("sigaction", errno);
    }
    return Sweep();
  }

  absl::Status Sweep() {
    candidates_.clear();
    for (std::size_t fd = 0; fd < entries_.size(); ++fd) {
      if (entries_[fd].watched) candidates_.push_back(static_cast<int>(fd));
    }
    return PollAndServe();
  }

  // One poll() over candidates_, no timeout; serves the ready ones. The timer has its deadline.
  absl::Status PollAndServe() {
    pollfds_.clear();
    for (int fd : candidates_) {
      if (entries_[fd].source == Source::kIdleTick) continue;
      pollfds_.push_back({fd, static_cast<short>(entries_[fd].events), 0});
    }
    if (pollfds_.empty()) return absl::OkStatus();
    int n;
    do {
      n = ::poll(pollfds_.data(), pollfds_.size(), 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return ErrnoError("poll", errno);
    for (const pollfd& p : pollfds_) {  // serving one may close others: Serve() checks
      if (p.revents == 0) continue;
      if (absl::Status s = Serve(p.fd, static_cast<std::uint32_t>(p.revents) & kEventBits);
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // ---- --idle-timeout: a timerfd raises no signal, so its expiry bounds the wait ----

  absl::Status ScheduleTick(int fd) {
    itimerspec left;
    if (::timerfd_gettime(fd, &left) != 0) return ErrnoError("timerfd_gettime", errno);
    idle_timer_ = fd;
    next_tick_ns_ =
        MonotonicNanos() + absl::ToInt64Nanoseconds(absl::DurationFromTimespec(left.it_value));
    return absl::OkStatus();
  }

  absl::Status TickIfDue() {
    if (idle_timer_ < 0 || MonotonicNanos() < next_tick_ns_) return absl::OkStatus();
    const int fd = idle_timer_;
    if (absl::Status s = Dispatch(Source::kIdleTick, fd, EPOLLIN); !s.ok()) return s;
    return idle_timer_ == fd ? ScheduleTick(fd) : absl::OkStatus();
  }

  // The shared reactor's deadline, or the next idle tick if sooner.
  int WaitMs() const {
    const int ms = TimeoutMs();
    if (idle_timer_ < 0) return ms;
    const std::int64_t left = next_tick_ns_ - MonotonicNanos();
    const int tick_ms = left <= 0 ? 0 : static_cast<int>((left + 999'999) / 1'000'000);
    return ms < 0 ? tick_ms : std::min(ms, tick_ms);
  }

  sigset_t
      signals_{};    // the socket signal and SIGIO: blocked on this thread, taken by sigtimedwait
  pid_t owner_ = 0;  // the thread the signals go to; 0 until Run() starts
  std::vector<Entry> entries_;     // by descriptor
  std::vector<int> recheck_;       // descriptors to look at again; entries_[fd].recheck
  std::vector<int> candidates_;    // reused by Recheck() and Sweep()
  std::vector<pollfd> pollfds_;    // reused by PollAndServe()
  int idle_timer_ = -1;            // the idle timerfd, or -1
  std::int64_t next_tick_ns_ = 0;  // when idle_timer_ next expires (MonotonicNanos)
};

}  // namespace

BackendInfo SigioBackendInfo() {
  return {"sigio",
          "signal-driven I/O: one thread, F_SETSIG real-time signals, a poll(2) sweep on overflow",
          /*sharded=*/false,
          /*reactor=*/true,
          [] { return absl::OkStatus(); },
          &OneShardBackend<SigioShard>};
}

}  // namespace upcase
