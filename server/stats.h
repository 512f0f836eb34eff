// Per-shard counters. Each shard (or thread) owns one ShardStats and bumps plain integers on the
// request path; they are read only after the owning thread has finished, so no atomics.
#ifndef UPCASE_SERVER_STATS_H_
#define UPCASE_SERVER_STATS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json_fwd.hpp"

namespace upcase {

struct ShardStats {
  std::uint64_t accepted = 0;        // TCP connections taken into service
  std::uint64_t closed = 0;          // of those, ended
  std::uint64_t rejected = 0;        // over --max-conns: accepted and closed at once
  std::uint64_t per_ip_refused = 0;  // over --max-conns-per-ip: accepted and closed at once
  // select: an accepted descriptor at or above FD_SETSIZE, which select(2) cannot watch: closed
  // at once. 0 for the other backends.
  std::uint64_t fd_setsize_refused = 0;
  // sigio: times the real-time signal queue overflowed (the kernel sent SIGIO instead) and the
  // shard swept every socket with poll(2). 0 for the other backends.
  std::uint64_t sigio_sweeps = 0;
  std::uint64_t idle_closed = 0;    // closed after --idle-timeout without progress
  std::uint64_t accept_errors = 0;  // accept failures other than EAGAIN (EMFILE, ENFILE, ...)
  std::uint64_t bytes_in = 0;       // TCP payload bytes read
  std::uint64_t bytes_out = 0;      // TCP payload bytes written
  std::uint64_t datagrams_in = 0;
  std::uint64_t datagrams_out = 0;
  std::uint64_t udp_drops = 0;  // replies not sent (socket buffer full or send error)
  // Datagrams not answered by policy (server/limits.h): from a source port below 1024 or from
  // the server's own port, or a reflection of the server's own reply (server/udp_guard.h).
  // datagrams_in == datagrams_out + udp_drops + udp_refused.
  std::uint64_t udp_refused = 0;
  // Datagrams the kernel dropped before the server could read them, its socket's receive buffer
  // being full (SO_RXQ_OVFL): datagrams_in + udp_kernel_drops is what arrived.
  std::uint64_t udp_kernel_drops = 0;
  std::uint64_t conn_resets = 0;  // connections ended by ECONNRESET / EPIPE
  // Memory the shard shares among its connections as buffers handed to the kernel: uring's
  // provided buffers (the ring grows on ENOBUFS, so at exit this is its peak); 0 for the other
  // backends, which read into buffers of their own.
  std::uint64_t provided_buffer_bytes = 0;

  std::uint64_t active() const { return accepted - closed; }
  ShardStats& operator+=(const ShardStats& other);
};

// "shard 0: accepted=.. active=.. ..." (the line printed per shard at exit): the same names, in
// the same order, as a shard's object in StatsToJson.
std::string FormatShardStats(int shard, const ShardStats& stats);

// {"backend":..., "shards":[{...}], "total":{...}}
nlohmann::json StatsToJson(const std::string& backend, const std::vector<ShardStats>& shards);

}  // namespace upcase

#endif  // UPCASE_SERVER_STATS_H_
