// TCP accepting on io_uring, for one shard of the uring backend (backend_uring.cc): one multishot
// accept on the shard's listener, so every new connection is a completion and no accept4() call.
// The kernel keeps the accept armed until it fails or is cancelled; it is re-armed when it ends
// by itself.
//
// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM: ClassifyAcceptError), accepting
// pauses for kBackoff and resumes, so the loop neither spins on a listener it cannot serve nor
// stops serving connected clients. A broken listener is an error() that ends the shard.
#ifndef UPCASE_SERVER_URING_ACCEPT_H_
#define UPCASE_SERVER_URING_ACCEPT_H_

#include <liburing.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/net.h"
#include "server/stats.h"
#include "server/uring_ring.h"

namespace upcase {

class UringAcceptor {
 public:
  // The user_data of the acceptor's requests: the multishot accept, the backoff timeout, and
  // cancels (whose completions need nothing).
  struct Tags {
    std::uint64_t accept = 0;
    std::uint64_t resume = 0;
    std::uint64_t cancel = 0;
  };

  static constexpr absl::Duration kBackoff = absl::Milliseconds(20);

  UringAcceptor(Ring* ring, ShardStats* stats, Tags tags)
      : ring_(ring), stats_(stats), tags_(tags) {}

  // Takes the shard's listener (invalid: TCP is not served). Accepted sockets inherit its
  // TCP_NODELAY, set here: no setsockopt per connection.
  absl::Status Init(Fd listener);
  bool serving() const { return listener_.valid(); }
  // The multishot accept is still in the kernel.
  bool busy() const { return armed_; }
  // The listener failed beyond retrying: the shard stops and returns this.
  const absl::Status& error() const { return error_; }

  void Start() { AddAccept(); }
  // A completion of the multishot accept: the new connection's descriptor, now the caller's, or
  // -1 when it brought none.
  int HandleAccept(const io_uring_cqe& cqe);
  // The backoff is over: accepts again.
  void HandleResume(const io_uring_cqe& cqe);
  // Shutdown: stops listening at once (the kernel resets what is still in the backlog) and ends
  // the multishot accept.
  void Stop();
  void Close() { listener_.reset(); }

 private:
  void AddAccept();

  Ring* const ring_;
  ShardStats* const stats_;
  const Tags tags_;
  Fd listener_;  // invalid when TCP is not served, and once accepting is over
  bool armed_ = false;
  bool backing_off_ = false;  // a resume timeout is in the kernel
  bool stopped_ = false;      // Stop() was called, or the listener broke
  absl::Status error_;
  __kernel_timespec backoff_ts_{};
};

}  // namespace upcase

#endif  // UPCASE_SERVER_URING_ACCEPT_H_
