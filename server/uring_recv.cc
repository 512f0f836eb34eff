#include "server/uring_recv.h"

#include <algorithm>

namespace upcase {
namespace {

std::uint32_t BufferSize(std::size_t conn_buffer, std::size_t in_flight) {
  std::uint32_t size = RecvPolicy::kMinBufferSize;
  while (size < RecvPolicy::kMaxBufferSize && in_flight * (2 * size) <= conn_buffer / 2) size *= 2;
  return size;
}

std::size_t InFlight(bool byte_limit) {
  return byte_limit ? RecvPolicy::kLimitedRecvBuffers : RecvPolicy::kMultishotBurst;
}

}  // namespace

RecvPolicy::RecvPolicy(const ServerConfig& config, const OutputPool& pool, bool byte_limit)
    : budget_(config.output_budget),
      pool_(pool),
      byte_limit_(byte_limit),
      buffer_size_(BufferSize(config.conn_buffer, InFlight(byte_limit))),
      headroom_(InFlight(byte_limit) * buffer_size_) {}

std::size_t RecvPolicy::Allowance(std::size_t unsent, std::size_t live) const {
  const std::size_t allowed = pool_.Allowance(unsent);
  if (budget_ == 0) return allowed;
  const std::size_t split = budget_ / std::max<std::size_t>(live, 1);
  return std::min(allowed, std::max(split, OutputPool::kMinShare));
}

RecvArm RecvPolicy::Choose(std::size_t unsent, std::size_t live) const {
  const std::size_t allowed = Allowance(unsent, live);
  if (unsent + headroom_ <= allowed) return RecvArm::kMultishot;
  if (unsent < allowed) return RecvArm::kSingle;
  return RecvArm::kNone;
}

std::uint32_t RecvPolicy::MultishotLimit(std::size_t unsent, std::size_t live) const {
  // All but one buffer of the room: the completion that reaches the limit may carry up to a
  // buffer more.
  return static_cast<std::uint32_t>(
      std::min<std::size_t>(Allowance(unsent, live) - unsent - buffer_size_, UINT32_MAX));
}

std::size_t RecvPolicy::SingleSize(std::size_t unsent, std::size_t live) const {
  return std::min<std::size_t>(buffer_size_, Allowance(unsent, live) - unsent);
}

bool RecvPolicy::MustCancel(std::size_t unsent, std::size_t live) const {
  if (byte_limit_ && !pool_.over_budget()) return false;  // the kernel ends it at the limit
  return unsent + headroom_ > Allowance(unsent, live);
}

}  // namespace upcase
