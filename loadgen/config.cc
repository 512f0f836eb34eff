#include "loadgen/config.h"

#include <signal.h>

#include <algorithm>
#include <cerrno>

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

namespace {

// --cpus: a list of CPUs this process may run on. In a container limited to CPUs 4-7, --cpus=0 is
// an error naming 4-7 here, not a failed pthread_setaffinity_np in a worker thread.
absl::StatusOr<std::vector<int>> ParseAllowedCpus(const std::string& text) {
  absl::StatusOr<std::vector<int>> cpus = ParseCpuList(text);
  if (!cpus.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--cpus: ", cpus.status().message()));
  }
  absl::StatusOr<std::vector<int>> allowed = AllowedCpus();
  if (!allowed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--cpus: ", allowed.status().message()));
  }
  for (int cpu : *cpus) {
    if (!std::binary_search(allowed->begin(), allowed->end(), cpu)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--cpus=", text, ": CPU ", cpu,
          " is not one this process may use (allowed: ", FormatCpuList(*allowed), ")"));
    }
  }
  return cpus;
}

// --drain and --spin, after --rate and --timeout are known (their defaults depend on them).
absl::Status FinishDrainAndSpin(const RawFlags& raw, Config* c) {
  if (raw.drain.empty()) {
    c->drain = std::max(kMinDefaultDrain, c->timeout);
  } else {
    absl::StatusOr<absl::Duration> drain = ParseDurationFlag("drain", raw.drain);
    if (!drain.ok()) return drain.status();
    c->drain = *drain;
  }
  const std::string spin = raw.spin.empty() ? (c->open_loop() ? "auto" : "off") : raw.spin;
  if (spin == "off") {
    c->spin = SpinMode::kOff;
    return absl::OkStatus();
  }
  if (!c->open_loop()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--spin=", spin, ": only open loop (--rate) has send times to spin for"));
  }
  if (spin == "auto") {
    c->spin = SpinMode::kAuto;
    return absl::OkStatus();
  }
  absl::StatusOr<absl::Duration> d =
      ParseDurationFlag("spin", spin, absl::Nanoseconds(1), kMaxSpin);
  if (!d.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(d.status().message(), ", or auto, or off"));
  }
  c->spin = SpinMode::kFixed;
  c->spin_fixed = *d;
  return absl::OkStatus();
}

}  // namespace

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
  flags.Duration("interval", &c.interval, "progress line and log interval", kMinInterval);
  flags.Bool("quiet", &c.quiet, "no progress lines");
  flags.Double("start-at", &c.start_at, 0, 1e11,
               "start at this UNIX time (seconds, fractions allowed), for runs on several hosts");
  flags.Duration("timeout", &c.timeout,
                 "UDP: a reply later than this is lost; TCP: connect timeout");
  flags.String("drain", &raw->drain,
               "after the window, wait this long for replies to window requests (a duration; "
               "default: the larger of 1s and --timeout)");
  flags.String("spin", &raw->spin,
               "open loop: sleep until this long before each send, then spin on the clock: auto "
               "(learnt from the oversleeps measured), off, or a duration up to 10ms "
               "[default: auto in open loop, off in closed loop]");
  flags.Bool("hiccups", &c.hiccups,
             "run a hiccup recorder per load CPU: a thread that sleeps --hiccup-period and records "
             "how late it wakes (the host's stalls, host.hiccup_us). Off by default: on a VM its "
             "wakeups keep the CPU from idling, which changes the latency measured beside it");
  flags.Duration("hiccup-period", &c.hiccup_period,
                 "the hiccup recorders' sleep: shorter catches shorter stalls and costs more "
                 "wakeups",
                 kMinHiccupPeriod, kMaxHiccupPeriod);
  flags.Int("server-pid", &c.server_pid, 0, 1 << 22,
            "the server's process: its CPU time is not counted as foreign in host.cpus (0 = "
            "unknown)");
  flags.String("server-cpus", &raw->server_cpus,
               "the server's CPUs, watched for steal, interrupts and foreign CPU like the load's "
               "(default: the --server-pid's affinity)");
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
    absl::StatusOr<std::vector<int>> cpus = ParseAllowedCpus(raw.cpus);
    if (!cpus.ok()) return cpus.status();
    c.cpus = *std::move(cpus);
  }
  if (!raw.server_cpus.empty()) {
    absl::StatusOr<std::vector<int>> cpus = ParseCpuList(raw.server_cpus);
    if (!cpus.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--server-cpus: ", cpus.status().message()));
    }
    c.server_cpus = *std::move(cpus);
  }
  if (c.server_pid != 0 && ::kill(static_cast<pid_t>(c.server_pid), 0) != 0 && errno == ESRCH) {
    return absl::InvalidArgumentError(
        absl::StrCat("--server-pid=", c.server_pid, ": no such process"));
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
  if (!c.open_loop() && c.pipeline > kMaxRequestsInFlight / c.connections) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--pipeline=", c.pipeline, " x --connections=", c.connections,
        ": closed loop keeps at most ", kMaxRequestsInFlight, " requests in flight in total"));
  }
  if (c.duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--duration: must be positive");
  }
  if (c.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--timeout: must be positive");
  }
  if (absl::Status s = FinishDrainAndSpin(raw, &c); !s.ok()) return s;
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
      {"drain_s", absl::ToDoubleSeconds(drain)},
      {"spin", spin == SpinMode::kOff    ? "off"
               : spin == SpinMode::kAuto ? "auto"
                                         : absl::FormatDuration(spin_fixed)},
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
      {"hiccups", hiccups},
      {"hiccup_period_s", absl::ToDoubleSeconds(hiccup_period)},
      {"server_pid", server_pid},
      {"server_cpus", server_cpus},
  };
}

}  // namespace upcase::load
