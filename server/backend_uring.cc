// uring: the multi-reactor server on io_uring. N shards, each one thread with its own ring.
//
// The model is epoll's (backend_epoll.cc): every shard owns a TCP listener and a UDP socket bound
// to the same port with SO_REUSEPORT, and a connection lives on the shard that accepted it. What
// changes is how a shard talks to the kernel. Instead of asking "what is ready?" and then making
// one system call per read and per write, a shard posts long-lived requests once and collects
// their results from a shared completion queue:
//
//   - one multishot accept per listener: every new connection is a completion, no accept4() call
//     (uring_accept.h);
//   - one multishot recv per connection, into a ring of provided buffers the kernel picks from,
//     so no buffer is reserved for an idle connection and no recv() call is made per request;
//   - sends are queued as submissions; everything a loop iteration produced (sends, re-arms,
//     cancels, closes) goes to the kernel in the same io_uring_submit_and_wait() that waits for
//     the next completions: one system call per loop iteration, whatever the number of requests;
//   - UDP: one multishot recvmsg, and a sendmsg per datagram back to its source (uring_udp.h).
//
// With IORING_SETUP_DEFER_TASKRUN the kernel does a request's deferred work (copying a recv's
// data, posting its completion) only inside our io_uring_enter(), on this thread: no interrupts,
// better cache locality, batches as large as the load makes them. The trade-off against epoll: a
// more involved life cycle per connection (a slot is reused only once its requests completed,
// uring_conn.h) and memory registered per shard (the provided buffers).
//
// Ordering and backpressure: at most one send is in flight per connection, so bytes leave in
// order; a short send is resubmitted for the rest. Output that cannot be sent yet waits in the
// connection's OutputQueue, capped by --conn-buffer as in epoll: a multishot recv is armed with a
// byte limit of the room left (Linux >= 6.17), near the cap single-shot recvs take no more than
// the room left, and at the cap the shard stops receiving until the queue drains. How much to
// receive, and the cancel older kernels without the byte limit need, is uring_recv.h.
//
// Abuse (server/limits.h), as in epoll: --max-conns-per-ip in the table all shards share (the
// peer's address from getpeername at admission, since one multishot accept has no per-connection
// address buffer); --idle-timeout on a coarse clock that a timeout request ticks, stamped by the
// completions that carry progress; --output-budget through the output queues' pool, which also
// cancels multishot recvs over it; UDP datagrams from ports below 1024 or our own are dropped.
//
// Shutdown follows the policy every backend shares (server/shutdown.h). The snapshot of what each
// socket had received is taken after the batch of completions that brought the stop is handled,
// when every byte the kernel moved into a provided buffer has been counted (TakeStopSnapshot).
//
// The ring itself (setup flags and fallbacks, provided-buffer rings, the user_data codec, kernel
// probing) is in uring_ring.h. Kernel needs: Linux >= 6.0 (multishot recv and recvmsg, provided
// buffer rings, cancel by fd); 6.1 for DEFER_TASKRUN; 6.17 for the recv byte limit, used when
// present. BackendInfo::available() probes it all at run time and says what is missing.
// Optional features, each of which removes one cost, are levers --uring-levers turns on or off to
// measure them (uring_levers.h): a registered ring fd (Ring::Enable), sends that post no
// completion when they succeed (AddDirectSend, ConfirmSkippedSends), and wait batching
// (SubmitAndWait). Each is marked "Lever <name>" where it acts.
// Try it: upcase-server --backend=uring --shards=2 5050, then `nc 127.0.0.1 5050` and
// `nc -u 127.0.0.1 5050`; `strace -c -f` on the server shows almost nothing but io_uring_enter.
#include <liburing.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
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
#include "server/limits.h"
#include "server/output_queue.h"
#include "server/sharded_backend.h"
#include "server/shutdown.h"
#include "server/uring_accept.h"
#include "server/uring_conn.h"
#include "server/uring_levers.h"
#include "server/uring_recv.h"
#include "server/uring_ring.h"
#include "server/uring_udp.h"

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

// TCP receive buffers, shared by a shard's connections and handed back once their bytes are sent
// or copied into an output queue. The kernel cycles through every buffer it is given, so each
// ends up resident: a shard gives kRecvBuffersInitial, and more (up to kRecvBuffers: one per
// connection per loop iteration at 512 connections) only when a recv found none left (ENOBUFS).
// Their size follows --conn-buffer (RecvPolicy, uring_recv.h).
constexpr std::uint32_t kRecvBuffers = 1024;  // a power of two, as the buffer ring requires
constexpr std::uint32_t kRecvBuffersInitial = 128;
constexpr std::uint16_t kTcpBufferGroup = 0;
constexpr std::uint16_t kUdpBufferGroup = 1;

// Lever fixed-files: the most slots in a shard's registered file table (one per connection).
constexpr std::size_t kMaxFixedFiles = 1 << 16;

// Lever min-wait: the most completions a shard waits for before handling them.
constexpr std::size_t kMinWaitBatch = 32;

// At exit, how long to wait for the kernel to confirm that every cancelled request is gone.
constexpr absl::Duration kTeardownTimeout = absl::Seconds(1);

// ---- Request kinds, in user_data (encoded and decoded by UserData, uring_ring.h) ----
//
// Op values start at 1, so a zero user_data (e.g. from a forgotten set_data) is never valid. For
// connection requests the generation is the slot's reuse count: a slot is reused only after all
// its requests have completed (Conn::ops == 0), so a mismatch would be a bug here; it is checked,
// not relied on.
enum class Op : std::uint8_t {
  kStop = 1,      // poll on the stop pipe fired
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
  kIdleTick,      // timeout: the idle clock ticks (--idle-timeout)
};

using Tag = UserData<Op>;

constexpr std::uint64_t Encode(Op op, std::uint32_t gen = 0, std::uint32_t index = 0) {
  return Tag{op, gen, index}.Encode();
}

// ---- Connection state: Conn and its state machines are in uring_conn.h ----

// ---- The shard ----

// One reactor: a thread's whole world. Everything here is touched by that thread only; Stop()
// reaches it through the pipe the backend owns.
class Shard : public ReactorShard {
 public:
  using ReactorShard::ReactorShard;
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
    if (absl::Status s = acceptor_.Init(std::move(listener)); !s.ok()) return s;
    if (acceptor_.serving() && (levers_ & kLeverFixedFiles)) {
      // One slot per connection this shard may serve at once; none if the kernel refuses it.
      files_ = static_cast<unsigned>(std::min<std::size_t>(max_conns_, kMaxFixedFiles));
      if (io_uring_register_files_sparse(ring_.get(), files_) != 0) files_ = 0;
    }
    if (acceptor_.serving()) {
      absl::Status s = tcp_buffers_.Init(ring_.get(), kTcpBufferGroup, kRecvBuffers,
                                         recv_.buffer_size(), kRecvBuffersInitial);
      if (!s.ok()) return s;
    }
    return udp_.Init(std::move(udp), kUdpBufferGroup);
  }

  ShardStats stats() const override {
    ShardStats s = stats_;
    s.provided_buffer_bytes = tcp_buffers_.given_bytes() + udp_.buffer_bytes();
    return s;
  }

  absl::Status Run() override {
    // SINGLE_ISSUER binds the ring to the thread that enables it: this one.
    if (absl::Status s = ring_.Enable(levers_ & kLeverRingFd); !s.ok()) return s;
    AddStopPoll();
    if (acceptor_.serving()) acceptor_.Start();
    if (acceptor_.serving() && idle_.enabled()) AddTimeout(Op::kIdleTick, &idle_ts_, idle_.tick());
    if (udp_.serving()) udp_.Start();
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

  void AddTimeout(Op op, __kernel_timespec* ts, absl::Duration d) {
    ring_.AddTimeout(ts, d, Encode(op));
  }

  // Lever fixed-files: the request names the connection's socket by its slot in the registered
  // file table, which skips the fget/fput of the socket's file when the kernel takes it up.
  static void SetFile(io_uring_sqe* sqe, const Conn& c) {
    if (!c.fixed) return;
    sqe->fd = static_cast<int>(c.index);
    sqe->flags |= IOSQE_FIXED_FILE;
  }

  // Receives into the shard's provided buffers, never more than the output queue may still take
  // (RecvPolicy): a multishot recv ends by itself at the room left where the kernel can do that.
  void AddRecv(Conn& c, bool multishot) {
    io_uring_sqe* sqe = ring_.GetSqe();
    if (multishot) {
      io_uring_prep_recv_multishot(sqe, c.fd, nullptr, 0, 0);
      if (recv_.byte_limit()) {
        SetMultishotLimit(sqe, recv_.MultishotLimit(c.Unsent(), conns_.live()));
      }
    } else {
      io_uring_prep_recv(sqe, c.fd, nullptr, recv_.SingleSize(c.Unsent(), conns_.live()), 0);
    }
    SetFile(sqe, c);
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
    SetFile(sqe, c);
    io_uring_sqe_set_data64(sqe, Encode(Op::kSend, c.gen, c.index));
    c.send = SendState::kFromQueue;
    ++c.ops;
  }

  // Sends everything `held` from the provided buffers themselves, one sendmsg for several. With
  // MSG_DONTWAIT the kernel never parks it: it takes what the socket has room for, or answers
  // EAGAIN, and HandleSend moves the rest into `out` (see Conn).
  void AddDirectSend(Conn& c) {
    io_uring_sqe* sqe = ring_.GetSqe();
    // Lever skip-success: removes the completion of a send the socket takes in full (see
    // ConfirmSkippedSends). MSG_WAITALL makes a short send a failure, which still posts one.
    // Only while a multishot recv is armed: any later event on the connection completes it,
    // so the shard never sleeps waiting for a completion that is skipped.
    const bool skip = (levers_ & kLeverSkipSuccess) && c.life == Life::kServing &&
                      c.recv == RecvState::kMultishot;
    const int flags = MSG_NOSIGNAL | MSG_DONTWAIT | (skip ? MSG_WAITALL : 0);
    if (c.held.size() == 1) {
      const char* first = tcp_buffers_.Buffer(c.held.front().bid) + c.held_sent;
      io_uring_prep_send(sqe, c.fd, first, c.held_bytes, flags);
    } else {
      c.GatherHeld(tcp_buffers_);
      io_uring_prep_sendmsg(sqe, c.fd, &c.msg, flags);
    }
    SetFile(sqe, c);
    io_uring_sqe_set_data64(sqe, Encode(Op::kSend, c.gen, c.index));
    c.direct_len = c.held_bytes;
    c.send = SendState::kDirect;
    ++c.send_seq;
    c.send_skips_success = skip;
    if (skip) {
      sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
      skipped_sends_.push_back({c.index, c.gen, c.send_seq});
    }
    ++c.ops;
  }

  void AddCancelRecv(Conn& c) {
    ring_.AddCancel(Encode(Op::kRecv, c.gen, c.index), Encode(Op::kConnCancel, c.gen, c.index));
    c.recv = RecvState::kCancelling;
    ++c.ops;
  }

  void AddCancelAll(Conn& c) {
    io_uring_sqe* sqe = ring_.GetSqe();
    // Requests that name the socket by its table slot are found by that slot.
    if (c.fixed) {
      io_uring_prep_cancel_fd(sqe, static_cast<int>(c.index),
                              IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_FD_FIXED);
    } else {
      io_uring_prep_cancel_fd(sqe, c.fd, IORING_ASYNC_CANCEL_ALL);
    }
    io_uring_sqe_set_data64(sqe, Encode(Op::kConnCancel, c.gen, c.index));
    c.life = Life::kCancelled;
    ++c.ops;
  }

  void AddClose(int fd) {
    io_uring_sqe* sqe = ring_.GetSqe();
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, Encode(Op::kClose));
  }

  // ---- Handlers: one per completion type ----

  void Handle(const io_uring_cqe& cqe) {
    const Tag tag = Tag::Decode(cqe.user_data);
    switch (tag.op) {
      case Op::kStop:
        return HandleStop(cqe);
      case Op::kAccept:
        return HandleAccept(cqe);
      case Op::kAcceptResume:
        return acceptor_.HandleResume(cqe);
      case Op::kGrace:
        return HandleGrace(cqe);
      case Op::kLinger:
        return HandleLinger(cqe);
      case Op::kIdleTick:
        return HandleIdleTick(cqe);
      case Op::kRecv:
      case Op::kSend:
      case Op::kConnCancel:
        return HandleConnection(cqe, tag);
      case Op::kUdpRecv:
        return udp_.HandleRecv(cqe);
      case Op::kUdpSend:
        return udp_.HandleSend(cqe, static_cast<std::uint16_t>(tag.index));
      case Op::kClose:
        // A failed close (EBADF would be a bug here; EINTR leaves the descriptor closed) has
        // nothing left to undo: the slot was released when the close was submitted.
      case Op::kCancel:
        // res: 0 or a count when found, -ENOENT when the target had completed already, -EALREADY
        // when it was running; in every case its own completion follows or has arrived.
        return;
    }
  }

  void HandleConnection(const io_uring_cqe& cqe, Tag tag) {
    Conn* c = conns_.Find(tag.index, tag.gen);
    if (c == nullptr) {
      DieOnRingError(
          absl::InternalError(absl::StrCat("completion for a stale connection slot ", tag.index)));
    }
    if (tag.op == Op::kRecv) HandleRecv(cqe, *c);
    if (tag.op == Op::kSend) HandleSend(cqe.res, *c);
    if (tag.op == Op::kConnCancel) HandleConnCancel(cqe, *c);
    Touch(*c);
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

  void HandleStop(const io_uring_cqe& cqe) {
    if (cqe.res < 0 && cqe.res != -ECANCELED) {
      DieOnRingError(ErrnoError("poll on the stop pipe", -cqe.res));  // -EBADF etc.: a bug
    }
    if (cqe.res == -ECANCELED || stopping_) return;
    stopping_ = true;
    acceptor_.Stop();
    udp_.Stop();
    // What each connection has received is counted once this batch is handled (Reap).
    snapshot_pending_ = true;
    AddTimeout(Op::kGrace, &grace_ts_, config_.grace);
  }

  // Every connection reads what the kernel had received before now, answers it, and lingers.
  // Not shutdown(SHUT_RD): its EOF comes whenever the receive queue runs dry, even while the
  // client's kernel still holds data for it, and once our FIN follows, Linux answers any
  // further data from the client with a reset that discards the replies not yet sent.
  //
  // Received = read_total (bytes whose completions were handled) + SIOCINQ (bytes still in the
  // socket). Bytes the kernel already moved into provided buffers whose completions are not
  // handled yet are in neither, so this runs between batches: after the batch that brought the
  // stop (whose later completions may carry such bytes) and while the CQ has not overflowed
  // (overflowed completions reach the CQ only in the next io_uring_enter). With DEFER_TASKRUN the
  // kernel moves no data into buffers outside our io_uring_enter(), so nothing is in flight
  // between the two counts. (The older setup modes without it run that work at other moments,
  // and a byte may then still slip between them.)
  void TakeStopSnapshot() {
    if (ring_.CqOverflowed()) return;  // next batch
    snapshot_pending_ = false;
    conns_.ForEach([this](Conn& c) {
      if (c.life != Life::kServing) return;
      const std::uint64_t queued = ReceivedNotRead(c.fd);
      if (queued == 0) {
        c.life = Life::kInputOver;  // nothing waiting (or the client is gone already)
      } else {
        c.read_limit = c.read_total + queued;
      }
      SendReceiveOrClose(c);
    });
  }

  void HandleAccept(const io_uring_cqe& cqe) {
    if (const int fd = acceptor_.HandleAccept(cqe); fd >= 0) Admit(fd);
    if (!acceptor_.error().ok()) stopping_ = true;  // Loop returns the error after this batch
  }

  void HandleGrace(const io_uring_cqe& cqe) {
    CheckTimeout(cqe, "grace timeout");
    if (cqe.res == -ECANCELED) return;  // the shard finished first
    // Clients that never read their output: give up on them.
    conns_.ForEach([this](Conn& c) { CloseNow(c); });
  }

  void HandleLinger(const io_uring_cqe& cqe) {
    CheckTimeout(cqe, "linger timeout");
    linger_armed_ = false;
    conns_.ForEach([this](Conn& c) {
      if (c.life == Life::kLingering) SendReceiveOrClose(c);
    });
  }

  // The idle clock ticks: closes the connections that neither received nor sent anything for
  // --idle-timeout (unless their client is still taking output the kernel holds: OutputWatch),
  // and re-arms. Shutdown has its own bound (--grace): the clock stops with it.
  void HandleIdleTick(const io_uring_cqe& cqe) {
    CheckTimeout(cqe, "idle tick timeout");
    if (cqe.res == -ECANCELED || stopping_) return;
    idle_.Advance();
    conns_.ForEach([this](Conn& c) {
      if (c.life != Life::kServing && c.life != Life::kInputOver) return;
      if (!idle_.Idle(c.last_progress)) {
        c.output_watch.Forget();
        return;
      }
      switch (c.output_watch.Look(c.fd, idle_.limit() / 2)) {
        case OutputWatch::Verdict::kReading:
          c.last_progress = idle_.now();
          return;
        case OutputWatch::Verdict::kLookNext:
          return;
        case OutputWatch::Verdict::kIdle:
          ++stats_.idle_closed;
          CloseNow(c);
      }
    });
    AddTimeout(Op::kIdleTick, &idle_ts_, idle_.tick());
  }

  // One multishot accept has no per-connection address buffer: AdmitPeer asks the socket.
  void Admit(int fd) {
    PeerKey peer;
    if (!AdmitPeer(fd, conns_.live(), /*address=*/nullptr, &peer)) {
      ::close(fd);
      return;
    }
    Conn& c = conns_.Add(fd);
    // Lever fixed-files: the socket into the table, at the connection's slot.
    c.fixed = c.index < files_ && io_uring_register_files_update(ring_.get(), c.index, &fd, 1) == 1;
    c.peer = peer;
    c.last_progress = idle_.now();
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
    } else if (c.recv == RecvState::kMultishot && !c.closing() &&
               recv_.MustCancel(c.Unsent(), conns_.live())) {
      AddCancelRecv(c);  // see "Kernels before 6.17" in uring_recv.h
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
      c.last_progress = idle_.now();
      if (c.read_total >= c.read_limit) c.life = Life::kInputOver;
      if (c.out.empty()) {
        UppercaseInPlace(data, n);
        c.Hold(bid, static_cast<std::uint32_t>(n));
        return;
      }
      c.out.AppendUppercased(data, n);
    }
    tcp_buffers_.Return(bid);  // at once: the buffer serves every connection of the shard
  }

  // `res`: the completion's, or for a skipped one (ConfirmSkippedSends) all it was asked to send.
  void HandleSend(int res, Conn& c) {
    --c.ops;
    const SendState was = c.send;
    c.send = SendState::kNone;
    c.send_skips_success = false;
    if (was == SendState::kDirect) return HandleDirectSend(res, c);
    if (res >= 0) {
      const auto n = static_cast<std::size_t>(res);
      stats_.bytes_out += n;
      c.last_progress = idle_.now();
      c.out.Consume(n);  // a short send leaves the rest for the next one
      return;
    }
    HandleSendError(-res, c);
  }

  void HandleDirectSend(int res, Conn& c) {
    const std::size_t sent = res > 0 ? static_cast<std::size_t>(res) : 0;
    stats_.bytes_out += sent;
    if (sent > 0) c.last_progress = idle_.now();
    c.DirectSent(sent, tcp_buffers_);  // buffers sent in full go back to the ring
    if (res < 0 && res != -EAGAIN) return HandleSendError(-res, c);
    // A short send: the socket is full. The rest waits in `out`, and the buffers go back.
    if (sent < c.direct_len) c.SpillHeld(tcp_buffers_);
  }

  // Lever skip-success: a direct send submitted with IOSQE_CQE_SKIP_SUCCESS posts a completion
  // only when it fails or comes up short. With MSG_DONTWAIT the kernel runs it inside the
  // io_uring_enter() that submits it and posts that completion before returning. So once the
  // completions of that enter are handled, a skipped send whose completion did not come was
  // taken in full -- unless completions still wait in the kernel (CQ overflow) or the enter
  // did not take every entry: then the next batch decides. `submitted`: the entries of
  // skipped_sends_ queued before the last enter (newer ones have not reached the kernel yet).
  void ConfirmSkippedSends(std::size_t submitted) {
    if (submitted == 0 || ring_.CqOverflowed()) return;
    for (std::size_t i = 0; i < submitted; ++i) {
      const SkippedSend& s = skipped_sends_[i];
      Conn* c = conns_.Find(s.index, s.gen);
      // Gone, or its completion came (a short send): handled already.
      if (c == nullptr || c->send != SendState::kDirect || !c->send_skips_success ||
          c->send_seq != s.seq) {
        continue;
      }
      ring_.CompletedWithoutCqe();
      HandleSend(static_cast<int>(c->direct_len), *c);
      Touch(*c);
    }
    skipped_sends_.erase(skipped_sends_.begin(),
                         skipped_sends_.begin() + static_cast<std::ptrdiff_t>(submitted));
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

  // No more I/O on `c`: its requests are cancelled, and it is closed once they are gone.
  void CloseNow(Conn& c) {
    if (c.closing()) return;
    c.life = Life::kClosing;
    SendReceiveOrClose(c);
  }

  // Shutdown, once everything is sent (server/shutdown.h): the FIN goes out after the last reply
  // and the connection is closed only once the client has acknowledged all of it (checked every
  // kLingerPoll), so its kernel holds every reply and the FIN whatever follows. Meanwhile input
  // is read and discarded. The grace period bounds the wait.
  void Linger(Conn& c) {
    c.life = Life::kLingering;
    if (::shutdown(c.fd, SHUT_WR) != 0) c.life = Life::kClosing;  // ENOTCONN: the client is gone
  }

  // Receives as much as the output queue can take (RecvPolicy, uring_recv.h). Nothing at its cap:
  // the send completion that frees room comes back here through SendReceiveOrClose.
  void ArmRecv(Conn& c) {
    switch (recv_.Choose(c.Unsent(), conns_.live())) {
      case RecvArm::kMultishot:
        return AddRecv(c, /*multishot=*/true);
      case RecvArm::kSingle:
        return AddRecv(c, /*multishot=*/false);
      case RecvArm::kNone:
        return;
    }
  }

  void Release(Conn& c) {
    per_address_.Release(c.peer);
    if (c.fixed) {
      // Out of the table before the close, or the table's reference would keep the socket open.
      // No request of the connection is in flight (ops == 0), and the slot is free for the
      // next connection only after this.
      int none = -1;
      if (io_uring_register_files_update(ring_.get(), c.index, &none, 1) != 1) {
        DieOnRingError(absl::InternalError("io_uring_register_files_update failed at release"));
      }
    }
    AddClose(c.fd);
    c.Reset(tcp_buffers_);
    conns_.Remove(c, Tag::kGenMask);
    ++stats_.closed;
  }

  // ---- The loop ----

  bool Finished() const {
    return stopping_ && conns_.live() == 0 && !acceptor_.busy() && !udp_.busy();
  }

  void Reap() {
    // Skipped sends queued before the enter that just returned, if it submitted everything.
    const std::size_t submitted = ring_.AllSubmitted() ? skipped_sends_.size() : 0;
    ring_.ForEachCompletion([this](const io_uring_cqe& cqe) { Handle(cqe); });
    ConfirmSkippedSends(submitted);
    if (snapshot_pending_) TakeStopSnapshot();
    for (const std::uint32_t index : touched_) {
      Conn& c = conns_[index];
      c.touched = false;
      if (c.fd >= 0) SendReceiveOrClose(c);
    }
    touched_.clear();
    tcp_buffers_.Commit();
    udp_.Commit();
  }

  absl::Status Loop() {
    while (!Finished()) {
      // Submits everything the last round produced and sleeps until the next completion.
      if (absl::Status s = SubmitAndWait(); !s.ok()) return s;
      Reap();
      if (!acceptor_.error().ok()) return acceptor_.error();
    }
    return absl::OkStatus();
  }

  // Lever min-wait: with more than one connection, waits for one completion per connection (up
  // to kMinWaitBatch) but no longer than --uring-min-wait once the first has arrived. Removes
  // wake-ups (and loop iterations) below saturation, where each would handle one completion.
  absl::Status SubmitAndWait() {
    const unsigned batch =
        static_cast<unsigned>(std::min<std::size_t>(conns_.live(), kMinWaitBatch));
    if (!(levers_ & kLeverMinWait) || batch < 2) return ring_.SubmitAndWait();
    return ring_.SubmitAndWaitBatch(batch, config_.uring_min_wait);
  }

  // Cancels whatever is still in flight (the grace timer; everything, after an error) and waits
  // until the kernel confirmed it, so no request outlives the memory it points into.
  void Teardown() {
    stopping_ = true;
    conns_.ForEach([this](Conn& c) { CloseNow(c); });
    ring_.CancelEverything(kTeardownTimeout, [this] { Reap(); });
    // Only if the kernel never confirmed the cancel:
    conns_.ForEach([](Conn& c) { ::close(c.fd); });
    ring_.Close();  // also drops the registered ring fd of this thread
    acceptor_.Close();
    udp_.Close();
  }

  // ---- State ----

  const RecvPolicy recv_{config_, output_pool_, UseRecvLimit()};
  // --uring-levers, less what this kernel lacks (uring_levers.h).
  const unsigned levers_ = UringLeversInEffect(config_.uring_levers, config_.sqpoll);

  Ring ring_;
  BufferRing tcp_buffers_;
  UringAcceptor acceptor_{
      &ring_, &stats_, {Encode(Op::kAccept), Encode(Op::kAcceptResume), Encode(Op::kCancel)}};
  UringUdp udp_{&ring_,
                &stats_,
                {Encode(Op::kUdpRecv), Encode(Op::kUdpSend), Encode(Op::kCancel)},
                config_.udp_reflection_guard};

  unsigned files_ = 0;  // lever fixed-files: slots in the registered file table (0: none)
  ConnSlots conns_{&output_pool_};
  std::vector<std::uint32_t> touched_;  // slots with completions in this batch, see Touch
  // Lever skip-success: direct sends whose success posts no completion, oldest first.
  struct SkippedSend {
    std::uint32_t index;
    std::uint32_t gen;
    std::uint32_t seq;  // Conn::send_seq when it was queued
  };
  std::vector<SkippedSend> skipped_sends_;

  bool linger_armed_ = false;      // a kLinger timeout is in the kernel
  bool stopping_ = false;          // Stop() was seen
  bool snapshot_pending_ = false;  // TakeStopSnapshot() runs after this batch
  __kernel_timespec grace_ts_{};
  __kernel_timespec linger_ts_{};
  __kernel_timespec idle_ts_{};
};

}  // namespace

BackendInfo UringBackendInfo() {
  return {"uring",
          "multi-reactor: one io_uring per shard, multishot accept/recv, provided buffers",
          /*sharded=*/true,
          /*reactor=*/true,
          UringAvailable,
          [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<ShardedBackendOf<Shard>>(c);
          }};
}

}  // namespace upcase
