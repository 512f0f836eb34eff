// upcase-load's configuration: the command line of docs/upcase-load.md, parsed and checked once,
// then copied into every thread.
#ifndef UPCASE_LOADGEN_CONFIG_H_
#define UPCASE_LOADGEN_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "common/hiccup.h"
#include "common/net.h"
#include "loadgen/payload.h"
#include "nlohmann/json.hpp"

namespace upcase::load {

// The most requests one connection may have in flight in open loop when --pipeline is not
// given: in effect no cap, so requests go out on schedule whether or not replies came back.
inline constexpr std::int64_t kUnlimitedPipeline = 1 << 20;
// Closed loop keeps --pipeline requests per connection, each with a slot allocated at start:
// --connections x --pipeline above this is refused at start rather than failing to allocate.
inline constexpr std::int64_t kMaxRequestsInFlight = 1 << 24;
// UDP requests carry an 8-byte sequence header; a datagram holds at most this much.
inline constexpr std::uint64_t kMaxUdpPayload = 65507;
inline constexpr std::uint64_t kMaxTcpRequest = 16 << 20;

enum class Arrival { kUniform, kPoisson };

// How an open-loop thread waits for its next send (see pacer.h): sleep the whole way (kOff), or
// sleep until a spin window before it and then poll, the window learnt from the oversleeps seen
// (kAuto) or fixed (kFixed).
enum class SpinMode { kOff, kAuto, kFixed };

// --interval below this would spend the run publishing intervals.
inline constexpr absl::Duration kMinInterval = absl::Milliseconds(10);
// --spin=DURATION above this is a busy loop, not a finishing stretch.
inline constexpr absl::Duration kMaxSpin = absl::Milliseconds(10);
// The drain's default: the larger of this and --timeout.
inline constexpr absl::Duration kMinDefaultDrain = absl::Seconds(1);

// Request sizes: fixed (--size=64) or uniform over a range (--size=64:1024).
struct SizeRange {
  std::uint32_t min = 64;
  std::uint32_t max = 64;
  std::uint32_t Draw(Rng& rng) const {
    return min == max ? min : min + static_cast<std::uint32_t>(rng.Below(max - min + 1));
  }
  std::string ToString() const;
};
absl::StatusOr<SizeRange> ParseSizeRange(absl::string_view text);

struct Config {
  Transport proto = Transport::kTcp;
  std::string host;
  std::uint16_t port = 0;
  std::int64_t connections = 16;
  std::int64_t threads = 1;
  std::vector<int> cpus;  // thread i runs on cpus[i % size]; empty: not pinned
  absl::Duration duration = absl::Seconds(10);
  absl::Duration warmup = absl::Seconds(2);
  absl::Duration interval = absl::Seconds(1);
  absl::Duration timeout = absl::Seconds(1);
  // After the window: how long replies to window requests are still awaited (and recorded).
  absl::Duration drain = absl::Seconds(1);
  SpinMode spin = SpinMode::kOff;
  absl::Duration spin_fixed = absl::ZeroDuration();  // kFixed's window
  SizeRange size;
  std::int64_t pipeline = 1;  // closed loop: kept in flight; open loop: most in flight
  double rate = 0;            // requests/s in total; 0 = closed loop
  Arrival arrival = Arrival::kUniform;
  bool reconnect = false;
  bool verify = true;
  bool quiet = false;
  std::string json_path;
  std::string hdr_log_path;
  double start_at = 0;  // UNIX seconds; 0 = now
  // Hiccup recorders on the load's CPUs (loadgen/hiccup_recorder.h). Off by default: on a VM their
  // wakeups keep the vCPU from idling, which lowers the latency tail they sit beside (and cost
  // CPU); docs/host-noise.md has the measurements.
  bool hiccups = false;
  absl::Duration hiccup_period = kHiccupPeriod;  // their sleep
  // The server under test, for host.cpus: its process (its threads' CPU time is not foreign) and
  // its CPUs (watched for steal, interrupts and foreign CPU). 0 / empty: not known.
  std::int64_t server_pid = 0;
  std::vector<int> server_cpus;

  bool open_loop() const { return rate > 0; }
  nlohmann::json ToJson() const;
};

// Flag values as typed on the command line, before checking; RegisterFlags binds them.
struct RawFlags {
  std::string proto = "tcp";
  std::string cpus;
  std::string size = "64";
  std::string arrival = "uniform";
  std::int64_t pipeline = 0;  // 0: 1 in closed loop, no cap in open loop
  std::string drain;          // empty: max(1s, --timeout)
  std::string spin;           // empty: auto in open loop, off in closed loop
  std::string server_cpus;
  Config config;
};
void RegisterFlags(FlagSet& flags, RawFlags* raw);

// Checks the flags and the positional HOST PORT; the error is one line naming the flag.
absl::StatusOr<Config> FinishConfig(const RawFlags& raw, const std::vector<std::string>& args);

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_CONFIG_H_
