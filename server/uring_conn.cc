#include "server/uring_conn.h"

namespace upcase {

void Conn::DirectSent(std::size_t sent, BufferRing& buffers) {
  held_bytes -= sent;
  std::size_t done = 0;
  for (; done < held.size() && sent >= held[done].len - held_sent; ++done) {
    sent -= held[done].len - held_sent;
    held_sent = 0;
    buffers.Return(held[done].bid);
  }
  held.erase(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(done));
  held_sent += sent;
}

void Conn::SpillHeld(BufferRing& buffers) {
  for (const Held& h : held) {
    out.Append(buffers.Buffer(h.bid) + held_sent, h.len - held_sent);
    held_sent = 0;
    buffers.Return(h.bid);
  }
  held.clear();
  held_bytes = 0;
}

void Conn::Reset(BufferRing& buffers) {
  recv = RecvState::kNone;
  send = SendState::kNone;
  send_skips_success = false;
  fixed = false;
  life = Life::kServing;
  read_total = 0;
  read_limit = UINT64_MAX;
  out.Clear();
  for (const Held& h : held) buffers.Return(h.bid);  // no send of them is in flight
  held.clear();
  held_sent = held_bytes = 0;
  output_watch.Forget();
}

void Conn::GatherHeld(const BufferRing& buffers) {
  iov.clear();
  iov.push_back({buffers.Buffer(held.front().bid) + held_sent, held.front().len - held_sent});
  for (std::size_t i = 1; i < held.size(); ++i) {
    iov.push_back({buffers.Buffer(held[i].bid), held[i].len});
  }
  msg = {};
  msg.msg_iov = iov.data();
  msg.msg_iovlen = iov.size();
}

Conn& ConnSlots::Add(int fd) {
  if (free_.empty()) {
    slots_.emplace_back(pool_);
    slots_.back().index = static_cast<std::uint32_t>(slots_.size() - 1);
    free_.push_back(slots_.back().index);
  }
  Conn& c = slots_[free_.back()];
  free_.pop_back();
  c.fd = fd;
  ++live_;
  return c;
}

void ConnSlots::Remove(Conn& c, std::uint32_t gen_mask) {
  c.fd = -1;
  c.gen = (c.gen + 1) & gen_mask;
  free_.push_back(c.index);
  --live_;
}

}  // namespace upcase
