// uring: the multi-reactor server on io_uring. N shards, each one thread with its own ring.
//
// The model is epoll's (backend_epoll.cc): every shard owns a TCP listener and a UDP socket bound
// to the same port with SO_REUSEPORT, and a connection lives on the shard that accepted it. What
// changes is how a shard talks to the kernel. Instead of asking "what is ready?" and then making
// one system call per read and per write, a shard posts long-lived requests once and collects
// their results from a shared completion queue:
//
//   - one multishot accept per listener: every new connection is a completion, no accept4() call;
//   - one multishot recv per connection, into a ring of provided buffers the kernel picks from,
//     so no buffer is reserved for an idle connection and no recv() call is made per request;
//   - sends are queued as submissions; everything a loop iteration produced (sends, re-arms,
//     cancels, closes) goes to the kernel in the same io_uring_submit_and_wait() that waits for
//     the next completions: one system call per loop iteration, whatever the number of requests;
//   - UDP: one multishot recvmsg, and a sendmsg per datagram back to its source.
//
// With IORING_SETUP_DEFER_TASKRUN the kernel does the deferred work of a request (copying the
// data of a recv that became ready, posting its completion) only inside our io_uring_enter(),
// on this thread: no interrupts of the loop, better cache locality, and batches as large as the
// load makes them. The trade-off against epoll is a more involved life cycle per connection
// (requests still in flight must complete before a connection's slot can be reused) and memory
// registered per shard (the provided buffers) instead of one read buffer.
//
// Ordering and backpressure: at most one send is in flight per connection, so bytes leave in the
// order they arrived, and a short send is simply resubmitted for the rest. Output that cannot be
// sent yet waits in the connection's OutputQueue, capped by --conn-buffer as in epoll: a
// multishot recv is armed with a byte limit of the room left in the queue (Linux >= 6.17), near
// the cap the shard switches to single-shot recvs no larger than the room left, and at the cap it
// stops receiving until the queue drains. Older kernels have no byte limit: see the section
// "Kernels before 6.17" at the end of the shard.
//
// Shutdown follows the policy every backend shares (server/shutdown.h): stop accepting; every
// connection answers what the kernel had received for it when Stop() came, sends its FIN, and
// lingers, discarding input, until the client acknowledged everything or --grace runs out.
//
// The ring itself (setup flags and their fallbacks, the provided-buffer rings, the user_data
// codec, probing the kernel) is in uring_ring.h. Kernel needs: Linux >= 6.0 (multishot recv and
// recvmsg, provided buffer rings, cancel by fd); 6.1 for DEFER_TASKRUN; 6.17 for the multishot
// recv byte limit, used when present. BackendInfo::available() probes all of it at run time and
// says what is missing; without it the default backend falls back to epoll.
// Try it: upcase-server --backend=uring --shards=2 5050, then `nc 127.0.0.1 5050` and
// `nc -u 127.0.0.1 5050`; `strace -c -f` on the server shows almost nothing but io_uring_enter.
#include <liburing.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/net.h"
#include "common/sys.h"
#include "common/uppercase.h"
#include "server/backend.h"
#include "server/blocking_io.h"
#include "server/output_queue.h"
#include "server/sharded_backend.h"
#include "server/shutdown.h"
#include "server/uring_ring.h"

namespace upcase {
namespace {

// ---- Tunables ----

// Submission queue entries; when it fills mid-batch, it is submitted early (Ring::GetSqe).
constexpr unsigned kSqEntries = 1024;
// Completion queue entries. Multishot requests post many completions per submission, so the CQ
// is much larger than the SQ; the kernel keeps any overflow (IORING_FEAT_NODROP), only slower.
constexpr unsigned kCqEntries = 16 * 1024;
// --sqpoll: how long the kernel's polling thread spins on an empty queue before it sleeps.
constexpr unsigned kSqThreadIdleMs = 50;

// TCP receive buffers, shared by all connections of a shard and handed back as soon as their
// bytes are sent or copied into the connection's output queue. The kernel cycles through every
// buffer it is given, so each one given ends up resident: a shard starts with kRecvBuffersInitial
// and gives more (up to kRecvBuffers, one completion per connection per loop iteration at the
// 512-connection benchmark point) only when a recv found none left (ENOBUFS).
constexpr std::uint32_t kRecvBuffers = 1024;  // a power of two, as the buffer ring requires
constexpr std::uint32_t kRecvBuffersInitial = 128;
// How many buffers a multishot recv may still fill once the output queue decides it has had
// enough. With the kernel's byte limit each recv is armed with the room left less one buffer, and
// the completion that reaches the limit carries at most one buffer: two. Without it, see
// kMultishotBurst.
constexpr std::size_t kLimitedRecvBuffers = 2;
// Their size: as large as --conn-buffer allows. A multishot recv stays armed while the buffers it
// may still fill fit into the output queue's free room (see ArmRecv), and that must hold at least
// while the queue is half full, or every reply would end the recv that brought its request. So
// those buffers must fit into half the cap: with the limit, 16 KiB from a 64 KiB cap on; without
// it, 4 KiB at the default 256 KiB and 16 KiB from 1 MiB. A 16 KiB request is then one completion
// instead of four.
constexpr std::uint32_t kMinRecvBufferSize = 4 * 1024;
constexpr std::uint32_t kMaxRecvBufferSize = 16 * 1024;

std::uint32_t RecvBufferSize(std::size_t conn_buffer, std::size_t in_flight) {
  std::uint32_t size = kMinRecvBufferSize;
  while (size < kMaxRecvBufferSize && in_flight * (2 * size) <= conn_buffer / 2) size *= 2;
  return size;
}

// UDP buffers hold what multishot recvmsg writes: its header, the source address and the
// payload, which is uppercased in place and sent back from the same buffer. So their number is
// also the bound on replies in flight.
constexpr std::uint32_t kUdpBuffers = 64;  // a power of two
constexpr std::size_t kUdpPayloadRoom = kMaxDatagram;
constexpr std::uint32_t kUdpBufferSize =
    (sizeof(io_uring_recvmsg_out) + sizeof(sockaddr_storage) + kUdpPayloadRoom + 4095) & ~4095u;

constexpr std::uint16_t kTcpBufferGroup = 0;
constexpr std::uint16_t kUdpBufferGroup = 1;

// Out of descriptors or memory in accept: wait this long before accepting again, so the loop
// neither spins on a listener it cannot serve nor stops serving connected clients.
constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(20);
// At exit, how long to wait for the kernel to confirm that every cancelled request is gone.
constexpr absl::Duration kTeardownTimeout = absl::Seconds(1);

// ---- Request kinds, in user_data (encoded and decoded by UserData, uring_ring.h) ----
//
// Op values start at 1, so a zero user_data (e.g. from a forgotten set_data) is never valid. For
// connection requests the generation is the slot's reuse count: a slot is reused only after all
// its requests have completed (Conn::ops == 0), so a mismatch would be a bug here; it is checked,
// not relied on.
enum class Op : std::uint8_t {
  kStop = 1,      // poll on the stop eventfd fired
  kAccept,        // multishot accept on the listener
  kAcceptResume,  // timeout before accepting again after EMFILE/ENFILE
  kGrace,         // timeout: the grace period after Stop() is over
  kLinger,        // timeout: check the lingering connections again
  kRecv,          // recv (multi- or single-shot) on a connection
  kSend,          // send on a connection
  kConnCancel,    // cancel of a connection's recv, or of all its requests
  kClose,         // close of a connection's descriptor
  kUdpRecv,       // multishot recvmsg on the UDP socket
  kUdpSend,       // sendmsg of one reply; index = the buffer it is sent from
  kCancel,        // any other cancel (accept, UDP recv, everything at exit)
};

using Tag = UserData<Op>;

constexpr std::uint64_t Encode(Op op, std::uint32_t gen = 0, std::uint32_t index = 0) {
  return Tag{op, gen, index}.Encode();
}

// ---- Connection state ----

// Input held in the provided buffer it arrived in, uppercased in place, until a direct send takes
// it (see Shard::AddDirectSend).
struct Held {
  std::uint16_t bid;
  std::uint32_t len;
};

// Which recv the kernel holds for a connection:
//
//   kNone --ArmRecv--> kMultishot --completion without F_MORE--> kNone
//                          |
//                          +--AddCancelRecv--> kCancelling --its last completion--> kNone
//   kNone --ArmRecv--> kSingle --its completion--> kNone
//   (kSingle may be cancelled too, when input is over)
enum class RecvState : std::uint8_t { kNone, kSingle, kMultishot, kCancelling };

// Which send the kernel holds: at most one, so bytes leave in order.
enum class SendState : std::uint8_t { kNone, kFromQueue, kDirect };

// A connection's life:
//
//   kServing --client's FIN, or shutdown's read limit reached--> kInputOver
//   kInputOver --everything sent; not shutting down--> kClosing
//   kInputOver --everything sent; shutting down: FIN sent--> kLingering
//   kLingering --client acknowledged everything, or closed--> kClosing
//   any --error, reset, grace over--> kClosing
//   kClosing --AddCancelAll (a recv or send still in flight)--> kCancelled
//   kClosing, kCancelled --no request left (ops == 0)--> slot released
enum class Life : std::uint8_t { kServing, kInputOver, kLingering, kClosing, kCancelled };

// One TCP connection, owned by the shard that accepted it. Slots are reused; `ops` counts the
// requests of this connection the kernel still holds, and a slot is freed only when it is 0.
//
// Its output takes one of two paths, never both at once, so bytes leave in arrival order:
//   - direct (`out` empty): replies are sent straight from the provided buffers their requests
//     arrived in (`held`), without waiting (MSG_DONTWAIT). The kernel normally takes them at
//     once and the buffers go back to the ring within the same loop iteration: no copy, and no
//     per-connection memory touched, which matters for large requests.
//   - queued: when the socket cannot take everything (a slow or stuck reader), what is left is
//     copied into `out` and the buffers are returned at once, so a client that does not read
//     never holds buffers the whole shard shares. Everything after goes through `out` until it
//     is empty again.
struct Conn {
  explicit Conn(OutputPool* pool) : out(pool) {}

  int fd = -1;  // -1: the slot is free
  std::uint32_t index = 0;
  std::uint32_t gen = 0;
  std::uint32_t ops = 0;  // submitted requests whose final completion has not arrived
  RecvState recv = RecvState::kNone;
  SendState send = SendState::kNone;
  Life life = Life::kServing;
  bool touched = false;          // in Shard::touched_: handled after this batch
  OutputQueue out;               // size() <= --conn-buffer (see the end of the shard)
  std::vector<Held> held;        // direct path only: non-empty only while `out` is empty
  std::size_t held_sent = 0;     // bytes of held.front() already sent
  std::size_t held_bytes = 0;    // bytes in `held` not sent yet
  std::size_t direct_len = 0;    // bytes the direct send in flight covers (more may arrive)
  std::vector<iovec> iov;        // a direct send of several buffers; stable while it is in flight
  msghdr msg{};                  // ... pointing at `iov`
  std::uint64_t read_total = 0;  // bytes received on this connection
  std::uint64_t read_limit = UINT64_MAX;  // shutdown: what the kernel held when Stop() came

  std::size_t Unsent() const { return out.size() + held_bytes; }
  bool closing() const { return life == Life::kClosing || life == Life::kCancelled; }
};

struct UdpReply {
  msghdr msg;
  iovec iov;
};

// ---- The shard ----

// One reactor: a thread's whole world. Everything here is touched by that thread only; Stop()
// reaches it through the eventfd the backend owns.
class Shard : public ReactorShard {
 public:
  Shard(const ServerConfig& config, std::size_t max_conns, int stop_fd)
      : config_(config),
        max_conns_(max_conns),
        stop_fd_(stop_fd),
        output_pool_(config.conn_buffer) {}
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard() override { ring_.Close(); }  // before the buffer rings: the kernel holds their pages

  // In Open(): creates the ring (disabled until Run) and the buffer rings, so that any resource
  // problem is reported before the ready line.
  absl::Status Init(Fd listener, Fd udp) {
    RingOptions options;
    options.sq_entries = kSqEntries;
    options.cq_entries = kCqEntries;
    options.sqpoll = config_.sqpoll;
    options.sq_thread_idle_ms = kSqThreadIdleMs;
    if (absl::Status s = ring_.Create(options); !s.ok()) return s;
    ring_.set_cancel_all_data(Encode(Op::kCancel));
    listener_ = std::move(listener);
    udp_ = std::move(udp);
    if (listener_.valid()) {
      // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per connection.
      if (absl::Status s = SetNoDelay(listener_.get()); !s.ok()) return s;
      absl::Status s = tcp_buffers_.Init(ring_.get(), kTcpBufferGroup, kRecvBuffers,
                                         recv_buffer_size_, kRecvBuffersInitial);
      if (!s.ok()) return s;
    }
    if (udp_.valid()) {
      absl::Status s =
          udp_buffers_.Init(ring_.get(), kUdpBufferGroup, kUdpBuffers, kUdpBufferSize, kUdpBuffers);
      if (!s.ok()) return s;
      udp_replies_.resize(kUdpBuffers);
      udp_recv_msg_.msg_namelen = sizeof(sockaddr_storage);
    }
    return absl::OkStatus();
  }

  ShardStats stats() const override {
    ShardStats s = stats_;
    s.provided_buffer_bytes = tcp_buffers_.given_bytes() + udp_buffers_.given_bytes();
    return s;
  }

  absl::Status Run() override {
    // SINGLE_ISSUER binds the ring to the thread that enables it: this one.
    if (absl::Status s = ring_.Enable(); !s.ok()) return s;
    AddStopPoll();
    if (listener_.valid()) AddAccept();
    if (udp_.valid()) AddUdpRecv();
    absl::Status status = Loop();
    Teardown();
    return status;
  }

 private:
  // ---- Submitters: add_* in the liburing examples. Each counts what it leaves in flight. ----

  void AddStopPoll() {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_poll_add(sqe, stop_fd_, POLLIN);
    io_uring_sqe_set_data64(sqe, Encode(Op::kStop));
  }

  void AddAccept() {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_multishot_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, Encode(Op::kAccept));
    accept_armed_ = true;
  }

  void AddTimeout(Op op, __kernel_timespec* ts, absl::Duration d) {
    ts->tv_sec = absl::ToInt64Seconds(d);
    ts->tv_nsec = absl::ToInt64Nanoseconds(d - absl::Seconds(ts->tv_sec));
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_timeout(sqe, ts, 0, 0);
    io_uring_sqe_set_data64(sqe, Encode(op));
  }

  void AddCancel(std::uint64_t target) {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, Encode(Op::kCancel));
  }

  void AddRecv(Conn& c, bool multishot) {
    io_uring_sqe* sqe = ring_.GetSqe();
    if (multishot) {
      io_uring_prep_recv_multishot(sqe, c.fd, nullptr, 0, 0);
      if (recv_limit_) {
        // All but one buffer of the room (ArmRecv left at least two): the completion that
        // reaches the limit may carry up to a buffer more.
        SetMultishotLimit(sqe,
                          static_cast<std::uint32_t>(std::min<std::size_t>(
                              config_.conn_buffer - c.Unsent() - recv_buffer_size_, UINT32_MAX)));
      }
    } else {
      // Never more than the queue can still take: it stays within --conn-buffer exactly.
      const std::size_t room =
          std::min<std::size_t>(recv_buffer_size_, config_.conn_buffer - c.Unsent());
      io_uring_prep_recv(sqe, c.fd, nullptr, room, 0);
    }
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kTcpBufferGroup;
    io_uring_sqe_set_data64(sqe, Encode(Op::kRecv, c.gen, c.index));
    c.recv = multishot ? RecvState::kMultishot : RecvState::kSingle;
    ++c.ops;
  }

  // Sends from `out`; waits in the kernel until the socket takes at least part of it.
  void AddSend(Conn& c) {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_send(sqe, c.fd, c.out.front(), c.out.front_size(), MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, Encode(Op::kSend, c.gen, c.index));
    c.send = SendState::kFromQueue;
    ++c.ops;
  }

  // Sends everything `held` from the provided buffers themselves, one sendmsg for several. With
  // MSG_DONTWAIT the kernel never parks it: it takes what the socket has room for, or answers
  // EAGAIN, and HandleSend moves the rest into `out` (see Conn).
  void AddDirectSend(Conn& c) {
    io_uring_sqe* sqe = ring_.GetSqe();
    constexpr int kFlags = MSG_NOSIGNAL | MSG_DONTWAIT;
    const char* first = tcp_buffers_.Buffer(c.held.front().bid) + c.held_sent;
    if (c.held.size() == 1) {
      io_uring_prep_send(sqe, c.fd, first, c.held_bytes, kFlags);
    } else {
      c.iov.clear();
      c.iov.push_back({const_cast<char*>(first), c.held.front().len - c.held_sent});
      for (std::size_t i = 1; i < c.held.size(); ++i) {
        c.iov.push_back({tcp_buffers_.Buffer(c.held[i].bid), c.held[i].len});
      }
      c.msg = {};
      c.msg.msg_iov = c.iov.data();
      c.msg.msg_iovlen = c.iov.size();
      io_uring_prep_sendmsg(sqe, c.fd, &c.msg, kFlags);
    }
    io_uring_sqe_set_data64(sqe, Encode(Op::kSend, c.gen, c.index));
    c.direct_len = c.held_bytes;
    c.send = SendState::kDirect;
    ++c.ops;
  }

  void AddCancelRecv(Conn& c) {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_cancel64(sqe, Encode(Op::kRecv, c.gen, c.index), 0);
    io_uring_sqe_set_data64(sqe, Encode(Op::kConnCancel, c.gen, c.index));
    c.recv = RecvState::kCancelling;
    ++c.ops;
  }

  void AddCancelAll(Conn& c) {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_cancel_fd(sqe, c.fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, Encode(Op::kConnCancel, c.gen, c.index));
    c.life = Life::kCancelled;
    ++c.ops;
  }

  void AddClose(int fd) {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, Encode(Op::kClose));
  }

  void AddUdpRecv() {
    io_uring_sqe* sqe = ring_.GetSqe();
    // MSG_TRUNC: payloadlen then reports a datagram's full size, so an oversized one is seen.
    io_uring_prep_recvmsg_multishot(sqe, udp_.get(), &udp_recv_msg_, MSG_TRUNC);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kUdpBufferGroup;
    io_uring_sqe_set_data64(sqe, Encode(Op::kUdpRecv));
    udp_recv_armed_ = true;
  }

  void AddUdpSend(std::uint16_t bid, void* peer, socklen_t peer_len, void* payload,
                  std::size_t len) {
    UdpReply& r = udp_replies_[bid];
    r.iov = {payload, len};
    r.msg = {};
    r.msg.msg_name = peer;
    r.msg.msg_namelen = peer_len;
    r.msg.msg_iov = &r.iov;
    r.msg.msg_iovlen = 1;
    io_uring_sqe* sqe = ring_.GetSqe();
    // MSG_DONTWAIT makes a full socket buffer fail the send (-EAGAIN) instead of the kernel
    // parking it until there is room: a reply that cannot go now is dropped, never queued.
    io_uring_prep_sendmsg(sqe, udp_.get(), &r.msg, MSG_DONTWAIT);
    io_uring_sqe_set_data64(sqe, Encode(Op::kUdpSend, 0, bid));
    ++udp_sends_;
  }

  // ---- Handlers: one per completion type ----

  void Handle(const io_uring_cqe& cqe) {
    const Tag tag = Tag::Decode(cqe.user_data);
    switch (tag.op) {
      case Op::kStop:
        HandleStop(cqe);
        break;
      case Op::kAccept:
        HandleAccept(cqe);
        break;
      case Op::kAcceptResume:
        HandleAcceptBackoff(cqe);
        break;
      case Op::kGrace:
        HandleGrace(cqe);
        break;
      case Op::kLinger:
        HandleLinger(cqe);
        break;
      case Op::kRecv:
      case Op::kSend:
      case Op::kConnCancel: {
        Conn* c = Find(tag);
        if (c == nullptr) {
          DieOnRingError(absl::InternalError(
              absl::StrCat("completion for a stale connection slot ", tag.index)));
        }
        if (tag.op == Op::kRecv) HandleRecv(cqe, *c);
        if (tag.op == Op::kSend) HandleSend(cqe, *c);
        if (tag.op == Op::kConnCancel) HandleConnCancel(cqe, *c);
        Touch(*c);
        break;
      }
      case Op::kClose:
        // A failed close (EBADF would be a bug here; EINTR leaves the descriptor closed) has
        // nothing left to undo: the slot was released when the close was submitted.
        break;
      case Op::kUdpRecv:
        HandleUdpRecv(cqe);
        break;
      case Op::kUdpSend:
        HandleUdpSend(cqe, static_cast<std::uint16_t>(tag.index));
        break;
      case Op::kCancel:
        // res: 0 or a count when found, -ENOENT when the target had completed already, -EALREADY
        // when it was running; in every case its own completion follows or has arrived.
        break;
    }
  }

  // SendReceiveOrClose() for `c` once the whole batch of completions is handled, not after each
  // one: a large request arrives as several recv completions (one per provided buffer) in one
  // batch, and they should leave as one send, not as a first send of one buffer and another send
  // of the rest a loop iteration later.
  void Touch(Conn& c) {
    if (c.touched) return;
    c.touched = true;
    touched_.push_back(c.index);
  }

  Conn* Find(const Tag& tag) {
    if (tag.index >= conns_.size()) return nullptr;
    Conn& c = conns_[tag.index];
    return c.fd >= 0 && c.gen == tag.gen ? &c : nullptr;
  }

  void HandleStop(const io_uring_cqe& cqe) {
    if (cqe.res < 0 && cqe.res != -ECANCELED) {
      DieOnRingError(ErrnoError("poll on the stop eventfd", -cqe.res));  // -EBADF etc.: a bug
    }
    if (cqe.res == -ECANCELED || stopping_) return;
    stopping_ = true;
    // Stop accepting: SHUT_RD on a listener stops it listening at once (the kernel resets what is
    // still in its backlog) and ends the multishot accept.
    if (listener_.valid()) {
      if (::shutdown(listener_.get(), SHUT_RD) != 0) {
        // Not listening any more, or never was: the cancel below is all that is needed.
      }
      if (accept_armed_) {
        AddCancel(Encode(Op::kAccept));
      } else {
        listener_.reset();
      }
    }
    if (udp_.valid()) {
      // Datagrams already queued are answered now, as epoll does: the cancel would strand them.
      AnswerQueuedDatagrams(udp_.get(), stats_);
    }
    if (udp_recv_armed_) AddCancel(Encode(Op::kUdpRecv));
    // Every connection reads what the kernel had received before now, answers it, and lingers.
    // Not shutdown(SHUT_RD): its EOF comes whenever the receive queue runs dry, even while the
    // client's kernel still holds data for it, and once our FIN follows, Linux answers any
    // further data from the client with a reset that discards the replies not yet sent.
    for (Conn& c : conns_) {
      if (c.fd < 0 || c.life != Life::kServing) continue;
      const std::uint64_t queued = ReceivedNotRead(c.fd);
      if (queued == 0) {
        c.life = Life::kInputOver;  // nothing waiting (or the client is gone already)
      } else {
        c.read_limit = c.read_total + queued;
      }
      SendReceiveOrClose(c);
    }
    AddTimeout(Op::kGrace, &grace_ts_, config_.grace);
  }

  void HandleAccept(const io_uring_cqe& cqe) {
    const bool more = cqe.flags & IORING_CQE_F_MORE;
    if (!more) accept_armed_ = false;
    if (cqe.res >= 0) {
      if (stopping_) {
        ::close(cqe.res);  // raced with the cancel: not served any more
      } else {
        Admit(cqe.res);
      }
    } else {
      switch (-cqe.res) {
        case ECANCELED:
        case EINTR:
        case ECONNABORTED:  // the client gave up while queued
        case EPROTO:
        case EPERM:  // refused by a firewall rule
          break;
        case EINVAL:  // the listener was shut down (Stop)
          if (stopping_) break;
          [[fallthrough]];
        default:  // EMFILE, ENFILE, ENOBUFS, ENOMEM, ...: keep serving, accept again later
          ++stats_.accept_errors;
          if (more) AddCancel(Encode(Op::kAccept));
          if (!accept_backoff_) {
            accept_backoff_ = true;
            AddTimeout(Op::kAcceptResume, &backoff_ts_, kAcceptBackoff);
          }
          break;
      }
    }
    if (stopping_ && !accept_armed_) {
      listener_.reset();
    } else if (!accept_armed_ && !accept_backoff_ && !stopping_) {
      AddAccept();  // the multishot ended (e.g. a transient error): re-arm it
    }
  }

  void HandleAcceptBackoff(const io_uring_cqe& cqe) {
    // -ETIME: expired, as intended; -ECANCELED: cancelled at exit. Nothing else is possible.
    if (cqe.res != -ETIME && cqe.res != -ECANCELED) {
      DieOnRingError(ErrnoError("accept backoff timeout", -cqe.res));
    }
    accept_backoff_ = false;
    if (!stopping_ && !accept_armed_ && listener_.valid()) AddAccept();
  }

  void HandleGrace(const io_uring_cqe& cqe) {
    if (cqe.res == -ECANCELED) return;  // the shard finished first
    if (cqe.res != -ETIME) DieOnRingError(ErrnoError("grace timeout", -cqe.res));
    // Clients that never read their output: give up on them.
    for (Conn& c : conns_) {
      if (c.fd < 0 || c.closing()) continue;
      c.life = Life::kClosing;
      SendReceiveOrClose(c);
    }
  }

  void HandleLinger(const io_uring_cqe& cqe) {
    if (cqe.res != -ETIME && cqe.res != -ECANCELED) {
      DieOnRingError(ErrnoError("linger timeout", -cqe.res));
    }
    linger_armed_ = false;
    for (Conn& c : conns_) {
      if (c.fd >= 0 && c.life == Life::kLingering) SendReceiveOrClose(c);
    }
  }

  void Admit(int fd) {
    if (live_ >= max_conns_) {
      ++stats_.rejected;
      ::close(fd);  // over --max-conns: the client sees an immediate close
      return;
    }
    if (free_slots_.empty()) {
      conns_.emplace_back(&output_pool_);
      conns_.back().index = static_cast<std::uint32_t>(conns_.size() - 1);
      free_slots_.push_back(conns_.back().index);
    }
    Conn& c = conns_[free_slots_.back()];
    free_slots_.pop_back();
    c.fd = fd;
    ++live_;
    ++stats_.accepted;
    ArmRecv(c);
  }

  void HandleRecv(const io_uring_cqe& cqe, Conn& c) {
    const bool more = cqe.flags & IORING_CQE_F_MORE;
    if (cqe.flags & IORING_CQE_F_BUFFER) {
      TakeInput(c, static_cast<std::uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT), cqe.res);
    }
    if (cqe.res == 0) {
      if (c.life == Life::kServing) c.life = Life::kInputOver;
      if (c.life == Life::kLingering) c.life = Life::kClosing;  // the client is done too
    } else if (cqe.res < 0) {
      switch (-cqe.res) {
        case ENOBUFS:  // every buffer was taken in this round: give the kernel more
          tcp_buffers_.Grow(tcp_buffers_.given());
          break;
        case ECANCELED:  // backpressure or closing
        case EINTR:
          break;
        default:  // ECONNRESET; ETIMEDOUT after a vanished peer: as the other backends count it
          ++stats_.conn_resets;
          if (!c.closing()) c.life = Life::kClosing;
          break;
      }
    }
    if (!more) {
      --c.ops;
      c.recv = RecvState::kNone;
    } else if (!recv_limit_) {
      CancelRecvNearTheCap(c);
    }
  }

  // The `n` bytes a recv put into buffer `bid`: held there for a direct send while `out` is
  // empty, else copied into `out` (see Conn). Either way uppercased. While lingering, or
  // closing, they are discarded (server/shutdown.h).
  void TakeInput(Conn& c, std::uint16_t bid, int res) {
    char* data = tcp_buffers_.Buffer(bid);
    if (res > 0 && (c.life == Life::kServing || c.life == Life::kInputOver)) {
      const auto n = static_cast<std::size_t>(res);
      stats_.bytes_in += n;
      c.read_total += n;
      if (c.read_total >= c.read_limit) c.life = Life::kInputOver;
      if (c.out.empty()) {
        UppercaseInPlace(data, n);
        c.held.push_back({bid, static_cast<std::uint32_t>(n)});
        c.held_bytes += n;
        return;
      }
      c.out.AppendUppercased(data, n);
    }
    tcp_buffers_.Return(bid);  // at once: the buffer serves every connection of the shard
  }

  void HandleSend(const io_uring_cqe& cqe, Conn& c) {
    --c.ops;
    const SendState was = c.send;
    c.send = SendState::kNone;
    if (was == SendState::kDirect) return HandleDirectSend(cqe, c);
    if (cqe.res >= 0) {
      const auto n = static_cast<std::size_t>(cqe.res);
      stats_.bytes_out += n;
      c.out.Consume(n);  // a short send leaves the rest for the next one
      return;
    }
    HandleSendError(-cqe.res, c);
  }

  void HandleDirectSend(const io_uring_cqe& cqe, Conn& c) {
    std::size_t sent = cqe.res > 0 ? static_cast<std::size_t>(cqe.res) : 0;
    const bool short_send = sent < c.direct_len;
    stats_.bytes_out += sent;
    c.held_bytes -= sent;
    // Buffers sent in full go back to the ring.
    std::size_t done = 0;
    for (; done < c.held.size() && sent >= c.held[done].len - c.held_sent; ++done) {
      sent -= c.held[done].len - c.held_sent;
      c.held_sent = 0;
      tcp_buffers_.Return(c.held[done].bid);
    }
    c.held.erase(c.held.begin(), c.held.begin() + static_cast<std::ptrdiff_t>(done));
    c.held_sent += sent;
    if (cqe.res < 0 && cqe.res != -EAGAIN) return HandleSendError(-cqe.res, c);
    if (short_send) SpillHeld(c);  // the socket is full: the rest waits in `out`, buffers go back
  }

  // Moves what `held` has not sent into `out` (still empty, so order is kept) and returns the
  // buffers.
  void SpillHeld(Conn& c) {
    for (const Held& h : c.held) {
      c.out.Append(tcp_buffers_.Buffer(h.bid) + c.held_sent, h.len - c.held_sent);
      c.held_sent = 0;
      tcp_buffers_.Return(h.bid);
    }
    c.held.clear();
    c.held_bytes = 0;
  }

  void HandleSendError(int err, Conn& c) {
    switch (err) {
      case ECANCELED:  // closing
      case EINTR:
      case EAGAIN:
        break;
      default:  // EPIPE, ECONNRESET: the client is gone
        ++stats_.conn_resets;
        if (!c.closing()) c.life = Life::kClosing;
        break;
    }
  }

  void HandleConnCancel(const io_uring_cqe& cqe, Conn& c) {
    // -ENOENT (already completed) and -EALREADY (completing) are fine: the target's own final
    // completion arrives regardless. Anything else would leave a request we cannot stop.
    if (cqe.res < 0 && cqe.res != -ENOENT && cqe.res != -EALREADY) {
      DieOnRingError(ErrnoError("io_uring cancel", -cqe.res));
    }
    --c.ops;
  }

  // After the completions of a batch on `c`: sends what is waiting, receives if there is room,
  // and moves the connection along its life (see Life): lingering, closing, releasing the slot.
  void SendReceiveOrClose(Conn& c) {
    if (c.life == Life::kServing || c.life == Life::kInputOver) {
      if (c.send == SendState::kNone) {
        if (!c.held.empty()) {
          AddDirectSend(c);
        } else if (!c.out.empty()) {
          AddSend(c);
        }
      }
      if (c.life == Life::kServing) {
        if (c.recv == RecvState::kNone) ArmRecv(c);
      } else if (c.recv != RecvState::kNone) {
        if (c.recv != RecvState::kCancelling) AddCancelRecv(c);  // no more input wanted
      } else if (c.send == SendState::kNone) {
        if (stopping_) {
          Linger(c);
        } else {
          c.life = Life::kClosing;  // the client half-closed and everything went out
        }
      }
    }
    if (c.life == Life::kLingering) {
      if (OutputAcknowledged(c.fd)) {
        c.life = Life::kClosing;  // delivered (or the socket is gone): closing loses nothing now
      } else {
        if (c.recv == RecvState::kNone) AddRecv(c, /*multishot=*/true);  // to discard
        if (!linger_armed_) {
          linger_armed_ = true;
          AddTimeout(Op::kLinger, &linger_ts_, kLingerPoll);
        }
      }
    }
    if (c.closing()) {
      if (c.ops == 0) {
        Release(c);
      } else if (c.life == Life::kClosing &&
                 (c.recv != RecvState::kNone || c.send != SendState::kNone)) {
        AddCancelAll(c);
      }
    }
  }

  // Shutdown, once everything is sent (server/shutdown.h): the FIN goes out after the last reply
  // and the connection is closed only once the client has acknowledged all of it (checked every
  // kLingerPoll), so its kernel holds every reply and the FIN whatever follows. Meanwhile input
  // is read and discarded. The grace period bounds the wait.
  void Linger(Conn& c) {
    c.life = Life::kLingering;
    if (::shutdown(c.fd, SHUT_WR) != 0) c.life = Life::kClosing;  // ENOTCONN: the client is gone
  }

  // Receives as much as the output queue can take: multishot while what it may still fill fits
  // (with the kernel's byte limit it ends by itself at the room left), single recvs of at most the
  // room left near the cap, nothing at the cap (the send completion that frees room comes back
  // here through SendReceiveOrClose).
  void ArmRecv(Conn& c) {
    const std::size_t unsent = c.Unsent();
    if (unsent + multishot_headroom_ <= config_.conn_buffer) {
      AddRecv(c, /*multishot=*/true);
    } else if (unsent < config_.conn_buffer) {
      AddRecv(c, /*multishot=*/false);
    }
  }

  void Release(Conn& c) {
    AddClose(c.fd);
    c.fd = -1;
    c.gen = (c.gen + 1) & Tag::kGenMask;
    c.recv = RecvState::kNone;
    c.send = SendState::kNone;
    c.life = Life::kServing;
    c.read_total = 0;
    c.read_limit = UINT64_MAX;
    c.out.Clear();
    for (const Held& h : c.held) tcp_buffers_.Return(h.bid);  // no send of them is in flight
    c.held.clear();
    c.held_sent = c.held_bytes = 0;
    free_slots_.push_back(c.index);
    --live_;
    ++stats_.closed;
  }

  void HandleUdpRecv(const io_uring_cqe& cqe) {
    if (!(cqe.flags & IORING_CQE_F_MORE)) udp_recv_armed_ = false;
    if (cqe.flags & IORING_CQE_F_BUFFER) {
      const auto bid = static_cast<std::uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
      char* buf = udp_buffers_.Buffer(bid);
      io_uring_recvmsg_out* out = io_uring_recvmsg_validate(buf, cqe.res, &udp_recv_msg_);
      ++stats_.datagrams_in;
      if (out == nullptr || out->namelen > udp_recv_msg_.msg_namelen || (out->flags & MSG_TRUNC) ||
          out->payloadlen > kMaxDatagram) {
        // Larger than any reply we may send (IPv6 allows 65527 bytes; the buffer has room).
        ++stats_.udp_drops;
        udp_buffers_.Return(bid);
      } else {
        void* payload = io_uring_recvmsg_payload(out, &udp_recv_msg_);
        const unsigned len = io_uring_recvmsg_payload_length(out, cqe.res, &udp_recv_msg_);
        UppercaseInPlace(static_cast<char*>(payload), len);
        AddUdpSend(bid, io_uring_recvmsg_name(out), out->namelen, payload, len);
      }
    } else if (cqe.res < 0) {
      // ENOBUFS: every buffer holds a reply in flight; re-armed when one comes back. ECANCELED:
      // shutdown. Anything else (an ICMP error for an earlier reply) ends the multishot only.
    }
    MaybeRearmUdp();
  }

  void HandleUdpSend(const io_uring_cqe& cqe, std::uint16_t bid) {
    --udp_sends_;
    if (cqe.res >= 0) {
      ++stats_.datagrams_out;
    } else {
      ++stats_.udp_drops;  // EAGAIN (socket buffer full), or this destination failed
    }
    udp_buffers_.Return(bid);
    MaybeRearmUdp();
  }

  void MaybeRearmUdp() {
    // Only with a buffer to spare, else the new recvmsg would fail at once with ENOBUFS.
    if (!udp_recv_armed_ && !stopping_ && udp_sends_ < kUdpBuffers) AddUdpRecv();
  }

  // ---- The loop ----

  bool Finished() const {
    return stopping_ && live_ == 0 && !accept_armed_ && !udp_recv_armed_ && udp_sends_ == 0;
  }

  void Reap() {
    ring_.ForEachCompletion([this](const io_uring_cqe& cqe) { Handle(cqe); });
    for (const std::uint32_t index : touched_) {
      Conn& c = conns_[index];
      c.touched = false;
      if (c.fd >= 0) SendReceiveOrClose(c);
    }
    touched_.clear();
    tcp_buffers_.Commit();
    udp_buffers_.Commit();
  }

  absl::Status Loop() {
    while (!Finished()) {
      // Submits everything the last round produced and sleeps until the next completion.
      if (absl::Status s = ring_.SubmitAndWait(); !s.ok()) return s;
      Reap();
    }
    return absl::OkStatus();
  }

  // Cancels whatever is still in flight (the grace timer; everything, after an error) and waits
  // until the kernel confirmed it, so no request outlives the memory it points into.
  void Teardown() {
    stopping_ = true;
    for (Conn& c : conns_) {
      if (c.fd >= 0 && !c.closing()) {
        c.life = Life::kClosing;
        SendReceiveOrClose(c);
      }
    }
    ring_.CancelEverything(kTeardownTimeout, [this] { Reap(); });
    for (Conn& c : conns_) {
      if (c.fd >= 0) ::close(c.fd);  // only if the kernel never confirmed the cancel
    }
    ring_.Close();  // also drops the registered ring fd of this thread
    listener_.reset();
    udp_.reset();
  }

  // ---- Kernels before 6.17: no byte limit, so backpressure cancels the recv ----
  //
  // Without the kernel's byte limit a multishot recv fills buffers for as long as data arrives.
  // A completion that finds the output queue's room short of what the recv may still deliver
  // cancels it; SendReceiveOrClose then continues with single-shot recvs. The cancel lands after
  // up to a burst of kMultishotBurst buffers from one wake-up of the socket (MULTISHOT_MAX_RETRY,
  // Linux >= 6.8; older kernels loop until the socket is empty, a looser bound), so the buffers
  // must be smaller (RecvBufferSize) and the queue may overshoot its cap by up to that burst (its
  // overflow, see OutputQueue). UPCASE_URING_RECV_LIMIT=off takes this path on any kernel.
  static constexpr std::size_t kMultishotBurst = 32;

  void CancelRecvNearTheCap(Conn& c) {
    if (c.recv == RecvState::kMultishot && !c.closing() &&
        c.Unsent() + multishot_headroom_ > config_.conn_buffer) {
      AddCancelRecv(c);
    }
  }

  // ---- State ----

  const ServerConfig& config_;
  const std::size_t max_conns_;  // this shard's share of --max-conns
  const int stop_fd_;            // the backend's eventfd; readable once Stop() was called
  const bool recv_limit_ = UseRecvLimit();
  // Buffers a multishot recv may still fill, their size, and so the free room in the output queue
  // that keeps a multishot recv armed.
  const std::size_t recv_in_flight_ = recv_limit_ ? kLimitedRecvBuffers : kMultishotBurst;
  const std::uint32_t recv_buffer_size_ = RecvBufferSize(config_.conn_buffer, recv_in_flight_);
  const std::size_t multishot_headroom_ = recv_in_flight_ * recv_buffer_size_;

  Ring ring_;
  BufferRing tcp_buffers_;
  BufferRing udp_buffers_;
  Fd listener_;  // invalid when TCP is not served, and once shutdown stopped accepting
  Fd udp_;

  OutputPool output_pool_;  // storage for the connections' output queues; outlives them
  std::deque<Conn> conns_;  // slots; a deque so references stay valid as it grows
  std::vector<std::uint32_t> free_slots_;
  std::vector<std::uint32_t> touched_;  // slots with completions in this batch, see Touch
  std::size_t live_ = 0;

  msghdr udp_recv_msg_{};              // layout template for multishot recvmsg: name, no control
  std::vector<UdpReply> udp_replies_;  // indexed by UDP buffer id
  std::uint32_t udp_sends_ = 0;        // replies in flight, each holding its buffer

  bool accept_armed_ = false;  // armed iff a multishot accept is in the kernel
  bool accept_backoff_ = false;
  bool linger_armed_ = false;  // a kLinger timeout is in the kernel
  bool udp_recv_armed_ = false;
  bool stopping_ = false;  // Stop() was seen
  __kernel_timespec backoff_ts_{};
  __kernel_timespec grace_ts_{};
  __kernel_timespec linger_ts_{};

  ShardStats stats_;
};

class UringBackend final : public ShardedBackend {
 public:
  using ShardedBackend::ShardedBackend;

 private:
  absl::StatusOr<std::unique_ptr<ReactorShard>> CreateShard(ShardSetup setup) override {
    auto shard = std::make_unique<Shard>(config(), setup.max_conns, setup.stop_fd);
    if (absl::Status s = shard->Init(std::move(setup.tcp), std::move(setup.udp)); !s.ok()) return s;
    return shard;
  }
};

}  // namespace

BackendInfo UringBackendInfo() {
  return {"uring", "multi-reactor: one io_uring per shard, multishot accept/recv, provided buffers",
          /*sharded=*/true, UringAvailable, [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<UringBackend>(c);
          }};
}

}  // namespace upcase
