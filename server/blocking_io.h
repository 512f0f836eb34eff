// The blocking request loops shared by the lab-style backends (iterative, threads and fork): the
// code a student writes first. A blocking backend decides only *who* runs these loops (a thread,
// a process).
//
// Stopping a blocking server gracefully, by the policy every backend follows (server/shutdown.h).
// A thread blocked in recv() only wakes for the socket, so Stop() wakes it with shutdown(SHUT_RD):
// recv() then returns what is queued, then 0. But a socket must not simply be closed after that:
// closing with unread input makes Linux reset the connection, and the reset throws away output the
// client has not acknowledged yet. Nor may it send its FIN early: a socket shut for reading that
// has sent its FIN resets the connection as soon as more input arrives. So a connection answers
// what its socket had received when the stop was seen (SIOCINQ), waits, reading and discarding
// input, until the client has acknowledged all of the output (SIOCOUTQ == 0, checked every
// kLingerPoll), only then sends its FIN, and is closed when that is acknowledged too, or when the
// grace period ends.
//
// Limits (server/limits.h): --idle-timeout is SO_RCVTIMEO and SO_SNDTIMEO on the connection, so
// a recv() that waited that long for input, or a send() that could hand nothing to the kernel
// for that long, ends it; --max-conns-per-ip is checked by the accept loop against the same kind
// of table the reactors share. A blocking backend has no output queue: --output-budget does not
// apply.
#ifndef UPCASE_SERVER_BLOCKING_IO_H_
#define UPCASE_SERVER_BLOCKING_IO_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/net.h"
#include "server/backend.h"
#include "server/config.h"
#include "server/limits.h"
#include "server/listeners.h"
#include "server/stats.h"
#include "server/udp_guard.h"

namespace upcase {

// The stop request a blocking backend's Stop() shares with its serving threads: a flag, and when
// the grace period ends. Raise() publishes the deadline before the flag (release/acquire), so a
// thread that sees raised() also sees deadline_ns().
class StopFlag {
 public:
  // Returns false when already raised. Callers serialise Raise() (the backend's mutex).
  bool Raise(absl::Duration grace);
  bool raised() const { return raised_.load(std::memory_order_acquire); }
  // CLOCK_MONOTONIC nanoseconds (common/sys.h) at which shutdown gives up; valid once raised().
  std::int64_t deadline_ns() const { return deadline_ns_; }

 private:
  std::atomic<bool> raised_{false};
  std::int64_t deadline_ns_ = 0;  // written once, before raised_
};

// Serves one TCP connection until the client closes it (or resets it): recv, uppercase in place,
// send everything, repeat. On a half-close every byte read has been answered before this returns.
// Once `stop` is raised (and the socket shut down for reading to wake recv), it answers what the
// socket had received, then ends the connection as the file comment explains, by the deadline.
// A recv or send that makes no progress for `idle_timeout` (zero: never) ends it too. The caller
// closes `fd`.
void ServeBlockingConnection(int fd, const StopFlag& stop, absl::Duration idle_timeout,
                             ShardStats& stats);

// The lab's datagram loop on a blocking UDP socket: recvfrom, uppercase, sendto the source. The
// kernel's drops are counted when it returns (SO_MEMINFO), so recvfrom stays the lab's call.
// Refuses what limits.h and udp_guard.h refuse (`reflection_guard`: --udp-reflection-guard).
// Returns once `stop` is raised and the socket has been shut down (which wakes recvfrom).
void ServeBlockingUdp(int fd, const StopFlag& stop, bool reflection_guard, ShardStats& stats);

// Answers, without waiting, the datagrams the socket already holds, at most 128 (as epoll does at
// shutdown: four recvmmsg batches of 32), so that a flood cannot hold a shutdown up. The shutdown
// path of ServeBlockingUdp, and of the uring backend, whose cancelled multishot recvmsg would
// otherwise leave them unanswered. `guards` are the socket's; their drop count is settled.
void AnswerQueuedDatagrams(int fd, UdpGuards& guards, ShardStats& stats);

// shutdown(fd, how) for Stop(): ENOTCONN (a client already gone, or an unconnected UDP socket,
// which the call still wakes) is expected; any other failure leaves a thread blocked until the
// grace period ends, so it is reported on stderr, naming `what`.
void ShutdownForStop(int fd, int how, const char* what);

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

// What the blocking backends share: one blocking TCP listener and one UDP socket (no shards),
// a UDP thread running ServeBlockingUdp, the accept loop, and the stop with its grace period. A
// blocking backend says only who serves each accepted connection (Serve).
class BlockingBackend : public Backend {
 public:
  explicit BlockingBackend(const ServerConfig& config) : config_(config) {}

  // A backend that needs more before serving (fork: its shared memory) sets it up, then calls this.
  absl::StatusOr<Endpoints> Open() override;
  // The UDP thread, and the accept loop on the calling thread, until Stop().
  absl::Status Run() final;
  // Raises the stop flag and wakes every blocked call with shutdown(SHUT_RD): accept and recvfrom
  // return, and each connection answers what it had received and ends without losing output
  // (see the file comment). After the grace period, connections still open are shut down.
  void Stop() final;
  // One entry: the accept loop's, the connections' and the UDP thread's counters summed.
  std::vector<ShardStats> Stats() const final;

 protected:
  // Takes an accepted connection into service; `peer` holds a slot of per_address_, which the
  // backend gives back (Release) when the connection ends or is turned away. False when the stop
  // came meanwhile (the caller closes it and gives the slot back). Runs on the accept loop's
  // thread.
  virtual bool Serve(Fd conn, const PeerKey& peer) = 0;
  // Under mu_: shutdown(fd, how) for every connection in service.
  virtual void ShutdownConnections(int how) = 0;
  // After the accept loop ended: waits until no connection is in service any more.
  virtual void WaitForConnections() {}

  const ServerConfig config_;
  ConnsPerAddress per_address_{config_.max_conns_per_ip,
                               config_.per_ip_prefix};  // --max-conns-per-ip
  StopFlag stop_;
  std::mutex mu_;          // serialises Stop() with the backend's own bookkeeping
  ShardStats tcp_stats_;   // owned by the accept loop
  ShardStats conn_stats_;  // guarded by mu_: connection threads add theirs as they end
  ShardStats udp_stats_;   // owned by the UDP thread

 private:
  absl::Status AcceptLoop();

  Listeners listeners_;
  GraceTimer grace_;
};

}  // namespace upcase

#endif  // UPCASE_SERVER_BLOCKING_IO_H_
