// The blocking request loops shared by the two lab-style backends (iterative and threads): the
// code a student writes first. A blocking backend decides only *who* runs these loops.
#ifndef UPCASE_SERVER_BLOCKING_IO_H_
#define UPCASE_SERVER_BLOCKING_IO_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/time/time.h"
#include "server/stats.h"

namespace upcase {

// Serves one TCP connection until the client closes it (or resets it): recv, uppercase in place,
// send everything, repeat. On a half-close every byte read has been answered before this returns.
// The caller closes `fd`.
void ServeBlockingConnection(int fd, ShardStats& stats);

// The lab's datagram loop on a blocking UDP socket: recvfrom, uppercase, sendto the source.
// Returns once `stopping` is set and the socket has been shut down (which wakes recvfrom).
void ServeBlockingUdp(int fd, const std::atomic<bool>& stopping, ShardStats& stats);

// Handles one accept() failure of a blocking acceptor: counts it, and for running out of file
// descriptors or memory pauses briefly so the loop does not spin. Returns false when the error
// is fatal for the listener (anything but the transient cases).
bool HandleAcceptError(int err, ShardStats& stats);

// Calls `on_expire` once, on its own thread, unless Cancel() comes first. Blocking backends use it
// to bound shutdown: after the grace period, sockets still blocked in send() are shut down.
class GraceTimer {
 public:
  GraceTimer() = default;
  GraceTimer(const GraceTimer&) = delete;
  GraceTimer& operator=(const GraceTimer&) = delete;
  ~GraceTimer() { Cancel(); }

  void Arm(absl::Duration grace, std::function<void()> on_expire);
  void Cancel();  // waits for the timer thread; safe to call more than once

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool cancelled_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace upcase

#endif  // UPCASE_SERVER_BLOCKING_IO_H_
