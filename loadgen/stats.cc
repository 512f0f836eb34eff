#include "loadgen/stats.h"

#include <algorithm>

namespace upcase::load {

const char* ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kConnect:
      return "connect";
    case ErrorKind::kClosed:
      return "closed";
    case ErrorKind::kReset:
      return "reset";
    case ErrorKind::kIo:
      return "io";
    case ErrorKind::kExcessBytes:
      return "excess_bytes";
    case ErrorKind::kQueueFull:
      return "queue_full";
    case ErrorKind::kRefused:
      return "refused";
    case ErrorKind::kAborted:
      return "aborted";
    case ErrorKind::kCount:
      break;
  }
  return "?";
}

std::uint64_t Counters::errors_total() const {
  std::uint64_t n = 0;
  for (std::uint64_t e : errors) n += e;
  return n;
}

// Calls fn(this counter, the other's) for every counter that adds up when runs are combined.
template <typename Self, typename Fn>
void Counters::ForEachCount(Self& self, const Counters& o, Fn fn) {
  fn(self.requests, o.requests);
  fn(self.bytes_received, o.bytes_received);
  fn(self.scheduled, o.scheduled);
  fn(self.sent, o.sent);
  fn(self.drain_replies, o.drain_replies);
  fn(self.unanswered, o.unanswered);
  fn(self.unfinished, o.unfinished);
  fn(self.unsent, o.unsent);
  fn(self.failed, o.failed);
  fn(self.mismatches, o.mismatches);
  fn(self.connects, o.connects);
  for (int i = 0; i < kErrorKinds; ++i) fn(self.errors[i], o.errors[i]);
  fn(self.udp_sent, o.udp_sent);
  fn(self.udp_received, o.udp_received);
  fn(self.udp_lost, o.udp_lost);
  fn(self.udp_reordered, o.udp_reordered);
  fn(self.udp_duplicated, o.udp_duplicated);
  fn(self.udp_late, o.udp_late);
}

void Counters::Add(const Counters& o) {
  ForEachCount(*this, o, [](std::uint64_t& mine, std::uint64_t theirs) { mine += theirs; });
  unanswered_min_age_ns = std::min(unanswered_min_age_ns, o.unanswered_min_age_ns);
  failed_min_age_ns = std::min(failed_min_age_ns, o.failed_min_age_ns);
}

bool Counters::AddWouldOverflow(const Counters& o) const {
  bool overflow = false;
  ForEachCount(*this, o, [&](const std::uint64_t& mine, std::uint64_t theirs) {
    overflow = overflow || mine > UINT64_MAX - theirs;
  });
  return overflow;
}

}  // namespace upcase::load
