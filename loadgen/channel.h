// A channel is one connection's worth of load: a TCP connection (tcp_channel.cc) or a connected
// UDP socket (udp_channel.cc). Each belongs to one thread's event loop (worker.cc) and reaches
// the thread's shared pieces -- payload pool, counters, clock, epoll set -- through LoopContext.
//
// Requests enter a channel with Enqueue(intended send time) -- from the open-loop schedule, or
// from the channel itself refilling its pipeline in closed loop -- and leave on Flush(), which the
// loop calls once per batch for every channel marked dirty, so a batch of pipelined requests
// is one system call.
#ifndef UPCASE_LOADGEN_CHANNEL_H_
#define UPCASE_LOADGEN_CHANNEL_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "common/net.h"
#include "loadgen/config.h"
#include "loadgen/payload.h"
#include "loadgen/stats.h"

namespace upcase::load {

// Every non-blocking call ends in one of three ways, handled the same everywhere (as in wrk):
// progress was made, the kernel said "not now" (EAGAIN: wait for the next epoll edge), or the
// channel failed.
enum class IoStatus { kOk, kRetry, kError };

enum class Phase {
  kSetup,    // connecting; errors are fatal and end the run before it starts
  kRunning,  // sending on schedule (or refilling, closed loop)
  // After the window, for at most --drain: nothing new is scheduled; replies already asked for
  // are awaited, and in open loop requests of the schedule still queued in the client go out.
  kDraining,
};

// A thread's state shared by its channels. Owned and touched by that thread only.
struct LoopContext {
  const Config* config = nullptr;
  SocketAddress target;
  int epoll_fd = -1;
  const PayloadPool* pool = nullptr;
  Rng rng{1};
  Stats* stats = nullptr;  // since the last interval publication (swapped for a spare then)
  Phase phase = Phase::kSetup;
  std::int64_t now = 0;  // CLOCK_MONOTONIC ns when the current batch of events was returned
  std::int64_t measure_start = INT64_MAX;
  std::int64_t measure_end = INT64_MAX;
  std::int64_t pipeline = 1;      // in-flight cap per channel
  std::int64_t max_backlog = 0;   // open loop: most unsent requests one channel may queue
  std::vector<char> recv_buffer;  // one per thread: TCP reads and UDP batches land here
  std::vector<std::uint32_t> dirty;
  absl::Status setup_error;  // the first error during kSetup
  std::string first_error;   // the first error during the run, for the report
  std::string first_mismatch;

  bool running() const { return phase == Phase::kRunning; }
  // Requests may go out: while running, and in open loop during the drain too, so that requests
  // of the window queued in the client still get their chance.
  bool sending() const {
    return phase == Phase::kRunning || (phase == Phase::kDraining && config->open_loop());
  }
  bool InWindow(std::int64_t intended) const {
    return intended >= measure_start && intended < measure_end;
  }
  // A reply to the request intended at `intended` and sent at `sent` arrived at `now`.
  void RecordReply(std::int64_t intended, std::int64_t sent, std::uint32_t size) {
    if (!InWindow(intended)) return;
    if (now < measure_end) {
      ++stats->counters.requests;
      stats->counters.bytes_received += size;
    } else {
      ++stats->counters.drain_replies;
      if (!config->open_loop()) return;  // closed loop measures what completes inside the window
    }
    stats->latency.Record(now - intended);
    stats->latency_uncorrected.Record(now - sent);
  }
  // A window request's first byte went out at `sent`.
  void RecordSend(std::int64_t intended, std::int64_t sent) {
    if (!InWindow(intended)) return;
    ++stats->counters.sent;
    stats->send_lag.Record(sent - intended);
  }
  // The drain is over and the request intended at `intended` has no reply (`sent`: whether its
  // first byte went out). Open loop records its age as a lower bound of its latency, in the
  // corrected histogram only: an unsent request has no uncorrected latency at all.
  void RecordUnanswered(std::int64_t intended, bool sent) {
    if (intended == 0 || !InWindow(intended)) return;  // closed loop's unsent have no time yet
    Counters& c = stats->counters;
    ++c.unanswered;
    ++(sent ? c.unfinished : c.unsent);
    if (!config->open_loop()) return;
    const std::int64_t age = now - intended;
    stats->latency.Record(age);
    c.unanswered_min_age_ns = std::min(c.unanswered_min_age_ns, age);
  }
  // The request intended at `intended` was written (at least its first byte) on a connection
  // that has just failed: its reply will never come. Open loop records its age as a lower bound,
  // in the corrected histogram only, as for an unanswered request: a connection reset must not
  // take the slowest requests out of the tail.
  void RecordFailed(std::int64_t intended) {
    if (intended == 0 || !InWindow(intended)) return;
    Counters& c = stats->counters;
    ++c.failed;
    if (!config->open_loop()) return;
    const std::int64_t age = now - intended;
    stats->latency.Record(age);
    c.failed_min_age_ns = std::min(c.failed_min_age_ns, age);
  }
  void NoteError(ErrorKind kind, const absl::Status& cause);
  // The same, building the cause only when it will be kept (the first error): for errors that
  // come in floods, such as queue_full when the generator is behind.
  void NoteError(ErrorKind kind, absl::FunctionRef<absl::Status()> cause);
  void NoteMismatch(const std::string& what);
};

class Channel {
 public:
  Channel(LoopContext* ctx, std::uint32_t id) : ctx_(ctx), id_(id) {}
  virtual ~Channel() = default;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Setup: create the socket and start connecting. Errors are the run's setup errors.
  virtual absl::Status Open() = 0;
  // True once the channel can carry requests (always, for channels that connect per request).
  virtual bool Connected() const = 0;
  // Readiness reported by epoll for this channel's socket (edge-triggered).
  virtual void OnEvents(std::uint32_t events) = 0;
  // A request intended to go out at `intended` (0 in closed loop: stamped when it is sent).
  virtual void Enqueue(std::int64_t intended) = 0;
  // Sends what the pipeline cap and the socket allow.
  virtual void Flush() = 0;
  // Every few milliseconds: timeouts and reconnects.
  virtual void Housekeep() = 0;
  // Nothing sent (or, in open loop, queued) is still waiting for its reply.
  virtual bool Idle() const = 0;
  // End of the drain: accounts for window requests left unanswered (RecordUnanswered) and closes
  // the socket.
  virtual void CloseAndCountUnanswered() = 0;

  // The loop clears this before calling Flush().
  bool TakeDirty() { return std::exchange(dirty_, false); }

 protected:
  void MarkDirty() {
    if (!dirty_) {
      dirty_ = true;
      ctx_->dirty.push_back(id_);
    }
  }

  LoopContext* ctx_;
  const std::uint32_t id_;  // the channel's epoll user data: its index in the thread's vector

 private:
  bool dirty_ = false;  // in ctx_->dirty, waiting for Flush()
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_CHANNEL_H_
