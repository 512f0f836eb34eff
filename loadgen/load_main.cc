// upcase-load: the load generator for the uppercase service, TCP and UDP, closed and open loop.
//
//   $ upcase-server --backend=threads 5050 &
//   $ upcase-load --connections=64 --threads=2 --duration=5s 127.0.0.1 5050
//   $ upcase-load --rate=20000 --arrival=poisson --json=run.json 127.0.0.1 5050
//   $ upcase-load merge a.json b.json
//
// Files: config (flags), run (threads, progress, start), worker (one event loop per thread),
// tcp_channel / udp_channel (one connection each), schedule (open-loop arrivals), payload
// (request bytes, verification), stats, histogram (HdrHistogram-compatible), hdr_log, report.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/env.h"
#include "common/flags.h"
#include "common/sys.h"
#include "loadgen/config.h"
#include "loadgen/report.h"
#include "loadgen/run.h"
#include "loadgen/worker.h"

namespace upcase::load {
namespace {

constexpr char kProgram[] = "upcase-load";
constexpr char kUsage[] =
    "usage: upcase-load [flags] HOST PORT\n"
    "       upcase-load merge [--json=FILE] [--quiet] FILE...\n"
    "       upcase-load env [--check]\n\n"
    "Loads the uppercase service at HOST PORT and reports throughput and the latency spectrum.\n"
    "Closed loop (--rate=0) keeps --pipeline requests in flight per connection; open loop sends\n"
    "--rate requests/s on a fixed schedule and measures latency from the intended send time\n"
    "(coordinated omission corrected), reporting the uncorrected latency beside it. Every reply\n"
    "is checked against uppercase(request) unless --no-verify.\n"
    "merge combines the --json results of several runs (e.g. one per host, --start-at) into one\n"
    "report, merging their histograms exactly.\n"
    "env prints this host's environment fingerprint as JSON (the result's \"env\"); env --check\n"
    "prints each setting that lowers the precision of measurements with the command that fixes\n"
    "it (exit 0 either way).\n\n"
    "The host's noise: steal, interrupt (irq+softirq) and foreign CPU (time of processes other\n"
    "than upcase-load and --server-pid) on the load's and the server's CPUs, and with --hiccups a\n"
    "hiccup recorder per load CPU (a thread sleeping 1 ms, recording how late it wakes), per\n"
    "interval and for the window (JSON \"host\"). A line starting \"HOST NOISE:\" (JSON\n"
    "host.noisy) says when the host explains the tail: over the window, on any watched CPU, steal\n"
    "above 5 % or foreign CPU above 10 %, or a hiccup above 5 ms (docs/host-noise.md).\n\n"
    "Exit status: 0 ok; 1 the run could not start or measured no reply; 2 bad command line;\n"
    "3 a reply differed from uppercase(request).";

absl::Status WriteJson(const std::string& path, const Report& report) {
  std::ofstream out(path);
  out << report.ToJson().dump(2) << "\n";
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("write ", path, ": failed"));
  return absl::OkStatus();
}

int Finish(const Report& report, const Config& config) {
  std::fputs(report.Table().c_str(), stdout);
  std::fflush(stdout);
  if (!config.json_path.empty()) {
    if (absl::Status s = WriteJson(config.json_path, report); !s.ok()) {
      std::fprintf(stderr, "%s: %s\n", kProgram, std::string(s.message()).c_str());
      return kExitFailed;
    }
  }
  const int code = report.ExitCode();
  if (code != kExitOk) std::fprintf(stderr, "%s: %s\n", kProgram, report.FailureReason().c_str());
  return code;
}

absl::StatusOr<Report> ReadReport(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not JSON"));
  absl::StatusOr<Report> r = Report::FromJson(j);
  if (!r.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", r.status().message()));
  if (r->sources.empty()) r->sources = {path};
  return r;
}

int Merge(const std::vector<std::string>& files, const Config& config) {
  if (files.empty()) {
    std::fprintf(stderr, "%s: merge: expected one or more result files (see --help)\n", kProgram);
    return 2;
  }
  std::optional<Report> merged;
  for (const std::string& f : files) {
    absl::StatusOr<Report> r = ReadReport(f);
    if (!r.ok()) {
      std::fprintf(stderr, "%s: merge: %s\n", kProgram, std::string(r.status().message()).c_str());
      return kExitFailed;
    }
    if (merged.has_value()) {
      if (absl::Status s = merged->Merge(*r); !s.ok()) {
        std::fprintf(stderr, "%s: merge: %s: %s\n", kProgram, f.c_str(),
                     std::string(s.message()).c_str());
        return kExitFailed;
      }
    } else {
      merged = *std::move(r);
    }
  }
  return Finish(*merged, config);
}

// Ctrl-C (or SIGTERM) ends the window early; the report covers the time measured. A second one
// kills, as usual (SA_RESETHAND).
void OnStopSignal(int) { RequestStop(MonotonicNanos()); }

int Main(int argc, char** argv) {
  // A server that vanishes is an EPIPE to count, not a reason to die.
  signal(SIGPIPE, SIG_IGN);
  struct sigaction stop {};
  stop.sa_handler = OnStopSignal;
  stop.sa_flags = SA_RESETHAND;
  sigemptyset(&stop.sa_mask);
  if (sigaction(SIGINT, &stop, nullptr) != 0 || sigaction(SIGTERM, &stop, nullptr) != 0) {
    std::perror("upcase-load: sigaction");
    return kExitFailed;
  }
  RawFlags raw;
  FlagSet flags(kProgram, kUsage);
  RegisterFlags(flags, &raw);
  bool check = false;
  flags.Bool("check", &check,
             "env: list what lowers the precision of measurements here, with the fix for each");
  std::vector<std::string> args = flags.ParseOrExit(argc, argv);
  if (!args.empty() && args[0] == "env") {
    if (args.size() != 1) {
      std::fprintf(stderr, "%s: env: takes no arguments besides --check (see --help)\n", kProgram);
      return 2;
    }
    const nlohmann::json env = EnvFingerprint();
    const std::string out = check ? FormatEnvCheck(EnvCheck(env)) : env.dump(2) + "\n";
    std::fputs(out.c_str(), stdout);
    return kExitOk;
  }
  if (check) {
    std::fprintf(stderr, "%s: --check: applies to upcase-load env only\n", kProgram);
    return 2;
  }
  if (!args.empty() && args[0] == "merge") {
    return Merge(std::vector<std::string>(args.begin() + 1, args.end()), raw.config);
  }
  absl::StatusOr<Config> config = FinishConfig(raw, args);
  if (!config.ok()) {
    std::fprintf(stderr, "%s: %s\n", kProgram, std::string(config.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<Report> report = RunLoad(*config);
  if (!report.ok()) {
    std::fprintf(stderr, "%s: %s\n", kProgram, std::string(report.status().message()).c_str());
    return kExitFailed;
  }
  return Finish(*report, *config);
}

}  // namespace
}  // namespace upcase::load

int main(int argc, char** argv) { return upcase::load::Main(argc, argv); }
