// The environment fingerprint: what about this host decides how precise (and how comparable)
// a measurement taken on it is -- kernel, CPU, hypervisor, clock source, frequency scaling, SMT,
// mitigations, isolated CPUs, irqbalance, io_uring, socket buffer limits, busy polling,
// transparent huge pages, perf_event_paranoid -- and the advice that goes with it, in the style of
// pyperf's `system show` / `system tune`: each setting that lowers precision, with the command
// that fixes it.
//
// One implementation for every tool: upcase-load puts the fingerprint in its --json result
// (`env`), and `upcase-load env [--check]` prints it for scripts (tools/compare, tools/regress).
// Every file is read under a root directory ("" for the host itself) so tests can fake a host;
// a file that cannot be read gives null, never an error.
#ifndef UPCASE_COMMON_ENV_H_
#define UPCASE_COMMON_ENV_H_

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace upcase {

struct EnvOptions {
  std::string root;  // "" reads the host's /proc and /sys
  // Also ask the running kernel and CPU what no file says: io_uring_setup and its probe, the
  // hypervisor's CPUID leaf. Off for a fake root.
  bool probe_live = true;
};

// The fingerprint as a JSON object (see docs/host-noise.md for its keys).
nlohmann::json EnvFingerprint(const EnvOptions& options = {});

// One setting that lowers precision.
struct EnvAdvice {
  std::string key;   // the fingerprint key it comes from, e.g. "scaling_governor"
  std::string what;  // what is wrong and why it matters
  std::string fix;   // the command (or step) that fixes it
};
// The advice for a fingerprint, in a fixed order (empty when nothing lowers precision).
std::vector<EnvAdvice> EnvCheck(const nlohmann::json& env);
// The advice as `upcase-load env --check` prints it.
std::string FormatEnvCheck(const std::vector<EnvAdvice>& advice);

}  // namespace upcase

#endif  // UPCASE_COMMON_ENV_H_
