// One connected UDP socket of the load. See udp_channel.cc.
#ifndef UPCASE_LOADGEN_UDP_CHANNEL_H_
#define UPCASE_LOADGEN_UDP_CHANNEL_H_

#include <sys/socket.h>

#include <cstdint>
#include <vector>

#include "loadgen/channel.h"

namespace upcase::load {

// Datagrams per sendmmsg / recvmmsg call.
inline constexpr int kUdpBatch = 64;

// Per-thread scratch for recvmmsg, shared by the thread's UDP channels.
struct UdpBatchBuffers {
  explicit UdpBatchBuffers(std::size_t datagram_bytes);
  std::size_t datagram_bytes;
  std::vector<char> data;
  std::vector<iovec> iov;
  std::vector<mmsghdr> msgs;
};

class UdpChannel final : public Channel {
 public:
  UdpChannel(LoopContext* ctx, std::uint32_t id, UdpBatchBuffers* buffers);

  absl::Status Open() override;
  bool Connected() const override { return fd_.valid(); }
  void OnEvents(std::uint32_t events) override;
  void Enqueue(std::int64_t intended) override;
  void Flush() override;
  void Housekeep() override;
  // Open loop: the queue too (it is sent during the drain); closed loop: what was sent.
  bool Idle() const override {
    return oldest_seq_ == next_seq_ && (!ctx_->config->open_loop() || queue_head_ == queue_tail_);
  }
  void CloseAndCountUnanswered() override;

 private:
  enum class SlotState : std::uint8_t { kOutstanding, kDone, kLost };
  // One request in flight, found by its sequence number modulo the window size.
  struct Slot {
    std::uint64_t seq;
    std::int64_t intended;
    std::int64_t sent;
    std::uint32_t offset;  // payload after the header: a window of the pool
    std::uint32_t size;    // whole datagram, header included
    SlotState state;
    char header[kSeqHeaderBytes];
  };

  void OnDatagram(const char* data, std::size_t n, bool truncated);
  void Retire(Slot& slot, SlotState state);
  void AdvanceOldest();
  Slot& slot(std::uint64_t seq) { return window_[seq & window_mask_]; }
  std::string Where() const;

  UdpBatchBuffers* buffers_;
  Fd fd_;
  std::vector<Slot> window_;
  std::uint64_t window_mask_ = 0;
  std::uint64_t cap_ = 1;  // in-flight limit: min(pipeline, window size)
  std::uint64_t next_seq_ = 0;
  std::uint64_t oldest_seq_ = 0;  // every seq below is answered or lost
  std::uint64_t highest_answered_ = 0;
  bool any_answered_ = false;
  // Requests due but not yet sent (intended times; 0 in closed loop), as a growable ring.
  std::vector<std::int64_t> queue_;
  std::uint64_t queue_mask_ = 0;
  std::uint64_t queue_head_ = 0;
  std::uint64_t queue_tail_ = 0;
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_UDP_CHANNEL_H_
