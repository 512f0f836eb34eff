#include "server/stats.h"

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace upcase {

ShardStats& ShardStats::operator+=(const ShardStats& o) {
  accepted += o.accepted;
  closed += o.closed;
  rejected += o.rejected;
  per_ip_refused += o.per_ip_refused;
  fd_setsize_refused += o.fd_setsize_refused;
  sigio_sweeps += o.sigio_sweeps;
  idle_closed += o.idle_closed;
  accept_errors += o.accept_errors;
  bytes_in += o.bytes_in;
  bytes_out += o.bytes_out;
  datagrams_in += o.datagrams_in;
  datagrams_out += o.datagrams_out;
  udp_drops += o.udp_drops;
  udp_refused += o.udp_refused;
  udp_kernel_drops += o.udp_kernel_drops;
  conn_resets += o.conn_resets;
  provided_buffer_bytes += o.provided_buffer_bytes;
  return *this;
}

std::string FormatShardStats(int shard, const ShardStats& s) {
  return absl::StrFormat(
      "shard %d: accepted=%d active=%d closed=%d rejected=%d per_ip_refused=%d "
      "fd_setsize_refused=%d sigio_sweeps=%d "
      "idle_closed=%d accept_errors=%d conn_resets=%d bytes_in=%d bytes_out=%d datagrams_in=%d "
      "datagrams_out=%d "
      "udp_drops=%d udp_refused=%d udp_kernel_drops=%d provided_buffer_bytes=%d",
      shard, s.accepted, s.active(), s.closed, s.rejected, s.per_ip_refused, s.fd_setsize_refused,
      s.sigio_sweeps, s.idle_closed, s.accept_errors, s.conn_resets, s.bytes_in, s.bytes_out,
      s.datagrams_in, s.datagrams_out, s.udp_drops, s.udp_refused, s.udp_kernel_drops,
      s.provided_buffer_bytes);
}

namespace {
nlohmann::json ToJson(const ShardStats& s) {
  return {{"accepted", s.accepted},
          {"active", s.active()},
          {"closed", s.closed},
          {"rejected", s.rejected},
          {"per_ip_refused", s.per_ip_refused},
          {"fd_setsize_refused", s.fd_setsize_refused},
          {"sigio_sweeps", s.sigio_sweeps},
          {"idle_closed", s.idle_closed},
          {"accept_errors", s.accept_errors},
          {"conn_resets", s.conn_resets},
          {"bytes_in", s.bytes_in},
          {"bytes_out", s.bytes_out},
          {"datagrams_in", s.datagrams_in},
          {"datagrams_out", s.datagrams_out},
          {"udp_drops", s.udp_drops},
          {"udp_refused", s.udp_refused},
          {"udp_kernel_drops", s.udp_kernel_drops},
          {"provided_buffer_bytes", s.provided_buffer_bytes}};
}
}  // namespace

nlohmann::json StatsToJson(const std::string& backend, const std::vector<ShardStats>& shards) {
  nlohmann::json j;
  j["backend"] = backend;
  ShardStats total;
  j["shards"] = nlohmann::json::array();
  for (const ShardStats& s : shards) {
    j["shards"].push_back(ToJson(s));
    total += s;
  }
  j["total"] = ToJson(total);
  return j;
}

}  // namespace upcase
