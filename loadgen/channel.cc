#include "loadgen/channel.h"

namespace upcase::load {

void LoopContext::NoteError(ErrorKind kind, const absl::Status& cause) {
  stats->counters.Count(kind);
  if (phase == Phase::kSetup && setup_error.ok()) setup_error = cause;
  if (first_error.empty()) first_error = std::string(cause.message());
}

void LoopContext::NoteError(ErrorKind kind, absl::FunctionRef<absl::Status()> cause) {
  if (first_error.empty() || (phase == Phase::kSetup && setup_error.ok())) {
    NoteError(kind, cause());
  } else {
    stats->counters.Count(kind);
  }
}

void LoopContext::NoteMismatch(const std::string& what) {
  ++stats->counters.mismatches;
  if (first_mismatch.empty()) first_mismatch = what;
}

}  // namespace upcase::load
