#include "server/readiness_shard.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/net.h"
#include "common/sys.h"
#include "common/uppercase.h"
#include "server/accept_errors.h"
#include "server/shutdown.h"

namespace upcase {
namespace {

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

Verdict VerdictForError(int err) {
  return err == ECONNRESET || err == EPIPE ? Verdict::kReset : Verdict::kClose;
}

}  // namespace

absl::Status ReadinessShard::Init(Fd listener, Fd udp) {
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

absl::Status ReadinessShard::Dispatch(Source source, int fd, std::uint32_t events) {
  switch (source) {
    case Source::kStop:
      return HandleStop();
    case Source::kListener:
      return HandleListener();
    case Source::kUdp:
      return HandleUdp();
    case Source::kConnection:
      HandleConnection(fd, events);
      return absl::OkStatus();
    case Source::kIdleTick:
      return HandleIdleTick();
  }
  return absl::OkStatus();
}

// ---- TCP: accepting ----

absl::Status ReadinessShard::HandleListener() {
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
    if (!Watchable(conn.get())) continue;  // closed at once as `conn` goes out of scope
    PeerKey key;
    if (AdmitPeer(conn.get(), open_conns_, reinterpret_cast<const sockaddr*>(&peer), &key)) {
      Admit(std::move(conn), key);
    }  // else closed at once as `conn` goes out of scope
  }
  return absl::OkStatus();
}

// Takes `fd`, whose address `peer` holds a slot in the per-address table, into service.
void ReadinessShard::Admit(Fd fd, const PeerKey& peer) {
  // TCP_NODELAY and the registration with the kernel fail only for a connection the client already
  // reset, or when the kernel is out of memory; either way, turn it away and keep serving the
  // others.
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
bool ReadinessShard::ShedOnePending() {
  if (!spare_.valid()) return false;
  spare_.reset();
  Fd shed(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  const bool accepted = shed.valid() || errno == EAGAIN;
  shed.reset();
  spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  return accepted && spare_.valid();
}

// Stops watching the listener for kAcceptPause; HandleTimers() resumes it. Connected clients are
// served meanwhile, and new ones wait in the listen backlog.
absl::Status ReadinessShard::PauseAccepting() {
  if (absl::Status s = Rewatch(listener_.get(), 0, Source::kListener); !s.ok()) return s;
  accept_paused_ = true;
  accept_resume_ns_ = MonotonicNanos() + absl::ToInt64Nanoseconds(kAcceptPause);
  return absl::OkStatus();
}

absl::Status ReadinessShard::ResumeAccepting() {
  accept_paused_ = false;
  if (!spare_.valid()) spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!listener_.valid()) return absl::OkStatus();
  return Rewatch(listener_.get(), EPOLLIN, Source::kListener);
}

// ---- TCP: serving a connection ----

void ReadinessShard::HandleConnection(int fd, std::uint32_t events) {
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
Verdict ReadinessShard::ReadSome(Connection& c) {
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
Verdict ReadinessShard::Reply(Connection& c, const char* data, std::size_t n) {
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
Verdict ReadinessShard::Discard(Connection& c) {
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
Verdict ReadinessShard::Flush(Connection& c) {
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
// shutdown's budget is answered, else makes the kernel watch what it needs next (readable unless
// input is over or output is at the cap, writable while output is pending).
void ReadinessShard::CloseLingerOrWatch(Connection& c, Verdict verdict) {
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
  if (!Rewatch(c.fd.get(), wanted, Source::kConnection).ok()) {
    Close(c);  // ENOMEM: this connection can no longer be driven; the others can
    return;
  }
  c.interest = wanted;
}

void ReadinessShard::Close(Connection& c) {
  const int fd = c.fd.get();
  per_address_.Release(c.peer);
  // Only Unwatch(closing) can fail (ENOMEM in a poller's table): the descriptor closes anyway.
  Unwatch(fd, /*closing=*/true).IgnoreError();
  conns_[fd].reset();
  --open_conns_;
  ++stats_.closed;
}

// ---- UDP ----

// Receives datagrams in batches and answers each batch with one sendmmsg(), every reply to its
// source. A reply the socket cannot take now is dropped and counted: UDP promises nothing more,
// and a queue would grow without bound under a flood.
absl::Status ReadinessShard::HandleUdp() {
  if (!udp_.valid()) return absl::OkStatus();  // closed earlier in this batch
  for (int batch = 0; batch < kUdpBatchesPerWakeup; ++batch) {
    for (int i = 0; i < kUdpBatch; ++i) {
      udp_iov_[i] = {udp_buf_.get() + i * kMaxDatagram, kMaxDatagram};
      udp_in_[i] = {};
      udp_in_[i].msg_hdr.msg_name = &udp_peers_[i];
      udp_in_[i].msg_hdr.msg_namelen = sizeof udp_peers_[i];
      udp_in_[i].msg_hdr.msg_iov = &udp_iov_[i];
      udp_in_[i].msg_hdr.msg_iovlen = 1;
      udp_in_[i].msg_hdr.msg_control = udp_control_[i].bytes;
      udp_in_[i].msg_hdr.msg_controllen = sizeof udp_control_[i].bytes;
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
      udp_guards_.drops.Count(udp_in_[i].msg_hdr, stats_);
      if (udp_in_[i].msg_hdr.msg_flags & MSG_TRUNC) {
        ++stats_.udp_drops;  // larger than any reply we may send (IPv6 allows 65527 bytes)
        continue;
      }
      const auto* peer = reinterpret_cast<const sockaddr*>(&udp_peers_[i]);
      char* data = static_cast<char*>(udp_iov_[i].iov_base);
      // Uppercased in place: the reply.
      if (RefuseDatagram(peer, udp_port_) ||
          !udp_guards_.reflections.UppercaseUnlessReflection(peer, data, udp_in_[i].msg_len)) {
        ++stats_.udp_refused;  // a well-known port, ourselves, or our own reply: it could loop
        continue;
      }
      udp_iov_[i].iov_len = udp_in_[i].msg_len;
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

void ReadinessShard::SendReplies(int count) {
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
absl::Status ReadinessShard::StartIdleTimer() {
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
// client is still taking output the kernel holds (OutputWatch). Shutdown has its own bound
// (--grace), so the scan stops with it.
absl::Status ReadinessShard::HandleIdleTick() {
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

absl::Status ReadinessShard::HandleStop() {
  if (draining_) return absl::OkStatus();
  // The stop pipe stays readable (every shard watches it): stop watching it.
  if (absl::Status s = Unwatch(stop_fd_, /*closing=*/false); !s.ok()) return s;
  // Stop accepting. What is still in this listener's backlog is reset by the kernel.
  draining_ = true;
  grace_deadline_ns_ = MonotonicNanos() + absl::ToInt64Nanoseconds(config_.grace);
  CloseOwn(listener_);
  CloseOwn(idle_timer_);
  spare_.reset();  // never watched
  if (udp_.valid()) {
    absl::Status s = HandleUdp();  // answer what is already queued, then stop
    udp_guards_.drops.Settle(udp_.get(), stats_);
    CloseOwn(udp_);
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

void ReadinessShard::CloseOwn(Fd& fd) {
  if (!fd.valid()) return;
  // Only Unwatch(closing) can fail (ENOMEM in a poller's table): the descriptor closes anyway.
  Unwatch(fd.get(), /*closing=*/true).IgnoreError();
  fd.reset();
}

int ReadinessShard::TimeoutMs() const {
  std::int64_t deadline = INT64_MAX;
  if (accept_paused_) deadline = accept_resume_ns_;
  if (draining_) deadline = std::min({deadline, grace_deadline_ns_, next_linger_check_ns_});
  if (deadline == INT64_MAX) return -1;
  const std::int64_t left = deadline - MonotonicNanos();
  return left <= 0 ? 0 : static_cast<int>((left + 999'999) / 1'000'000);
}

absl::Status ReadinessShard::HandleTimers() {
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

}  // namespace upcase
