// One TCP connection of the load (or, with --reconnect, one slot that opens a connection per
// request). See tcp_channel.cc.
#ifndef UPCASE_LOADGEN_TCP_CHANNEL_H_
#define UPCASE_LOADGEN_TCP_CHANNEL_H_

#include <cstdint>
#include <vector>

#include "loadgen/channel.h"

namespace upcase::load {

class TcpChannel final : public Channel {
 public:
  TcpChannel(LoopContext* ctx, std::uint32_t id);

  absl::Status Open() override;
  bool Connected() const override;
  void OnEvents(std::uint32_t events) override;
  void Enqueue(std::int64_t intended) override;
  void Flush() override;
  void Housekeep() override;
  // Open loop: the queue too (it is sent during the drain); closed loop: what was sent.
  bool Idle() const override { return head_ == (ctx_->config->open_loop() ? tail_ : send_); }
  void CloseAndCountUnanswered() override;

 private:
  struct Request {
    std::uint32_t offset;  // window of the payload pool
    std::uint32_t size;
    std::int64_t intended;  // schedule time; 0 until sent in closed loop
    std::int64_t sent;      // first byte written (with --reconnect: connect started); 0 before
  };
  enum class State { kDown, kConnecting, kOpen };

  void StartConnect();
  void OnConnected();
  // Drops the connection: counts `kind`, aborts the requests in flight (`failed`, their ages
  // recorded as lower bounds), retries later.
  void Fail(ErrorKind kind, const absl::Status& cause);
  void Close();
  IoStatus ReadAvailable();
  void Consume(const char* data, std::size_t n);
  void CompleteHead();
  void RefillPipeline();
  void Grow();
  Request& at(std::uint64_t i) { return ring_[i & mask_]; }
  const Request& at(std::uint64_t i) const { return ring_[i & mask_]; }
  std::string Where() const;

  Fd fd_;
  State state_ = State::kDown;
  bool ever_connected_ = false;
  std::uint64_t generation_ = 0;  // bumped by Close(): a new fd may reuse the old number
  std::int64_t connect_started_ = 0;
  std::int64_t retry_at_ = 0;  // kDown: earliest reconnect
  // Requests in order: [head_, send_) fully written and awaiting replies, send_ possibly partly
  // written (send_written_ bytes), [send_, tail_) waiting. Indices only grow; ring_ holds them
  // modulo its power-of-two size.
  std::vector<Request> ring_;
  std::uint64_t mask_ = 0;
  std::uint64_t head_ = 0;
  std::uint64_t send_ = 0;
  std::uint64_t tail_ = 0;
  std::uint32_t send_written_ = 0;
  std::uint32_t head_received_ = 0;  // reply bytes of at(head_) matched so far
  bool head_bad_ = false;            // a byte of at(head_)'s reply differed
  // Bytes written whose replies have not arrived: more than this from the server is a protocol
  // violation, never silently attributed to a later request.
  std::uint64_t unanswered_bytes_ = 0;
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_TCP_CHANNEL_H_
