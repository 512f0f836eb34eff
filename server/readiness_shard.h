// What the readiness reactors (epoll, poll, select) share: one thread that asks the kernel which
// of its sockets are ready, then serves each one without blocking. The kernel interface that
// answers the question is the whole difference between them, so a backend supplies only that
// (Watch/Rewatch/Unwatch and its wait loop) and this class does the rest: accepting under the
// limits, reading, answering and flushing a connection with backpressure, closing it, UDP in
// batches, --idle-timeout, and the shutdown policy of server/shutdown.h.
//
// Events are the epoll bits (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP), which poll(2) shares bit
// for bit (POLLIN == EPOLLIN, ...); select reports readable as EPOLLIN and writable as EPOLLOUT.
// Handlers act on what recv()/send() say, never on an error bit alone, so a report for a
// descriptor closed (or closed and reused) earlier in the same batch costs at most an EAGAIN.
#ifndef UPCASE_SERVER_READINESS_SHARD_H_
#define UPCASE_SERVER_READINESS_SHARD_H_

#include <sys/socket.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/net.h"
#include "server/config.h"
#include "server/limits.h"
#include "server/output_queue.h"
#include "server/sharded_backend.h"
#include "server/udp_guard.h"

namespace upcase {

// Largest single recv() on a connection; also the size of each shard's shared read buffer.
inline constexpr std::size_t kReadChunk = 64 * 1024;
// Fairness budget: per connection and loop iteration, at most this many reads (so at most
// kReadsPerWakeup * kReadChunk bytes) before the shard moves on to the next ready socket.
inline constexpr int kReadsPerWakeup = 4;
// Connections accepted per wake-up of the listener, so a connection storm cannot starve I/O.
inline constexpr int kAcceptsPerWakeup = 64;
// Datagrams per recvmmsg()/sendmmsg() call, and calls per wake-up of the UDP socket.
inline constexpr int kUdpBatch = 32;
inline constexpr int kUdpBatchesPerWakeup = 4;
// Out of descriptors and the spare one could not help: stop polling the listener this long.
inline constexpr absl::Duration kAcceptPause = absl::Milliseconds(100);
// A connection's read budget before shutdown: no limit.
inline constexpr std::uint64_t kUnlimited = UINT64_MAX;

// Which of a shard's sockets a watched descriptor is.
enum class Source : std::uint32_t { kStop, kListener, kUdp, kConnection, kIdleTick };

// One TCP connection, owned by the shard that accepted it. Its life: serving (read, answer); once
// input is over (the client half-closed, or shutdown's read budget is spent) delivering what is
// pending; then closed, after lingering when it was shutdown that ended the input.
struct Connection {
  Connection(Fd socket, OutputPool* pool, const PeerKey& address, std::uint32_t now)
      : fd(std::move(socket)), pending(pool), peer(address), last_progress(now) {}

  Fd fd;
  OutputQueue pending;       // what the kernel did not take yet; size() <= config.conn_buffer
  bool read_closed = false;  // recv() returned 0: the client sends no more
  // Bytes still to be read and answered: kUnlimited until shutdown, then what was queued.
  std::uint64_t read_budget = kUnlimited;
  bool lingering = false;       // output all handed over, FIN sent; input is read and discarded
  std::uint32_t interest = 0;   // the events watched for fd right now
  PeerKey peer;                 // the client's address: its slot in the per-address table
  std::uint32_t last_progress;  // IdleClock tick of the last byte read or sent
  OutputWatch output_watch;     // --idle-timeout: is a slow reader still taking its output?
};

// What a handler decided about its connection.
enum class Verdict { kKeep, kClose, kReset };

class ReadinessShard : public ReactorShard {
 public:
  using ReactorShard::ReactorShard;

  // Registers the sockets (either may be invalid: not served). A backend creates its kernel
  // object (an epoll instance, say) first, in an Init of its own that then calls this one.
  absl::Status Init(Fd listener, Fd udp);

 protected:
  // ---- the kernel interface a backend supplies ----

  // Starts watching `fd` for `events`; a failure turns a connection away, or fails setup.
  virtual absl::Status Watch(int fd, std::uint32_t events, Source source) = 0;
  // Changes what `fd` is watched for (0: nothing but errors, where the kernel reports those).
  virtual absl::Status Rewatch(int fd, std::uint32_t events, Source source) = 0;
  // Stops watching `fd`. `closing`: the descriptor is about to be closed (epoll forgets it then
  // by itself), else it stays open.
  virtual absl::Status Unwatch(int fd, bool closing) = 0;
  // Whether an accepted descriptor can be watched at all (select: below FD_SETSIZE). When not,
  // the backend counts it and the connection is closed at once.
  virtual bool Watchable(int /*fd*/) { return true; }

  // ---- what a backend's loop calls ----

  // Whether the loop goes on: until shutdown has finished.
  bool serving() const { return !draining_ || open_conns_ > 0; }
  // Serves `fd`, which is `source` and reported `events`.
  absl::Status Dispatch(Source source, int fd, std::uint32_t events);
  // The wait's timeout: until the next deadline (accept pause; during shutdown the grace period
  // and the next linger check), or -1: forever.
  int TimeoutMs() const;
  // Runs what is due at the deadlines above; call after every wait.
  absl::Status HandleTimers();

 private:
  Connection* Find(int fd) {
    return static_cast<std::size_t>(fd) < conns_.size() ? conns_[fd].get() : nullptr;
  }

  absl::Status HandleListener();
  void Admit(Fd fd, const PeerKey& peer);
  bool ShedOnePending();
  absl::Status PauseAccepting();
  absl::Status ResumeAccepting();

  void HandleConnection(int fd, std::uint32_t events);
  Verdict ReadSome(Connection& c);
  Verdict Reply(Connection& c, const char* data, std::size_t n);
  Verdict Discard(Connection& c);
  Verdict Flush(Connection& c);
  void CloseLingerOrWatch(Connection& c, Verdict verdict);
  void Close(Connection& c);

  absl::Status HandleUdp();
  void SendReplies(int count);

  absl::Status StartIdleTimer();
  absl::Status HandleIdleTick();

  absl::Status HandleStop();
  // Unwatches and closes one of the shard's own sockets (listener, UDP, timer, spare).
  void CloseOwn(Fd& fd);

  Fd listener_;  // invalid when TCP is not served, and after shutdown began
  Fd spare_;     // a reserved descriptor, given up to shed connections when out of them
  Fd udp_;       // invalid when UDP is not served, and after shutdown began
  std::uint16_t udp_port_ = 0;  // udp_'s own port: datagrams from it are refused
  Fd idle_timer_;  // timerfd ticking idle_; invalid with --idle-timeout=0 and after shutdown began

  std::vector<std::unique_ptr<Connection>> conns_;  // indexed by descriptor; null: not ours
  std::size_t open_conns_ = 0;
  // Shared by all of this shard's connections: a chunk is read, uppercased and sent (or copied to
  // pending) before the next read, so one buffer serves them all.
  std::unique_ptr<char[]> read_buf_;

  // recvmmsg/sendmmsg state; a reply is uppercased in place in its request's slot of udp_buf_.
  std::unique_ptr<char[]> udp_buf_;  // kUdpBatch slots of kMaxDatagram bytes
  std::array<iovec, kUdpBatch> udp_iov_;
  std::array<sockaddr_storage, kUdpBatch> udp_peers_;
  std::array<mmsghdr, kUdpBatch> udp_in_;
  std::array<mmsghdr, kUdpBatch> udp_out_;
  struct UdpControl {
    alignas(cmsghdr) char bytes[kDropsControlBytes];
  };
  std::array<UdpControl, kUdpBatch> udp_control_;  // each datagram's SO_RXQ_OVFL count
  UdpGuards udp_guards_{config_.udp_reflection_guard};

  bool accept_paused_ = false;  // the listener is unwatched until accept_resume_ns_
  std::int64_t accept_resume_ns_ = 0;
  bool draining_ = false;  // Stop() was seen; connections close by grace_deadline_ns_
  std::int64_t grace_deadline_ns_ = 0;
  std::int64_t next_linger_check_ns_ = 0;  // during shutdown: when HandleTimers() looks again
};

}  // namespace upcase

#endif  // UPCASE_SERVER_READINESS_SHARD_H_
