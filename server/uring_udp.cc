#include "server/uring_udp.h"

#include <utility>

#include "server/blocking_io.h"
#include "server/config.h"
#include "server/limits.h"

namespace upcase {
namespace {

constexpr std::uint32_t kBufferSize = (sizeof(io_uring_recvmsg_out) + sizeof(sockaddr_storage) +
                                       kDropsControlBytes + kMaxDatagram + 4095) &
                                      ~4095u;

}  // namespace

absl::Status UringUdp::Init(Fd socket, std::uint16_t group) {
  fd_ = std::move(socket);
  if (!fd_.valid()) return absl::OkStatus();
  absl::StatusOr<SocketAddress> local = LocalAddress(fd_.get());
  if (!local.ok()) return local.status();
  own_port_ = local->port();
  if (absl::Status s = buffers_.Init(ring_->get(), group, kBuffers, kBufferSize, kBuffers);
      !s.ok()) {
    return s;
  }
  replies_.resize(kBuffers);
  recv_msg_.msg_namelen = sizeof(sockaddr_storage);
  // Room for the SO_RXQ_OVFL count, which the kernel writes after the address.
  recv_msg_.msg_controllen = kDropsControlBytes;
  group_ = group;
  return absl::OkStatus();
}

void UringUdp::AddRecv() {
  io_uring_sqe* sqe = ring_->GetSqe();
  // MSG_TRUNC: payloadlen then reports a datagram's full size, so an oversized one is seen.
  io_uring_prep_recvmsg_multishot(sqe, fd_.get(), &recv_msg_, MSG_TRUNC);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = group_;
  io_uring_sqe_set_data64(sqe, tags_.recv);
  recv_armed_ = true;
}

void UringUdp::AddSend(std::uint16_t bid, void* peer, socklen_t peer_len, void* payload,
                       std::size_t len) {
  Reply& r = replies_[bid];
  r.iov = {payload, len};
  r.msg = {};
  r.msg.msg_name = peer;
  r.msg.msg_namelen = peer_len;
  r.msg.msg_iov = &r.iov;
  r.msg.msg_iovlen = 1;
  io_uring_sqe* sqe = ring_->GetSqe();
  // MSG_DONTWAIT makes a full socket buffer fail the send (-EAGAIN) instead of the kernel
  // parking it until there is room: a reply that cannot go now is dropped, never queued.
  io_uring_prep_sendmsg(sqe, fd_.get(), &r.msg, MSG_DONTWAIT);
  io_uring_sqe_set_data64(sqe, tags_.send | bid);
  ++sends_;
}

void UringUdp::HandleRecv(const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) recv_armed_ = false;
  if (cqe.flags & IORING_CQE_F_BUFFER) {
    const auto bid = static_cast<std::uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
    char* buf = buffers_.Buffer(bid);
    io_uring_recvmsg_out* out = io_uring_recvmsg_validate(buf, cqe.res, &recv_msg_);
    ++stats_->datagrams_in;
    if (out != nullptr) CountDrops(*out);
    if (out == nullptr || out->namelen > recv_msg_.msg_namelen || (out->flags & MSG_TRUNC) ||
        out->payloadlen > kMaxDatagram) {
      // Larger than any reply we may send (IPv6 allows 65527 bytes; the buffer has room).
      ++stats_->udp_drops;
      buffers_.Return(bid);
    } else {
      const auto* peer = static_cast<const sockaddr*>(io_uring_recvmsg_name(out));
      void* payload = io_uring_recvmsg_payload(out, &recv_msg_);
      const unsigned len = io_uring_recvmsg_payload_length(out, cqe.res, &recv_msg_);
      if (RefuseDatagram(peer, own_port_) ||
          !guards_.reflections.UppercaseUnlessReflection(peer, static_cast<char*>(payload), len)) {
        ++stats_->udp_refused;  // a well-known port, ourselves, or our own reply: it could loop
        buffers_.Return(bid);
      } else {  // uppercased in place: the reply
        AddSend(bid, io_uring_recvmsg_name(out), out->namelen, payload, len);
      }
    }
  } else if (cqe.res < 0) {
    // ENOBUFS: every buffer holds a reply in flight; re-armed when one comes back. ECANCELED:
    // shutdown. Anything else (an ICMP error for an earlier reply) ends the multishot only.
  }
  MaybeRearm();
}

// The control data sits after the address in the buffer, as a msghdr's would: view it as one.
void UringUdp::CountDrops(io_uring_recvmsg_out& out) {
  msghdr control{};
  control.msg_control = io_uring_recvmsg_cmsg_firsthdr(&out, &recv_msg_);
  control.msg_controllen = control.msg_control == nullptr ? 0 : out.controllen;
  guards_.drops.Count(control, *stats_);
}

void UringUdp::HandleSend(const io_uring_cqe& cqe, std::uint16_t bid) {
  --sends_;
  if (cqe.res >= 0) {
    ++stats_->datagrams_out;
  } else {
    ++stats_->udp_drops;  // EAGAIN (socket buffer full), or this destination failed
  }
  buffers_.Return(bid);
  MaybeRearm();
}

void UringUdp::MaybeRearm() {
  // Only with a buffer to spare, else the new recvmsg would fail at once with ENOBUFS.
  if (!recv_armed_ && !stopped_ && sends_ < kBuffers) AddRecv();
}

void UringUdp::Stop() {
  stopped_ = true;
  // Answered now, as epoll does: the cancel would strand them.
  if (fd_.valid()) AnswerQueuedDatagrams(fd_.get(), guards_, *stats_);
  if (recv_armed_) ring_->AddCancel(tags_.recv, tags_.cancel);
}

}  // namespace upcase
