#include "loadgen/stats.h"

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

void Counters::Add(const Counters& o) {
  requests += o.requests;
  bytes_received += o.bytes_received;
  scheduled += o.scheduled;
  sent += o.sent;
  unfinished += o.unfinished;
  mismatches += o.mismatches;
  connects += o.connects;
  for (int i = 0; i < kErrorKinds; ++i) errors[i] += o.errors[i];
  udp_sent += o.udp_sent;
  udp_received += o.udp_received;
  udp_lost += o.udp_lost;
  udp_reordered += o.udp_reordered;
  udp_duplicated += o.udp_duplicated;
  udp_late += o.udp_late;
}

}  // namespace upcase::load
