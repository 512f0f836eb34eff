// libFuzzer target for every parser of untrusted command-line text: FlagSet (all flag kinds,
// both syntaxes, negation), ports, IPv4/IPv6 addresses, byte counts and CPU lists.
// Input: arguments separated by NUL bytes. Invariants checked beyond "no crash, no UB":
// a parse either succeeds or returns a non-empty one-line error; successful values are in range.
//
//   tools/fuzz 60        # build with clang and fuzz for 60 s (corpus: tests/fuzz/corpus/parsers)
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/flags.h"
#include "common/net.h"
#include "common/sys.h"

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

void CheckError(const absl::Status& status) {
  Check(!status.message().empty());
  Check(status.message().find('\n') == absl::string_view::npos);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args = {"prog"};
  std::string current;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      args.push_back(current);
      current.clear();
    } else {
      current.push_back(static_cast<char>(data[i]));
    }
  }
  args.push_back(current);

  bool flag_bool = false;
  std::int64_t flag_int = 1;
  std::uint64_t flag_bytes = 0;
  double flag_double = 0;
  std::string flag_string, flag_choice = "tcp";
  absl::Duration flag_duration = absl::Seconds(1);
  upcase::FlagSet flags("fuzz", "usage");
  flags.Bool("verify", &flag_bool, "");
  flags.Int("connections", &flag_int, 1, 100000, "");
  flags.Bytes("conn-buffer", &flag_bytes, "");
  flags.Double("rate", &flag_double, 0, 1e9, "");
  flags.String("json", &flag_string, "");
  flags.String("proto", &flag_choice, "", {"tcp", "udp"});
  flags.Duration("duration", &flag_duration, "");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  absl::StatusOr<std::vector<std::string>> positional =
      flags.Parse(static_cast<int>(argv.size()), argv.data());
  if (positional.ok()) {
    Check(flag_int >= 1 && flag_int <= 100000);
    Check(flag_double >= 0 && flag_double <= 1e9);
    Check(flag_choice == "tcp" || flag_choice == "udp");
    Check(flag_duration >= absl::ZeroDuration());
  } else {
    CheckError(positional.status());
  }

  for (const std::string& a : args) {
    if (absl::StatusOr<std::uint16_t> port = upcase::ParsePort(a); !port.ok()) {
      CheckError(port.status());
    }
    if (absl::StatusOr<upcase::SocketAddress> addr = upcase::ParseIpAddress(a, 5050); addr.ok()) {
      Check(addr->port() == 5050);
      Check(addr->family() == AF_INET || addr->family() == AF_INET6);
      // What we print must parse back to the same address.
      const std::string text = addr->ToString();
      absl::StatusOr<upcase::SocketAddress> again =
          upcase::ParseIpAddress(text.substr(0, text.rfind(':')), 5050);
      Check(again.ok() && again->ToString() == text);
    } else {
      CheckError(addr.status());
    }
    if (absl::StatusOr<std::uint64_t> bytes = upcase::ParseBytes(a); !bytes.ok()) {
      CheckError(bytes.status());
    }
    if (absl::StatusOr<std::vector<int>> cpus = upcase::ParseCpuList(a); cpus.ok()) {
      for (int c : *cpus) Check(c >= 0 && c < CPU_SETSIZE);
    } else {
      CheckError(cpus.status());
    }
  }
  return 0;
}
