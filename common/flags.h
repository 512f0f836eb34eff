// A small declarative command-line parser shared by upcase's binaries.
//
// Why not absl/flags: the manuals (docs/upcase-server.md, docs/upcase-load.md) fix dashed flag
// names (--max-conns, --conn-buffer), which abseil rejects, and its --help lists every library flag
// and exits 1. Values are still parsed with abseil (durations like "10s", numbers), so the syntax
// matches what abseil users know.
//
// Accepted forms: --name=value, --name value, and for booleans --name, --name=false (or 0, no,
// off), --no-name.
// --help / -h prints the usage and exits 0; a bad flag prints one line and exits 2.
#ifndef UPCASE_COMMON_FLAGS_H_
#define UPCASE_COMMON_FLAGS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace upcase {

// The longest duration any flag accepts: a year, far from int64 nanoseconds' 292 years.
inline constexpr absl::Duration kMaxDurationFlag = absl::Hours(24 * 365);

class FlagSet {
 public:
  // `program` is the name errors start with; `usage` the synopsis and description for --help.
  FlagSet(std::string program, std::string usage);

  void Bool(std::string name, bool* target, std::string help);
  void Int(std::string name, std::int64_t* target, std::int64_t min, std::int64_t max,
           std::string help);
  // Byte counts; accepts suffixes K, M, G (powers of 1024), e.g. --conn-buffer=256K.
  void Bytes(std::string name, std::uint64_t* target, std::string help);
  void Double(std::string name, double* target, double min, double max, std::string help);
  // `choices`, when given, lists the only accepted values.
  void String(std::string name, std::string* target, std::string help,
              std::vector<std::string> choices = {});
  // absl duration syntax: 10s, 500ms, 1m30s; a bare number means seconds. Values outside
  // [min, max] -- negative, `inf`, 1e300 -- are rejected, so a duration can always be added to a
  // CLOCK_MONOTONIC time in nanoseconds without overflowing.
  void Duration(std::string name, absl::Duration* target, std::string help,
                absl::Duration min = absl::ZeroDuration(), absl::Duration max = kMaxDurationFlag);

  // Parses everything after argv[0]; returns the positional arguments or a one-line error.
  absl::StatusOr<std::vector<std::string>> Parse(int argc, char** argv);
  // Parse(), printing errors as "<program>: <message>" and exiting 2; exits 0 after --help.
  std::vector<std::string> ParseOrExit(int argc, char** argv);

  std::string Usage() const;
  const std::string& program() const { return program_; }

 private:
  struct Flag {
    std::string name;
    std::string help;
    std::string default_text;
    bool is_bool = false;
    std::function<absl::Status(absl::string_view)> set;
  };
  void Add(Flag flag);
  const Flag* Find(absl::string_view name) const;

  std::string program_;
  std::string usage_;
  std::vector<Flag> flags_;
  bool help_requested_ = false;
};

// Exits with "<program>: <status message>" on stderr and status 1 when !status.ok().
void DieIfError(absl::string_view program, const absl::Status& status);

// Parses the byte-count syntax of FlagSet::Bytes.
absl::StatusOr<std::uint64_t> ParseBytes(absl::string_view text);

// Parses the duration syntax of FlagSet::Duration for flag --`name`, within [min, max]; for flags
// whose default depends on other flags, parsed after them.
absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view name, absl::string_view text,
                                                 absl::Duration min = absl::ZeroDuration(),
                                                 absl::Duration max = kMaxDurationFlag);

}  // namespace upcase

#endif  // UPCASE_COMMON_FLAGS_H_
