// A TCP channel: one connection carrying a FIFO of requests.
//
// TCP is a byte stream and the service has no framing, so replies are matched to requests by
// byte count, in order: the first request's reply is the first `size` bytes back, whatever way
// recv happens to cut them. Every received chunk is compared against the expected bytes of the
// request it belongs to before the next is considered, and no byte is ever attributed to a
// request that was not written (unanswered_bytes_ bounds what the server may send).
//
// The socket is registered once, edge-triggered for both directions, so there is no epoll_ctl
// per request: a read that returns less than the buffer drained the socket, a short write waits
// for the next EPOLLOUT edge.
//
// With --reconnect the channel is a slot: connect, write one request, read its reply, close, and
// the latency runs from the start of the connect.
#include "loadgen/tcp_channel.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <bit>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/sys.h"

namespace upcase::load {
namespace {

// Iovecs per sendmsg: enough for a deep pipeline in one call, small enough for the stack.
constexpr int kMaxIov = 64;
// After a failure, wait this long before connecting again, so a server that refuses does not
// turn the loop into a busy spin of connect calls.
constexpr std::int64_t kReconnectDelayNs = 10'000'000;
// Initial ring size in open loop; it doubles as a backlog builds up.
constexpr std::uint64_t kInitialRing = 64;

ErrorKind KindOf(int err) {
  return err == ECONNRESET || err == EPIPE ? ErrorKind::kReset : ErrorKind::kIo;
}

}  // namespace

TcpChannel::TcpChannel(LoopContext* ctx, std::uint32_t id) : Channel(ctx, id) {
  const std::uint64_t size = std::bit_ceil(std::max<std::uint64_t>(
      ctx->config->open_loop() ? kInitialRing : static_cast<std::uint64_t>(ctx->pipeline), 2));
  ring_.resize(size);
  mask_ = size - 1;
}

std::string TcpChannel::Where() const { return absl::StrCat("tcp ", ctx_->target.ToString()); }

absl::Status TcpChannel::Open() {
  if (ctx_->config->reconnect) return absl::OkStatus();  // connects per request
  StartConnect();
  return ctx_->setup_error;
}

bool TcpChannel::Connected() const { return ctx_->config->reconnect || state_ == State::kOpen; }

void TcpChannel::StartConnect() {
  const SocketAddress& addr = ctx_->target;
  Fd fd(::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    Fail(ErrorKind::kConnect, ErrnoError("socket", errno));
    return;
  }
  if (absl::Status s = SetNoDelay(fd.get()); !s.ok()) {
    Fail(ErrorKind::kConnect, s);
    return;
  }
  connect_started_ = MonotonicNanos();
  if (ctx_->config->reconnect && head_ < tail_ && at(head_).sent == 0) {
    Request& r = at(head_);
    r.sent = connect_started_;
    if (r.intended == 0) r.intended = r.sent;
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = id_;
  if (::epoll_ctl(ctx_->epoll_fd, EPOLL_CTL_ADD, fd.get(), &ev) != 0) {
    Fail(ErrorKind::kConnect, ErrnoError("epoll_ctl", errno));
    return;
  }
  fd_ = std::move(fd);
  state_ = State::kConnecting;
  if (::connect(fd_.get(), addr.get(), addr.size()) == 0) {
    OnConnected();
  } else if (errno != EINPROGRESS) {
    Fail(ErrorKind::kConnect, ErrnoError(absl::StrCat("connect ", Where()), errno));
  }
  // EINPROGRESS: the EPOLLOUT edge reports the outcome.
}

void TcpChannel::OnConnected() {
  state_ = State::kOpen;
  if (ever_connected_ && !ctx_->config->reconnect) ++ctx_->stats->counters.connects;
  ever_connected_ = true;
  RefillPipeline();
  if (send_ < tail_) MarkDirty();
}

// A reply made room under the in-flight cap. Closed loop: keep `pipeline` requests queued or in
// flight. Open loop: requests waiting for that room go out now, not at this connection's next
// scheduled request (or a stray EPOLLOUT), which would add that wait to their send lag.
void TcpChannel::RefillPipeline() {
  if (ctx_->config->open_loop()) {
    if (send_ < tail_) MarkDirty();
    return;
  }
  if (!ctx_->running()) return;
  while (tail_ - head_ < static_cast<std::uint64_t>(ctx_->pipeline)) Enqueue(0);
}

void TcpChannel::Close() {
  fd_.reset();  // closing also removes the socket from the epoll set
  state_ = State::kDown;
  ++generation_;
}

void TcpChannel::Fail(ErrorKind kind, const absl::Status& cause) {
  ctx_->NoteError(kind, cause);
  Close();
  if (ctx_->phase == Phase::kSetup) return;
  // Requests written (even partly) are lost with the connection; the server may have seen part of
  // them, so they cannot be resent.
  const std::uint64_t aborted_end = send_ + (send_written_ > 0 ? 1 : 0);
  for (std::uint64_t i = head_; i < aborted_end; ++i) {
    ctx_->stats->counters.Count(ErrorKind::kAborted);
    ctx_->RecordFailed(at(i).intended);
  }
  head_ = send_ = aborted_end;
  send_written_ = head_received_ = 0;
  head_bad_ = false;
  unanswered_bytes_ = 0;
  // Closed loop: requests not yet sent have no schedule to keep; refill after reconnecting.
  // Open loop: they keep their intended times, so the outage shows in the corrected latency.
  if (!ctx_->config->open_loop()) tail_ = head_;
  retry_at_ = ctx_->now + kReconnectDelayNs;
}

void TcpChannel::Enqueue(std::int64_t intended) {
  if (tail_ - head_ > mask_) {
    if (tail_ - head_ >= static_cast<std::uint64_t>(ctx_->max_backlog)) {
      ctx_->NoteError(ErrorKind::kQueueFull, [&] {
        return absl::ResourceExhaustedError(
            absl::StrCat(Where(), ": more than ", ctx_->max_backlog,
                         " requests waiting on one connection; dropping requests"));
      });
      return;
    }
    Grow();
  }
  const std::uint32_t size = ctx_->config->size.Draw(ctx_->rng);
  at(tail_++) = Request{ctx_->pool->RandomOffset(ctx_->rng, size), size, intended, 0};
  if (state_ == State::kDown) {
    if (ctx_->config->reconnect && ctx_->running() && ctx_->now >= retry_at_) StartConnect();
    return;
  }
  MarkDirty();
}

void TcpChannel::Grow() {
  std::vector<Request> bigger(ring_.size() * 2);
  const std::uint64_t bigger_mask = bigger.size() - 1;
  for (std::uint64_t i = head_; i < tail_; ++i) bigger[i & bigger_mask] = at(i);
  ring_ = std::move(bigger);
  mask_ = bigger_mask;
}

void TcpChannel::Flush() {
  if (state_ != State::kOpen || !ctx_->sending()) return;
  while (true) {
    const std::uint64_t limit = std::min(tail_, head_ + static_cast<std::uint64_t>(ctx_->pipeline));
    if (send_ >= limit) return;
    iovec iov[kMaxIov];
    int n_iov = 0;
    std::size_t total = 0;
    for (std::uint64_t i = send_; i < limit && n_iov < kMaxIov; ++i) {
      const Request& r = at(i);
      const std::uint32_t skip = i == send_ ? send_written_ : 0;
      iov[n_iov].iov_base = const_cast<char*>(ctx_->pool->request(r.offset + skip));
      iov[n_iov].iov_len = r.size - skip;
      total += iov[n_iov].iov_len;
      ++n_iov;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(n_iov);
    const std::int64_t stamp = MonotonicNanos();
    const ssize_t wrote = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // the EPOLLOUT edge resumes us
      Fail(KindOf(errno), ErrnoError(absl::StrCat("send ", Where()), errno));
      return;
    }
    unanswered_bytes_ += static_cast<std::uint64_t>(wrote);
    std::size_t left = static_cast<std::size_t>(wrote);
    while (left > 0) {
      Request& r = at(send_);
      if (send_written_ == 0 && r.sent == 0) {
        r.sent = stamp;
        if (r.intended == 0) r.intended = stamp;
      }
      if (send_written_ == 0) ctx_->RecordSend(r.intended, r.sent);
      const std::size_t rest = r.size - send_written_;
      if (left < rest) {
        send_written_ += static_cast<std::uint32_t>(left);
        break;
      }
      left -= rest;
      send_written_ = 0;
      ++send_;
    }
    if (static_cast<std::size_t>(wrote) < total) return;  // socket buffer full
  }
}

void TcpChannel::OnEvents(std::uint32_t events) {
  if (state_ == State::kConnecting) {
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      Fail(ErrorKind::kConnect, ErrnoError(absl::StrCat("connect ", Where()), err));
      return;
    }
    OnConnected();
  }
  if (state_ != State::kOpen) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    if (ReadAvailable() == IoStatus::kError) return;
  }
  if (state_ == State::kOpen && (events & EPOLLOUT) && send_ < tail_) MarkDirty();
}

IoStatus TcpChannel::ReadAvailable() {
  // Edge-triggered: keep reading until the socket is drained, or no new edge will come.
  std::vector<char>& buf = ctx_->recv_buffer;
  const std::uint64_t generation = generation_;
  while (true) {
    const ssize_t got = ::recv(fd_.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (got > 0) {
      Consume(buf.data(), static_cast<std::size_t>(got));
      // Consume may have closed the connection (and, with --reconnect, opened the next).
      if (generation_ != generation || state_ != State::kOpen) return IoStatus::kOk;
      // A stream socket that returns less than asked for had no more queued.
      if (static_cast<std::size_t>(got) < buf.size()) return IoStatus::kOk;
      continue;
    }
    if (got == 0) {
      Fail(ErrorKind::kClosed,
           absl::UnavailableError(absl::StrCat(Where(), ": the server closed the connection")));
      return IoStatus::kError;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IoStatus::kRetry;
    Fail(KindOf(errno), ErrnoError(absl::StrCat("recv ", Where()), errno));
    return IoStatus::kError;
  }
}

void TcpChannel::Consume(const char* data, std::size_t n) {
  std::size_t excess = 0;
  if (n > unanswered_bytes_) {
    excess = n - unanswered_bytes_;
    n = unanswered_bytes_;
  }
  unanswered_bytes_ -= n;
  while (n > 0) {
    const Request& r = at(head_);
    const std::size_t take = std::min<std::size_t>(n, r.size - head_received_);
    if (ctx_->config->verify && !head_bad_ &&
        !ctx_->pool->Matches(r.offset + head_received_, data, take)) {
      head_bad_ = true;
      if (ctx_->first_mismatch.empty()) {
        const char* want = ctx_->pool->expected(r.offset + head_received_);
        std::size_t at_byte = 0;
        while (want[at_byte] == data[at_byte]) ++at_byte;
        ctx_->first_mismatch = absl::StrFormat(
            "%s: byte %u of a %u-byte reply was 0x%02x, expected 0x%02x", Where(),
            head_received_ + at_byte, r.size, static_cast<std::uint8_t>(data[at_byte]),
            static_cast<std::uint8_t>(want[at_byte]));
      }
    }
    head_received_ += static_cast<std::uint32_t>(take);
    data += take;
    n -= take;
    if (head_received_ == r.size) {
      CompleteHead();
      if (state_ != State::kOpen) return;  // --reconnect closed it (n is 0 then)
    }
  }
  if (excess > 0) {
    ctx_->NoteMismatch(
        absl::StrCat(Where(), ": ", excess, " bytes arrived with no request outstanding"));
    Fail(ErrorKind::kExcessBytes,
         absl::DataLossError(absl::StrCat(Where(), ": server sent more bytes than requested")));
  }
}

void TcpChannel::CompleteHead() {
  const Request r = at(head_);
  if (head_bad_) {
    ++ctx_->stats->counters.mismatches;
  } else {
    ctx_->RecordReply(r.intended, r.sent, r.size);
  }
  ++head_;
  head_received_ = 0;
  head_bad_ = false;
  if (ctx_->config->reconnect) {
    Close();
    retry_at_ = 0;
    if (ctx_->config->open_loop()) {
      if (head_ < tail_ && ctx_->sending()) StartConnect();
    } else if (ctx_->running()) {
      Enqueue(0);  // connects at once and times the connect
    }
    return;
  }
  RefillPipeline();
}

void TcpChannel::Housekeep() {
  const std::int64_t now = ctx_->now;
  if (state_ == State::kConnecting &&
      now - connect_started_ > absl::ToInt64Nanoseconds(ctx_->config->timeout)) {
    Fail(ErrorKind::kConnect,
         absl::DeadlineExceededError(absl::StrCat("connect ", Where(), ": timed out")));
    return;
  }
  if (state_ != State::kDown || !ctx_->sending() || now < retry_at_) return;
  if (!ctx_->config->reconnect) {
    StartConnect();
  } else if (head_ < tail_) {
    StartConnect();
  } else if (!ctx_->config->open_loop()) {
    Enqueue(0);
  }
}

void TcpChannel::CloseAndCountUnanswered() {
  for (std::uint64_t i = head_; i < tail_; ++i) {
    const bool sent = i < send_ || (i == send_ && send_written_ > 0);
    ctx_->RecordUnanswered(at(i).intended, sent);
  }
  head_ = send_ = tail_;
  Close();
}

}  // namespace upcase::load
