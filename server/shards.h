// Running a multi-reactor backend's shards: the part epoll and uring share.
#ifndef UPCASE_SERVER_SHARDS_H_
#define UPCASE_SERVER_SHARDS_H_

#include <cstddef>
#include <functional>

#include "absl/status/status.h"

namespace upcase {

// Runs run_shard(i) for every i in [0, count): shard 0 on the calling thread (so --shards=1 runs
// no extra thread), the others on threads of their own. When a shard fails, or its thread cannot
// be started, stop() is called so the other shards wind down as for a signal. Returns after every
// shard has returned: the first error, or OK.
absl::Status RunShards(std::size_t count, const std::function<absl::Status(std::size_t)>& run_shard,
                       const std::function<void()>& stop);

// Each shard's share of --max-conns, so shards need no shared counter: ceil(max / shards). The
// server as a whole may therefore admit up to shards - 1 connections more than max.
inline std::size_t PerShardLimit(std::size_t max_conns, std::size_t shards) {
  return (max_conns + shards - 1) / shards;
}

}  // namespace upcase

#endif  // UPCASE_SERVER_SHARDS_H_
