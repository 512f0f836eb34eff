// What a thread counts: plain counters and four histograms, owned by one thread and handed to
// the main thread whole at each interval boundary (coordinator.h), never shared while being
// written.
//
// Window rules, used everywhere: a request belongs to the measurement when its intended send time
// is inside [measure start, measure end). It counts in `requests` (and the throughput) when its
// reply arrives before the measurement end. In open loop every window request is also accounted
// for after that: a reply that arrives during the drain is recorded in the histograms and counted
// in `drain_replies`; a request still unanswered when the drain ends is counted in `unanswered`
// and recorded in the corrected histogram at its age then, a lower bound; a request lost with its
// connection is counted in `failed` and recorded the same way at its age when the connection
// failed. Closed loop records only replies inside the window (and counts the rest), so that in
// both loops sent = requests + drain_replies + unfinished + failed. Errors and mismatches count
// over the whole run, warmup and drain included: a wrong byte is wrong whenever it comes.
#ifndef UPCASE_LOADGEN_STATS_H_
#define UPCASE_LOADGEN_STATS_H_

#include <array>
#include <cstdint>

#include "loadgen/histogram.h"

namespace upcase::load {

enum class ErrorKind {
  kConnect,      // a connect failed or timed out (run continues; retried)
  kClosed,       // the server closed a connection that still had requests outstanding
  kReset,        // ECONNRESET / EPIPE
  kIo,           // any other send or receive error
  kExcessBytes,  // the server sent bytes for which no request was outstanding
  kQueueFull,  // open loop: a connection's backlog of unsent requests hit its cap; request dropped
  kRefused,    // UDP: ICMP port unreachable reported on the socket
  kAborted,    // requests in flight on a connection that failed (counted once each)
  kCount,
};
inline constexpr int kErrorKinds = static_cast<int>(ErrorKind::kCount);
const char* ErrorKindName(ErrorKind kind);

struct Counters {
  std::uint64_t requests = 0;        // window requests answered inside the window
  std::uint64_t bytes_received = 0;  // reply bytes of those requests
  std::uint64_t scheduled = 0;       // open loop: requests due inside the window
  std::uint64_t sent = 0;            // window requests whose first byte went out
  // Window requests answered during the drain (open loop: recorded too; closed loop: counted only)
  std::uint64_t drain_replies = 0;
  // Window requests with no reply when the drain ended (UDP: nor declared lost), and of those the
  // ones sent (`unfinished`) and the ones still queued in the client (`unsent`).
  std::uint64_t unanswered = 0;
  std::uint64_t unfinished = 0;
  std::uint64_t unsent = 0;
  // Open loop: the youngest unanswered request's age when the drain ended, in ns. Corrected
  // latency figures at or above it may include unanswered requests: they are lower bounds.
  std::int64_t unanswered_min_age_ns = INT64_MAX;
  // Window requests written (even partly) on a connection that then failed: their replies can
  // never come. Open loop records each at its age when the failure was seen, a lower bound, and
  // keeps the youngest such age here.
  std::uint64_t failed = 0;
  std::int64_t failed_min_age_ns = INT64_MAX;
  std::uint64_t mismatches = 0;  // replies that differed from uppercase(request)
  std::uint64_t connects = 0;    // successful connects after the first (reconnects)
  std::array<std::uint64_t, kErrorKinds> errors{};
  // UDP, over window requests (the drain included): sent = received + lost + unfinished.
  std::uint64_t udp_sent = 0;
  std::uint64_t udp_received = 0;
  std::uint64_t udp_lost = 0;        // no reply within --timeout
  std::uint64_t udp_reordered = 0;   // reply arrived after a reply to a later request
  std::uint64_t udp_duplicated = 0;  // second (or later) reply to the same request
  std::uint64_t udp_late = 0;        // reply to a request already lost, or too old to remember

  void Count(ErrorKind kind) { ++errors[static_cast<int>(kind)]; }
  // Corrected latency figures at or above this may be lower bounds (INT64_MAX: none are).
  std::int64_t lower_bounds_from() const {
    return unanswered_min_age_ns < failed_min_age_ns ? unanswered_min_age_ns : failed_min_age_ns;
  }
  std::uint64_t errors_total() const;
  void Add(const Counters& other);
  // True when Add(other) would wrap a counter around (only crafted result files get there).
  bool AddWouldOverflow(const Counters& other) const;

 private:
  template <typename Self, typename Fn>
  static void ForEachCount(Self& self, const Counters& other, Fn fn);
};

struct Stats {
  Counters counters;
  Histogram latency;              // from the intended send time (coordinated omission corrected)
  Histogram latency_uncorrected;  // from the actual send time
  // Actual minus intended send time of every window request that went out: how long requests
  // waited in the client (pipeline cap, full socket buffer, or a client running late). 0 in closed
  // loop, where a request is intended when it is sent.
  Histogram send_lag;
  // A hiccup recorder's oversleeps (loadgen/hiccup_recorder.h); load threads leave it empty.
  Histogram hiccups;

  void Add(const Stats& other) {
    counters.Add(other.counters);
    latency.Add(other.latency);
    latency_uncorrected.Add(other.latency_uncorrected);
    send_lag.Add(other.send_lag);
    hiccups.Add(other.hiccups);
  }
  void Reset() {
    counters = Counters{};
    latency.Reset();
    latency_uncorrected.Reset();
    send_lag.Reset();
    hiccups.Reset();
  }
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_STATS_H_
