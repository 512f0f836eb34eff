// epoll: the multi-reactor server. N shards, each one thread with its own epoll instance.
//
// The model: every shard owns a non-blocking TCP listener and a UDP socket, all bound to the same
// port with SO_REUSEPORT, so the kernel spreads new connections and datagrams across the shards by
// a hash of the address 4-tuple; a connection then lives on the shard that accepted it. A shard
// sleeps in epoll_wait() until any of its sockets is ready and serves it without ever blocking,
// so one thread carries thousands of connections, and shards share no lock, counter or buffer.
//
// The trade-off against `threads`: no thread and no context switch per connection, but every
// wait, read and write is still a system call of its own (epoll_wait + recv + send per request
// at best), a slow client's state must be kept by hand (the pending output below), and the
// kernel's hash, not the load, picks the shard, so one shard can end up busier than the others.
//
// Level-triggered, not edge-triggered. A connection that used up its fairness budget with data
// still unread is simply reported again by the next epoll_wait(), so no private "still ready"
// list is needed and no read has to be repeated until EAGAIN just to re-arm an edge. The price is
// an epoll_ctl() whenever a connection's interest changes (a short write, backpressure), which
// happens on the slow path only.
//
// Limits: --max-conns is per server and split across the shards so they need no shared counter:
// each shard admits ceil(max-conns / shards), so the server as a whole may admit up to
// shards - 1 more. --conn-buffer caps each connection's unsent output; at the cap the shard stops
// reading that connection until the client drains it, so a client that never reads costs at most
// that much memory here (the rest waits in the kernel's socket buffers, then in the client).
//
// Abuse (server/limits.h): --max-conns-per-ip is checked against the table all shards share when
// a connection is admitted, and given back when it closes. --idle-timeout runs on a timerfd that
// ticks a coarse clock; a connection stamps the tick whenever it reads or sends something, and
// the tick handler closes those whose stamp is too old, so the request path reads no clock.
// --output-budget caps the unsent output of all of a shard's connections (output_queue.h). UDP
// datagrams from ports below 1024 or from our own port are dropped unanswered.
//
// Shutdown follows the policy every backend shares (server/shutdown.h): answer what each socket
// had received when the stop arrived, send the FIN after the output, and linger, discarding
// input, until the client has acknowledged everything or closed.
//
// Kernel needs: Linux >= 3.9 (SO_REUSEPORT), with recvmmsg (2.6.33) and sendmmsg (3.0).
// Try it: upcase-server --backend=epoll --shards=2 5050, then `nc 127.0.0.1 5050` in a few
// terminals and `nc -u 127.0.0.1 5050`; the per-shard counters at exit show who served whom.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/net.h"
#include "common/sys.h"
#include "common/uppercase.h"
#include "server/accept_errors.h"
#include "server/backend.h"
#include "server/limits.h"
#include "server/output_queue.h"
#include "server/sharded_backend.h"
#include "server/shutdown.h"

namespace upcase {
namespace {

// Events taken from one epoll_wait(). More ready sockets are reported by the next call.
constexpr int kMaxEvents = 256;
// Largest single recv() on a connection; also the size of each shard's shared read buffer.
constexpr std::size_t kReadChunk = 64 * 1024;
// Fairness budget: per connection and loop iteration, at most this many reads (so at most
// kReadsPerWakeup * kReadChunk bytes) before the shard moves on to the next ready socket.
constexpr int kReadsPerWakeup = 4;
// Connections accepted per wake-up of the listener, so a connection storm cannot starve I/O.
constexpr int kAcceptsPerWakeup = 64;
// Datagrams per recvmmsg()/sendmmsg() call, and calls per wake-up of the UDP socket.
constexpr int kUdpBatch = 32;
constexpr int kUdpBatchesPerWakeup = 4;
// Out of descriptors and the spare one could not help: stop polling the listener this long.
constexpr absl::Duration kAcceptPause = absl::Milliseconds(100);
// A connection's read budget before shutdown: no limit.
constexpr std::uint64_t kUnlimited = UINT64_MAX;

// What became ready, in epoll_event.data.u64. Encoded and decoded only here:
//
//    63            32 31             0
//   +----------------+----------------+
//   |     Source     |  descriptor    |
//   +----------------+----------------+
//
// Connections are found by descriptor (Shard::conns_ is indexed by it), never by pointer: an event
// for a connection closed earlier in the same batch then finds nothing, and one for a descriptor
// number already reused by a new connection costs at most a read that returns EAGAIN, because
// handlers act on what recv()/send() say, never on EPOLLERR/EPOLLHUP alone.
enum class Source : std::uint32_t { kStop, kListener, kUdp, kConnection, kIdleTick };

std::uint64_t EncodeTag(Source source, int fd) {
  return (static_cast<std::uint64_t>(source) << 32) | static_cast<std::uint32_t>(fd);
}
Source SourceOf(std::uint64_t tag) { return static_cast<Source>(tag >> 32); }
int FdOf(std::uint64_t tag) { return static_cast<int>(tag & 0xFFFF'FFFFu); }

// The three-way result of one recv()/send() (as in wrk): EAGAIN is handled the same everywhere.
enum class IoStatus { kOk, kWouldBlock, kEof, kError };
struct IoResult {
  IoStatus status;
  std::size_t bytes = 0;  // kOk: how many
  int err = 0;            // kError: the errno
};

IoResult Recv(int fd, char* buf, std::size_t n) {
  while (true) {
    const ssize_t r = ::recv(fd, buf, n, 0);
    if (r > 0) return {IoStatus::kOk, static_cast<std::size_t>(r)};
    if (r == 0) return {IoStatus::kEof};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return {IoStatus::kWouldBlock};
    return {IoStatus::kError, 0, errno};
  }
}

IoResult Send(int fd, const char* buf, std::size_t n) {
  while (true) {
    const ssize_t r = ::send(fd, buf, n, MSG_NOSIGNAL);
    if (r >= 0) return {IoStatus::kOk, static_cast<std::size_t>(r)};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return {IoStatus::kWouldBlock};
    return {IoStatus::kError, 0, errno};
  }
}

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
  std::uint32_t interest = 0;   // the events epoll watches for fd right now
  PeerKey peer;                 // the client's address: its slot in the per-address table
  std::uint32_t last_progress;  // IdleClock tick of the last byte read or sent
  OutputWatch output_watch;     // --idle-timeout: is a slow reader still taking its output?
};

// What a handler decided about its connection.
enum class Verdict { kKeep, kClose, kReset };

Verdict VerdictForError(int err) {
  return err == ECONNRESET || err == EPIPE ? Verdict::kReset : Verdict::kClose;
}

// One reactor: a thread's whole world. Everything here is touched by that thread only.
class Shard : public ReactorShard {
 public:
  using ReactorShard::ReactorShard;

  // Creates the epoll instance and registers the sockets (either may be invalid: not served).
  absl::Status Init(Fd listener, Fd udp) {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_.valid()) return ErrnoError("epoll_create1", errno);
    if (absl::Status s = Watch(stop_fd_, EPOLLIN, Source::kStop); !s.ok()) return s;
    listener_ = std::move(listener);
    if (listener_.valid()) {
      if (absl::Status s = Watch(listener_.get(), EPOLLIN, Source::kListener); !s.ok()) return s;
      spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      if (!spare_.valid()) return ErrnoError("open /dev/null (spare descriptor)", errno);
    }
    udp_ = std::move(udp);
    if (udp_.valid()) {
      absl::StatusOr<SocketAddress> local = LocalAddress(udp_.get());
      if (!local.ok()) return local.status();
      udp_port_ = local->port();
      if (absl::Status s = Watch(udp_.get(), EPOLLIN, Source::kUdp); !s.ok()) return s;
      udp_buf_.reset(new char[kUdpBatch * kMaxDatagram]);
    }
    if (listener_.valid() && idle_.enabled()) {
      if (absl::Status s = StartIdleTimer(); !s.ok()) return s;
    }
    read_buf_.reset(new char[kReadChunk]);
    return absl::OkStatus();
  }

  // The event loop. Returns when shutdown has finished, or with an error when serving cannot go on.
  absl::Status Run() override {
    std::array<epoll_event, kMaxEvents> events;
    while (!draining_ || open_conns_ > 0) {
      const int n = ::epoll_wait(epoll_.get(), events.data(), kMaxEvents, TimeoutMs());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("epoll_wait", errno);
      }
      for (int i = 0; i < n; ++i) {
        const std::uint64_t tag = events[i].data.u64;
        absl::Status status;
        switch (SourceOf(tag)) {
          case Source::kStop:
            status = HandleStop();
            break;
          case Source::kListener:
            status = HandleListener();
            break;
          case Source::kUdp:
            status = HandleUdp();
            break;
          case Source::kConnection:
            HandleConnection(FdOf(tag), events[i].events);
            break;
          case Source::kIdleTick:
            status = HandleIdleTick();
            break;
        }
        if (!status.ok()) return status;
      }
      if (absl::Status s = HandleTimers(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  // ---- setup helpers ----

  absl::Status Watch(int fd, std::uint32_t events, Source source) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = EncodeTag(source, fd);
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return ErrnoError(absl::StrCat("epoll_ctl add fd ", fd), errno);
    }
    return absl::OkStatus();
  }

  Connection* Find(int fd) {
    return static_cast<std::size_t>(fd) < conns_.size() ? conns_[fd].get() : nullptr;
  }

  // ---- TCP: accepting ----

  absl::Status HandleListener() {
    if (!listener_.valid() || accept_paused_) return absl::OkStatus();  // closed earlier in batch
    for (int i = 0; i < kAcceptsPerWakeup; ++i) {
      sockaddr_storage peer;
      socklen_t peer_len = sizeof peer;
      Fd conn(::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len,
                        SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!conn.valid()) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return absl::OkStatus();
        switch (ClassifyAcceptError(errno)) {
          case AcceptAction::kRetry:
            continue;
          case AcceptAction::kBackOff:
            ++stats_.accept_errors;
            if (!ShedOnePending()) return PauseAccepting();
            continue;
          case AcceptAction::kFatal:
            return ErrnoError("accept4", errno);
        }
      }
      PeerKey key;
      if (AdmitPeer(conn.get(), open_conns_, reinterpret_cast<const sockaddr*>(&peer), &key)) {
        Admit(std::move(conn), key);
      }  // else closed at once as `conn` goes out of scope
    }
    return absl::OkStatus();
  }

  // Takes `fd`, whose address `peer` holds a slot in the per-address table, into service.
  void Admit(Fd fd, const PeerKey& peer) {
    // TCP_NODELAY and the epoll registration fail only for a connection the client already reset,
    // or when the kernel is out of memory; either way, turn it away and keep serving the others.
    if (!SetNoDelay(fd.get()).ok() || !Watch(fd.get(), EPOLLIN, Source::kConnection).ok()) {
      ++stats_.accept_errors;
      per_address_.Release(peer);
      return;
    }
    const int n = fd.get();
    if (static_cast<std::size_t>(n) >= conns_.size()) conns_.resize(n + 1);
    conns_[n] = std::make_unique<Connection>(std::move(fd), &output_pool_, peer, idle_.now());
    conns_[n]->interest = EPOLLIN;
    ++open_conns_;
    ++stats_.accepted;
  }

  // Out of descriptors, the pending connection stays queued and the listener stays readable, so a
  // level-triggered loop would spin on it. Give the spare descriptor up for a moment to accept the
  // oldest queued connection and close it at once (its client sees a clean close instead of a
  // hang), then take the spare back. False when that did not work, e.g. because another shard or
  // thread took the freed slot first.
  bool ShedOnePending() {
    if (!spare_.valid()) return false;
    spare_.reset();
    Fd shed(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    const bool accepted = shed.valid() || errno == EAGAIN;
    shed.reset();
    spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    return accepted && spare_.valid();
  }

  // Stops polling the listener for kAcceptPause; HandleTimers() resumes it. Connected clients are
  // served meanwhile, and new ones wait in the listen backlog.
  absl::Status PauseAccepting() {
    epoll_event ev{};
    ev.data.u64 = EncodeTag(Source::kListener, listener_.get());
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev) != 0) {
      return ErrnoError("epoll_ctl pause listener", errno);
    }
    accept_paused_ = true;
    accept_resume_ns_ = MonotonicNanos() + absl::ToInt64Nanoseconds(kAcceptPause);
    return absl::OkStatus();
  }

  absl::Status ResumeAccepting() {
    accept_paused_ = false;
    if (!spare_.valid()) spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!listener_.valid()) return absl::OkStatus();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = EncodeTag(Source::kListener, listener_.get());
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev) != 0) {
      return ErrnoError("epoll_ctl resume listener", errno);
    }
    return absl::OkStatus();
  }

  // ---- TCP: serving a connection ----

  void HandleConnection(int fd, std::uint32_t events) {
    Connection* c = Find(fd);
    if (c == nullptr) return;  // closed earlier in this batch
    if (c->lingering) {
      CloseLingerOrWatch(*c, Discard(*c));
      return;
    }
    Verdict verdict = Verdict::kKeep;
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && !c->pending.empty()) verdict = Flush(*c);
    if (verdict == Verdict::kKeep && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) &&
        (c->interest & EPOLLIN)) {
      verdict = ReadSome(*c);
    }
    CloseLingerOrWatch(*c, verdict);
  }

  // Reads up to the fairness budget, answering each chunk before reading the next, so the shared
  // read buffer is free again after every step. Stops early at the backpressure cap.
  Verdict ReadSome(Connection& c) {
    for (int i = 0; i < kReadsPerWakeup; ++i) {
      // Never read more than pending output can still take: it stays <= the cap, exactly.
      const std::uint64_t room = std::min<std::uint64_t>(c.pending.room(), c.read_budget);
      if (room == 0) return Verdict::kKeep;
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(kReadChunk, room));
      const IoResult r = Recv(c.fd.get(), read_buf_.get(), want);
      switch (r.status) {
        case IoStatus::kWouldBlock:
          return Verdict::kKeep;
        case IoStatus::kEof:
          c.read_closed = true;
          return Verdict::kKeep;
        case IoStatus::kError:
          return VerdictForError(r.err);
        case IoStatus::kOk:
          break;
      }
      stats_.bytes_in += r.bytes;
      c.read_budget -= r.bytes;
      c.last_progress = idle_.now();
      UppercaseInPlace(read_buf_.get(), r.bytes);
      if (Verdict v = Reply(c, read_buf_.get(), r.bytes); v != Verdict::kKeep) return v;
      // A short read emptied the socket. Reading again would only return EAGAIN: one wasted
      // syscall per request. Level-triggered epoll reports the socket again when more arrives.
      if (r.bytes < want) return Verdict::kKeep;
    }
    return Verdict::kKeep;
  }

  // Sends a reply straight from the read buffer; what the kernel does not take goes to pending.
  Verdict Reply(Connection& c, const char* data, std::size_t n) {
    if (!c.pending.empty()) {  // older output first
      c.pending.Append(data, n);
      return Flush(c);
    }
    const IoResult r = Send(c.fd.get(), data, n);
    if (r.status == IoStatus::kError) return VerdictForError(r.err);
    const std::size_t sent = r.status == IoStatus::kOk ? r.bytes : 0;
    stats_.bytes_out += sent;
    c.pending.Append(data + sent, n - sent);
    return Verdict::kKeep;
  }

  // Lingering: input is no longer answered, only read so that the socket can close cleanly.
  Verdict Discard(Connection& c) {
    for (int i = 0; i < kReadsPerWakeup; ++i) {
      const IoResult r = Recv(c.fd.get(), read_buf_.get(), kReadChunk);
      switch (r.status) {
        case IoStatus::kOk:
          continue;
        case IoStatus::kWouldBlock:
          return Verdict::kKeep;
        case IoStatus::kEof:
          return Verdict::kClose;
        case IoStatus::kError:
          return VerdictForError(r.err);
      }
    }
    return Verdict::kKeep;
  }

  // Sends pending output until the socket takes less than offered (its buffer is full: wait for
  // EPOLLOUT) or nothing is left. The queue is a ring, so its bytes may come in two runs.
  Verdict Flush(Connection& c) {
    while (!c.pending.empty()) {
      const std::size_t offered = c.pending.front_size();
      const IoResult r = Send(c.fd.get(), c.pending.front(), offered);
      if (r.status == IoStatus::kError) return VerdictForError(r.err);
      if (r.status == IoStatus::kWouldBlock) break;
      stats_.bytes_out += r.bytes;
      if (r.bytes > 0) c.last_progress = idle_.now();
      c.pending.Consume(r.bytes);
      if (r.bytes < offered) break;
    }
    return Verdict::kKeep;
  }

  // After a handler ran: closes the connection when it is finished, starts lingering when
  // shutdown's budget is answered, else makes epoll watch what it needs next (readable unless
  // input is over or output is at the cap, writable while output is pending).
  void CloseLingerOrWatch(Connection& c, Verdict verdict) {
    if (verdict == Verdict::kReset) ++stats_.conn_resets;
    if (verdict != Verdict::kKeep) {
      Close(c);
      return;
    }
    const bool input_over = c.read_closed || c.read_budget == 0;
    if (input_over && c.pending.empty() && !c.lingering) {
      if (c.read_closed) {  // the client sends no more, so close() cannot hit unread input
        Close(c);
        return;
      }
      if (::shutdown(c.fd.get(), SHUT_WR) != 0) {  // ENOTCONN: the client is gone already
        Close(c);
        return;
      }
      c.lingering = true;
    }
    const bool can_read = !input_over && c.pending.room() > 0;
    const std::uint32_t wanted =
        c.lingering ? EPOLLIN : (can_read ? EPOLLIN : 0u) | (c.pending.empty() ? 0u : EPOLLOUT);
    if (wanted == c.interest) return;
    epoll_event ev{};
    ev.events = wanted;
    ev.data.u64 = EncodeTag(Source::kConnection, c.fd.get());
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) != 0) {
      Close(c);  // ENOMEM: this connection can no longer be driven; the others can
      return;
    }
    c.interest = wanted;
  }

  void Close(Connection& c) {
    const int fd = c.fd.get();
    per_address_.Release(c.peer);
    conns_[fd].reset();  // closing the descriptor also removes it from the epoll set
    --open_conns_;
    ++stats_.closed;
  }

  // ---- UDP ----

  // Receives datagrams in batches and answers each batch with one sendmmsg(), every reply to its
  // source. A reply the socket cannot take now is dropped and counted: UDP promises nothing more,
  // and a queue would grow without bound under a flood.
  absl::Status HandleUdp() {
    if (!udp_.valid()) return absl::OkStatus();  // closed earlier in this batch
    for (int batch = 0; batch < kUdpBatchesPerWakeup; ++batch) {
      for (int i = 0; i < kUdpBatch; ++i) {
        udp_iov_[i] = {udp_buf_.get() + i * kMaxDatagram, kMaxDatagram};
        udp_in_[i] = {};
        udp_in_[i].msg_hdr.msg_name = &udp_peers_[i];
        udp_in_[i].msg_hdr.msg_namelen = sizeof udp_peers_[i];
        udp_in_[i].msg_hdr.msg_iov = &udp_iov_[i];
        udp_in_[i].msg_hdr.msg_iovlen = 1;
      }
      const int n = ::recvmmsg(udp_.get(), udp_in_.data(), kUdpBatch, MSG_DONTWAIT, nullptr);
      if (n < 0) {
        switch (errno) {
          case EAGAIN:
            return absl::OkStatus();
          case EBADF:
          case EFAULT:
          case EINVAL:
          case ENOTSOCK:
            return ErrnoError("recvmmsg", errno);
          default:  // EINTR, or an ICMP error queued for an earlier reply: consumed, carry on
            continue;
        }
      }
      int replies = 0;
      for (int i = 0; i < n; ++i) {
        ++stats_.datagrams_in;
        if (udp_in_[i].msg_hdr.msg_flags & MSG_TRUNC) {
          ++stats_.udp_drops;  // larger than any reply we may send (IPv6 allows 65527 bytes)
          continue;
        }
        if (RefuseDatagram(reinterpret_cast<const sockaddr*>(&udp_peers_[i]), udp_port_)) {
          ++stats_.udp_refused;  // a well-known port or ourselves: a reply could loop
          continue;
        }
        udp_iov_[i].iov_len = udp_in_[i].msg_len;
        UppercaseInPlace(static_cast<char*>(udp_iov_[i].iov_base), udp_in_[i].msg_len);
        udp_out_[replies] = {};
        udp_out_[replies].msg_hdr.msg_name = &udp_peers_[i];
        udp_out_[replies].msg_hdr.msg_namelen = udp_in_[i].msg_hdr.msg_namelen;
        udp_out_[replies].msg_hdr.msg_iov = &udp_iov_[i];
        udp_out_[replies].msg_hdr.msg_iovlen = 1;
        ++replies;
      }
      SendReplies(replies);
      if (n < kUdpBatch) return absl::OkStatus();  // the queue is empty
    }
    return absl::OkStatus();
  }

  void SendReplies(int count) {
    int done = 0;
    while (done < count) {
      const int r = ::sendmmsg(udp_.get(), udp_out_.data() + done, count - done, MSG_DONTWAIT);
      if (r > 0) {
        stats_.datagrams_out += r;
        done += r;
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
        stats_.udp_drops += count - done;  // socket buffer full: drop the rest, never queue
        return;
      }
      ++stats_.udp_drops;  // this reply failed on its own (e.g. EPERM, EMSGSIZE): skip it
      ++done;
    }
  }

  // ---- --idle-timeout ----

  // A periodic timerfd ticks the idle clock: one wake-up per tick, nothing on the request path.
  absl::Status StartIdleTimer() {
    idle_timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!idle_timer_.valid()) return ErrnoError("timerfd_create", errno);
    const timespec tick = absl::ToTimespec(idle_.tick());
    const itimerspec every_tick{tick, tick};
    if (::timerfd_settime(idle_timer_.get(), 0, &every_tick, nullptr) != 0) {
      return ErrnoError("timerfd_settime", errno);
    }
    return Watch(idle_timer_.get(), EPOLLIN, Source::kIdleTick);
  }

  // Closes the connections that neither read nor sent anything for --idle-timeout, unless their
  // client is still taking output the kernel holds (OutputWatch). Shutdown has
  // its own bound (--grace), so the scan stops with it.
  absl::Status HandleIdleTick() {
    if (!idle_timer_.valid()) return absl::OkStatus();  // closed by a stop earlier in this batch
    std::uint64_t ticks = 0;
    if (::read(idle_timer_.get(), &ticks, sizeof ticks) != sizeof ticks) {
      if (errno == EAGAIN || errno == EINTR) return absl::OkStatus();
      return ErrnoError("read timerfd", errno);
    }
    for (std::uint64_t i = 0; i < ticks; ++i) idle_.Advance();
    if (draining_) return absl::OkStatus();
    for (std::unique_ptr<Connection>& c : conns_) {
      if (c == nullptr) continue;
      if (!idle_.Idle(c->last_progress)) {
        c->output_watch.Forget();
        continue;
      }
      switch (c->output_watch.Look(c->fd.get(), idle_.limit() / 2)) {
        case OutputWatch::Verdict::kReading:
          c->last_progress = idle_.now();
          continue;
        case OutputWatch::Verdict::kLookNext:
          continue;
        case OutputWatch::Verdict::kIdle:
          ++stats_.idle_closed;
          Close(*c);
      }
    }
    return absl::OkStatus();
  }

  // ---- shutdown and timers ----

  absl::Status HandleStop() {
    if (draining_) return absl::OkStatus();
    // The stop eventfd stays readable (every shard watches it): stop watching it.
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, stop_fd_, nullptr) != 0) {
      return ErrnoError("epoll_ctl del stop eventfd", errno);
    }
    // Stop accepting. What is still in this listener's backlog is reset by the kernel.
    draining_ = true;
    grace_deadline_ns_ = MonotonicNanos() + absl::ToInt64Nanoseconds(config_.grace);
    listener_.reset();
    idle_timer_.reset();
    spare_.reset();
    if (udp_.valid()) {
      absl::Status s = HandleUdp();  // answer what is already queued, then stop
      udp_.reset();
      if (!s.ok()) return s;
    }
    // What each socket has received by now is still read and answered by the normal loop; then
    // CloseLingerOrWatch() half-closes it and lets it linger.
    for (std::unique_ptr<Connection>& c : conns_) {
      if (c == nullptr || c->read_closed) continue;
      c->read_budget = ReceivedNotRead(c->fd.get());
      CloseLingerOrWatch(*c, Verdict::kKeep);
    }
    return absl::OkStatus();
  }

  // epoll_wait's timeout: until the next deadline (accept pause; during shutdown the grace period
  // and the next linger check), or forever.
  int TimeoutMs() const {
    std::int64_t deadline = INT64_MAX;
    if (accept_paused_) deadline = accept_resume_ns_;
    if (draining_) deadline = std::min({deadline, grace_deadline_ns_, next_linger_check_ns_});
    if (deadline == INT64_MAX) return -1;
    const std::int64_t left = deadline - MonotonicNanos();
    return left <= 0 ? 0 : static_cast<int>((left + 999'999) / 1'000'000);
  }

  absl::Status HandleTimers() {
    if (!accept_paused_ && !draining_) return absl::OkStatus();
    const std::int64_t now = MonotonicNanos();
    if (accept_paused_ && now >= accept_resume_ns_) {
      if (absl::Status s = ResumeAccepting(); !s.ok()) return s;
    }
    if (!draining_ || (now < next_linger_check_ns_ && now < grace_deadline_ns_)) {
      return absl::OkStatus();
    }
    next_linger_check_ns_ = now + absl::ToInt64Nanoseconds(kLingerPoll);
    for (std::unique_ptr<Connection>& c : conns_) {
      if (c == nullptr) continue;
      if (now >= grace_deadline_ns_) {
        Close(*c);  // grace is over: clients that never read, or never stop sending
        continue;
      }
      // Everything sent, FIN included, is acknowledged: the client has it all, and a reset caused
      // by input arriving after close() can no longer destroy any of it.
      if (c->lingering && OutputAcknowledged(c->fd.get())) Close(*c);
    }
    return absl::OkStatus();
  }

  Fd epoll_;
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

  bool accept_paused_ = false;  // the listener is out of the epoll set until accept_resume_ns_
  std::int64_t accept_resume_ns_ = 0;
  bool draining_ = false;  // Stop() was seen; connections close by grace_deadline_ns_
  std::int64_t grace_deadline_ns_ = 0;
  std::int64_t next_linger_check_ns_ = 0;  // during shutdown: when HandleTimers() looks again
};

}  // namespace

BackendInfo EpollBackendInfo() {
  return {"epoll", "multi-reactor: one epoll loop per shard, SO_REUSEPORT listeners",
          /*sharded=*/true, [] { return absl::OkStatus(); },
          [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<ShardedBackendOf<Shard>>(c);
          }};
}

}  // namespace upcase
