#include "loadgen/config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sys.h"

namespace upcase::load {

std::string SizeRange::ToString() const {
  return min == max ? absl::StrCat(min) : absl::StrCat(min, ":", max);
}

absl::StatusOr<SizeRange> ParseSizeRange(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, absl::MaxSplits(':', 1));
  absl::StatusOr<std::uint64_t> lo = ParseBytes(parts[0]);
  absl::StatusOr<std::uint64_t> hi = parts.size() == 2 ? ParseBytes(parts[1]) : lo;
  if (!lo.ok() || !hi.ok() || *lo == 0 || *hi < *lo || *hi > kMaxTcpRequest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--size=", text, ": expected a byte count such as 64 or a range such as 64:1024 (1 to ",
        kMaxTcpRequest, ")"));
  }
  return SizeRange{static_cast<std::uint32_t>(*lo), static_cast<std::uint32_t>(*hi)};
}

void RegisterFlags(FlagSet& flags, RawFlags* raw) {
  Config& c = raw->config;
  flags.String("proto", &raw->proto, "protocol", {"tcp", "udp"});
  flags.Int("connections", &c.connections, 1, 1'000'000,
            "connections (UDP: connected sockets) in total, spread over the threads");
  flags.Int("threads", &c.threads, 1, 1024, "threads, each with its own event loop");
  flags.String("cpus", &raw->cpus, "pin thread i to the i-th CPU of this list, e.g. 1 or 2-5");
  flags.Duration("duration", &c.duration, "measured time, after the warmup");
  flags.Duration("warmup", &c.warmup, "load before measuring; excluded from every figure");
  flags.String("size", &raw->size, "request bytes: fixed (64) or uniform over a range (64:1024)");
  flags.Int("pipeline", &raw->pipeline, 0, kUnlimitedPipeline,
            "closed loop: requests kept in flight per connection (0 = 1); open loop: most in "
            "flight per connection (0 = no cap)");
  flags.Double("rate", &c.rate, 0, 1e9, "requests/s in total; 0 = closed loop");
  flags.String("arrival", &raw->arrival, "open-loop schedule", {"uniform", "poisson"});
  flags.Bool("reconnect", &c.reconnect,
             "TCP: a new connection per request, timed from the connect (the lab's one-shot "
             "pattern)");
  flags.Bool("verify", &c.verify, "every reply must equal uppercase(request); --no-verify to skip");
  flags.String("json", &c.json_path, "write the result as JSON to this file");
  flags.String("hdr-log", &c.hdr_log_path, "write HdrHistogram interval logs (V2) to this file");
  flags.Duration("interval", &c.interval, "progress line and log interval");
  flags.Bool("quiet", &c.quiet, "no progress lines");
  flags.Double("start-at", &c.start_at, 0, 1e11,
               "start at this UNIX time (seconds, fractions allowed), for runs on several hosts");
  flags.Duration("timeout", &c.timeout,
                 "UDP: a reply later than this is lost; TCP: connect timeout; both: end-of-run "
                 "drain");
}

absl::StatusOr<Config> FinishConfig(const RawFlags& raw, const std::vector<std::string>& args) {
  Config c = raw.config;
  if (args.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected HOST PORT, got ", args.size(), " arguments (see --help)"));
  }
  c.host = args[0];
  absl::StatusOr<std::uint16_t> port = ParsePort(args[1]);
  if (!port.ok()) return port.status();
  if (*port == 0) return absl::InvalidArgumentError("PORT must not be 0");
  c.port = *port;
  c.proto = raw.proto == "udp" ? Transport::kUdp : Transport::kTcp;
  c.arrival = raw.arrival == "poisson" ? Arrival::kPoisson : Arrival::kUniform;
  if (!raw.cpus.empty()) {
    absl::StatusOr<std::vector<int>> cpus = ParseCpuList(raw.cpus);
    if (!cpus.ok())
      return absl::InvalidArgumentError(absl::StrCat("--cpus: ", cpus.status().message()));
    c.cpus = *cpus;
  }
  absl::StatusOr<SizeRange> size = ParseSizeRange(raw.size);
  if (!size.ok()) return size.status();
  c.size = *size;
  if (c.proto == Transport::kUdp) {
    if (c.size.min < kSeqHeaderBytes || c.size.max > kMaxUdpPayload) {
      return absl::InvalidArgumentError(
          absl::StrCat("--size=", raw.size, ": UDP requests carry an ", kSeqHeaderBytes,
                       "-byte sequence header and fit one datagram: ", kSeqHeaderBytes, " to ",
                       kMaxUdpPayload, " bytes"));
    }
    if (c.reconnect) {
      return absl::InvalidArgumentError("--reconnect: applies to TCP only");
    }
  }
  if (raw.pipeline == 0) {
    c.pipeline = c.open_loop() ? kUnlimitedPipeline : 1;
  } else {
    c.pipeline = raw.pipeline;
  }
  if (c.reconnect && c.pipeline > 1 && raw.pipeline != 0) {
    return absl::InvalidArgumentError("--pipeline: --reconnect sends one request per connection");
  }
  if (c.reconnect) c.pipeline = 1;
  if (c.duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--duration: must be positive");
  }
  if (c.interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--interval: must be positive");
  }
  if (c.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--timeout: must be positive");
  }
  if (c.threads > c.connections) c.threads = c.connections;
  return c;
}

nlohmann::json Config::ToJson() const {
  return {
      {"proto", TransportName(proto)},
      {"host", host},
      {"port", port},
      {"connections", connections},
      {"threads", threads},
      {"cpus", cpus},
      {"duration_s", absl::ToDoubleSeconds(duration)},
      {"warmup_s", absl::ToDoubleSeconds(warmup)},
      {"interval_s", absl::ToDoubleSeconds(interval)},
      {"timeout_s", absl::ToDoubleSeconds(timeout)},
      {"size", size.ToString()},
      {"size_min", size.min},
      {"size_max", size.max},
      {"pipeline", pipeline},
      {"rate", rate},
      {"loop", open_loop() ? "open" : "closed"},
      {"arrival", arrival == Arrival::kPoisson ? "poisson" : "uniform"},
      {"reconnect", reconnect},
      {"verify", verify},
      {"start_at", start_at},
  };
}

}  // namespace upcase::load
