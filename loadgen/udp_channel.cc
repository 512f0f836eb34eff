// A UDP channel: one connected socket, datagrams sent and received in batches.
//
// Each request carries a sequence number in its first 8 bytes (payload.h), which the service
// returns unchanged, so every reply names its request: a window of slots indexed by sequence
// number tells a first reply from a duplicate, an out-of-order reply from an in-order one, and
// a late reply from one to a request still waiting. A request with no reply within --timeout is
// lost; losses are found by walking the window from the oldest request, which is also the
// earliest sent, so the walk stops at the first request still inside its timeout.
//
// sendmmsg and recvmmsg move up to kUdpBatch datagrams per system call. The socket is
// connect()ed: the kernel filters out strangers, and an ICMP port unreachable comes back as
// ECONNREFUSED (counted as `refused`).
#include "loadgen/udp_channel.h"

#include <sys/epoll.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/sys.h"

namespace upcase::load {
namespace {

// Receive buffer asked for each socket, so a burst of replies is not dropped by the client's own
// kernel and miscounted as loss. Unprivileged, the kernel caps it at net.core.rmem_max.
constexpr int kReceiveBufferBytes = 4 << 20;
constexpr std::uint64_t kMinWindow = 64;
constexpr std::uint64_t kMaxWindow = 1 << 16;
// ECONNREFUSED is reported once per ICMP message; a few retries cover a burst of them.
constexpr int kMaxRefusedRetries = 4;

}  // namespace

UdpBatchBuffers::UdpBatchBuffers(std::size_t bytes)
    : datagram_bytes(bytes), data(bytes * kUdpBatch), iov(kUdpBatch), msgs(kUdpBatch) {
  for (int i = 0; i < kUdpBatch; ++i) {
    iov[i].iov_base = data.data() + i * bytes;
    iov[i].iov_len = bytes;
    msgs[i].msg_hdr = msghdr{};
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
}

UdpChannel::UdpChannel(LoopContext* ctx, std::uint32_t id, UdpBatchBuffers* buffers)
    : Channel(ctx, id), buffers_(buffers) {
  const Config& c = *ctx->config;
  // In flight: at most --pipeline, and in open loop no more than one socket sends within a
  // timeout (a request older than that is lost, its slot free again).
  std::uint64_t in_flight =
      std::min<std::uint64_t>(static_cast<std::uint64_t>(ctx->pipeline), kMaxWindow / 2);
  if (c.open_loop()) {
    const double per_socket = c.rate / static_cast<double>(c.connections);
    const double needed = per_socket * absl::ToDoubleSeconds(c.timeout) + kMinWindow;
    in_flight = std::min<std::uint64_t>(in_flight, static_cast<std::uint64_t>(needed));
  }
  // The window is at least twice that, so requests retired recently are still remembered: a
  // duplicate arriving just after its original is told apart from a reply too old to place.
  const std::uint64_t window = std::bit_ceil(std::max<std::uint64_t>(2 * in_flight, kMinWindow));
  window_.resize(window);
  window_mask_ = window - 1;
  cap_ = std::max<std::uint64_t>(in_flight, 1);
  queue_.resize(std::bit_ceil(std::max<std::uint64_t>(cap_, kMinWindow)));
  queue_mask_ = queue_.size() - 1;
}

std::string UdpChannel::Where() const { return absl::StrCat("udp ", ctx_->target.ToString()); }

absl::Status UdpChannel::Open() {
  const SocketAddress& addr = ctx_->target;
  Fd fd(::socket(addr.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket udp", errno);
  const int bytes = kReceiveBufferBytes;
  // As root SO_RCVBUFFORCE passes rmem_max; otherwise take what SO_RCVBUF allows.
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0 &&
      ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) != 0) {
    return ErrnoError("setsockopt SO_RCVBUF", errno);
  }
  if (::connect(fd.get(), addr.get(), addr.size()) != 0) {
    return ErrnoError(absl::StrCat("connect ", Where()), errno);
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
  ev.data.u64 = id_;
  if (::epoll_ctl(ctx_->epoll_fd, EPOLL_CTL_ADD, fd.get(), &ev) != 0) {
    return ErrnoError("epoll_ctl", errno);
  }
  fd_ = std::move(fd);
  return absl::OkStatus();
}

void UdpChannel::Enqueue(std::int64_t intended) {
  if (queue_tail_ - queue_head_ > queue_mask_) {
    if (queue_tail_ - queue_head_ >= static_cast<std::uint64_t>(ctx_->max_backlog)) {
      ctx_->NoteError(ErrorKind::kQueueFull, [&] {
        return absl::ResourceExhaustedError(
            absl::StrCat(Where(), ": more than ", ctx_->max_backlog,
                         " requests waiting on one socket; dropping requests"));
      });
      return;
    }
    std::vector<std::int64_t> bigger(queue_.size() * 2);
    for (std::uint64_t i = queue_head_; i < queue_tail_; ++i) {
      bigger[i & (bigger.size() - 1)] = queue_[i & queue_mask_];
    }
    queue_ = std::move(bigger);
    queue_mask_ = queue_.size() - 1;
  }
  queue_[queue_tail_++ & queue_mask_] = intended;
  MarkDirty();
}

void UdpChannel::Flush() {
  if (!fd_.valid() || !ctx_->sending()) return;
  mmsghdr msgs[kUdpBatch];
  iovec iov[2 * kUdpBatch];
  int refused_retries = 0;
  while (queue_head_ < queue_tail_ && next_seq_ - oldest_seq_ < cap_) {
    const int n = static_cast<int>(std::min<std::uint64_t>(
        {queue_tail_ - queue_head_, cap_ - (next_seq_ - oldest_seq_), kUdpBatch}));
    const std::int64_t stamp = MonotonicNanos();
    for (int i = 0; i < n; ++i) {
      const std::uint64_t seq = next_seq_ + static_cast<std::uint64_t>(i);
      const std::int64_t intended = queue_[(queue_head_ + i) & queue_mask_];
      const std::uint32_t size = ctx_->config->size.Draw(ctx_->rng);
      const std::uint32_t body = size - static_cast<std::uint32_t>(kSeqHeaderBytes);
      Slot& s = slot(seq);
      s = Slot{
          seq,  intended == 0 ? stamp : intended, stamp, ctx_->pool->RandomOffset(ctx_->rng, body),
          size, SlotState::kOutstanding,          {}};
      EncodeSeq(seq & kSeqMask, s.header);
      iov[2 * i] = iovec{s.header, kSeqHeaderBytes};
      iov[2 * i + 1] = iovec{const_cast<char*>(ctx_->pool->request(s.offset)), body};
      msgs[i].msg_hdr = msghdr{};
      msgs[i].msg_hdr.msg_iov = &iov[2 * i];
      msgs[i].msg_hdr.msg_iovlen = 2;
    }
    const int sent = ::sendmmsg(fd_.get(), msgs, static_cast<unsigned>(n), MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // the EPOLLOUT edge resumes us
      if (errno == ECONNREFUSED && ++refused_retries <= kMaxRefusedRetries) {
        ctx_->NoteError(ErrorKind::kRefused,
                        absl::UnavailableError(absl::StrCat(Where(), ": port unreachable")));
        continue;
      }
      ctx_->NoteError(ErrorKind::kIo, ErrnoError(absl::StrCat("sendmmsg ", Where()), errno));
      return;
    }
    for (int i = 0; i < sent; ++i) {
      const Slot& s = slot(next_seq_ + static_cast<std::uint64_t>(i));
      if (ctx_->InWindow(s.intended)) ++ctx_->stats->counters.udp_sent;
      ctx_->RecordSend(s.intended, s.sent);
    }
    next_seq_ += static_cast<std::uint64_t>(sent);
    queue_head_ += static_cast<std::uint64_t>(sent);
    if (sent < n) return;  // socket buffer full
  }
}

void UdpChannel::OnEvents(std::uint32_t events) {
  if (events & EPOLLOUT) {
    if (queue_head_ < queue_tail_) MarkDirty();
  }
  if ((events & (EPOLLIN | EPOLLERR)) == 0) return;
  UdpBatchBuffers& b = *buffers_;
  int refused_retries = 0;
  // Edge-triggered: read until a batch comes back short (the queue was empty).
  while (true) {
    for (int i = 0; i < kUdpBatch; ++i) b.msgs[i].msg_hdr.msg_flags = 0;
    const int got = ::recvmmsg(fd_.get(), b.msgs.data(), kUdpBatch, MSG_DONTWAIT, nullptr);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == ECONNREFUSED && ++refused_retries <= kMaxRefusedRetries) {
        ctx_->NoteError(ErrorKind::kRefused,
                        absl::UnavailableError(absl::StrCat(Where(), ": port unreachable")));
        continue;
      }
      ctx_->NoteError(ErrorKind::kIo, ErrnoError(absl::StrCat("recvmmsg ", Where()), errno));
      return;
    }
    for (int i = 0; i < got; ++i) {
      OnDatagram(static_cast<const char*>(b.iov[i].iov_base), b.msgs[i].msg_len,
                 (b.msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0);
    }
    AdvanceOldest();
    if (got < kUdpBatch) return;
  }
}

void UdpChannel::OnDatagram(const char* data, std::size_t n, bool truncated) {
  std::uint64_t seq;
  if (n < kSeqHeaderBytes || !DecodeSeq(data, &seq) || seq >= next_seq_) {
    ctx_->NoteMismatch(absl::StrCat(Where(), ": a ", n,
                                    "-byte reply carries no sequence number this socket sent"));
    return;
  }
  Slot& s = slot(seq);
  if (s.seq != seq) {  // so old that its slot was reused: it was answered or declared lost
    ++ctx_->stats->counters.udp_late;
    return;
  }
  const bool in_window = ctx_->InWindow(s.intended);
  switch (s.state) {
    case SlotState::kDone:
      if (in_window) ++ctx_->stats->counters.udp_duplicated;
      return;
    case SlotState::kLost:
      if (in_window) ++ctx_->stats->counters.udp_late;
      return;
    case SlotState::kOutstanding:
      break;
  }
  if (in_window) {
    ++ctx_->stats->counters.udp_received;
    if (any_answered_ && seq < highest_answered_) ++ctx_->stats->counters.udp_reordered;
  }
  if (!any_answered_ || seq > highest_answered_) highest_answered_ = seq;
  any_answered_ = true;
  const std::size_t body = s.size - kSeqHeaderBytes;
  const bool good =
      !truncated && n == s.size &&
      (!ctx_->config->verify || ctx_->pool->Matches(s.offset, data + kSeqHeaderBytes, body));
  if (good) {
    ctx_->RecordReply(s.intended, s.sent, s.size);
  } else if (truncated || n != s.size) {
    ctx_->NoteMismatch(absl::StrFormat("%s: a reply of %u bytes to a %u-byte request%s", Where(), n,
                                       s.size, truncated ? " (or more)" : ""));
  } else {
    const char* want = ctx_->pool->expected(s.offset);
    std::size_t at = 0;
    while (want[at] == data[kSeqHeaderBytes + at]) ++at;
    ctx_->NoteMismatch(absl::StrFormat("%s: byte %u of a %u-byte reply was 0x%02x, expected 0x%02x",
                                       Where(), at + kSeqHeaderBytes, s.size,
                                       static_cast<std::uint8_t>(data[kSeqHeaderBytes + at]),
                                       static_cast<std::uint8_t>(want[at])));
  }
  Retire(s, SlotState::kDone);
}

void UdpChannel::Retire(Slot& s, SlotState state) {
  s.state = state;
  // Closed loop: a finished request, answered or lost, makes room for the next one.
  if (!ctx_->config->open_loop() && ctx_->running()) Enqueue(0);
  MarkDirty();
}

void UdpChannel::AdvanceOldest() {
  while (oldest_seq_ < next_seq_ && slot(oldest_seq_).state != SlotState::kOutstanding) {
    ++oldest_seq_;
  }
}

void UdpChannel::Housekeep() {
  const std::int64_t expired_before = ctx_->now - absl::ToInt64Nanoseconds(ctx_->config->timeout);
  for (std::uint64_t seq = oldest_seq_; seq < next_seq_; ++seq) {
    Slot& s = slot(seq);
    if (s.state != SlotState::kOutstanding) continue;
    if (s.sent > expired_before) break;  // later requests were sent later still
    if (ctx_->InWindow(s.intended)) ++ctx_->stats->counters.udp_lost;
    Retire(s, SlotState::kLost);
  }
  AdvanceOldest();
}

void UdpChannel::CloseAndCountUnanswered() {
  Housekeep();  // a request past --timeout is lost, not unanswered, whenever the drain ends
  for (std::uint64_t seq = oldest_seq_; seq < next_seq_; ++seq) {
    const Slot& s = slot(seq);
    if (s.state == SlotState::kOutstanding) ctx_->RecordUnanswered(s.intended, /*sent=*/true);
  }
  for (std::uint64_t i = queue_head_; i < queue_tail_; ++i) {
    ctx_->RecordUnanswered(queue_[i & queue_mask_], /*sent=*/false);
  }
  oldest_seq_ = next_seq_;
  queue_head_ = queue_tail_;
  fd_.reset();
}

}  // namespace upcase::load
