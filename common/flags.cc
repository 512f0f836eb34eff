#include "common/flags.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/quote.h"

namespace upcase {

FlagSet::FlagSet(std::string program, std::string usage)
    : program_(std::move(program)), usage_(std::move(usage)) {}

void FlagSet::Add(Flag flag) { flags_.push_back(std::move(flag)); }

const FlagSet::Flag* FlagSet::Find(absl::string_view name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

void FlagSet::Bool(std::string name, bool* target, std::string help) {
  Add({name, std::move(help), *target ? "true" : "false", true,
       [name, target](absl::string_view v) -> absl::Status {
         if (v == "true" || v == "1" || v == "yes" || v == "on") {
           *target = true;
         } else if (v == "false" || v == "0" || v == "no" || v == "off") {
           *target = false;
         } else {
           return absl::InvalidArgumentError(
               absl::StrCat("--", name, "=", Quoted(v), ": expected true or false"));
         }
         return absl::OkStatus();
       }});
}

void FlagSet::Int(std::string name, std::int64_t* target, std::int64_t min, std::int64_t max,
                  std::string help) {
  Add({name, std::move(help), absl::StrCat(*target), false,
       [name, target, min, max](absl::string_view v) -> absl::Status {
         std::int64_t value;
         if (!absl::SimpleAtoi(v, &value) || value < min || value > max) {
           return absl::InvalidArgumentError(absl::StrCat(
               "--", name, "=", Quoted(v), ": expected an integer from ", min, " to ", max));
         }
         *target = value;
         return absl::OkStatus();
       }});
}

absl::StatusOr<std::uint64_t> ParseBytes(absl::string_view text) {
  std::uint64_t scale = 1;
  absl::string_view digits = text;
  if (!digits.empty()) {
    switch (absl::ascii_toupper(digits.back())) {
      case 'K':
        scale = 1ULL << 10;
        break;
      case 'M':
        scale = 1ULL << 20;
        break;
      case 'G':
        scale = 1ULL << 30;
        break;
      default:
        break;
    }
    if (scale != 1) digits.remove_suffix(1);
  }
  std::uint64_t value;
  if (!absl::SimpleAtoi(digits, &value) || value > UINT64_MAX / scale) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quoted(text), ": expected a byte count such as 65536, 64K or 1M"));
  }
  return value * scale;
}

void FlagSet::Bytes(std::string name, std::uint64_t* target, std::string help) {
  Add({name, std::move(help), absl::StrCat(*target), false,
       [name, target](absl::string_view v) -> absl::Status {
         absl::StatusOr<std::uint64_t> value = ParseBytes(v);
         if (!value.ok()) {
           return absl::InvalidArgumentError(
               absl::StrCat("--", name, "=", value.status().message()));
         }
         *target = *value;
         return absl::OkStatus();
       }});
}

void FlagSet::Double(std::string name, double* target, double min, double max, std::string help) {
  Add({name, std::move(help), absl::StrCat(*target), false,
       [name, target, min, max](absl::string_view v) -> absl::Status {
         double value;
         if (!absl::SimpleAtod(v, &value) || !(value >= min && value <= max)) {
           return absl::InvalidArgumentError(absl::StrCat(
               "--", name, "=", Quoted(v), ": expected a number from ", min, " to ", max));
         }
         *target = value;
         return absl::OkStatus();
       }});
}

void FlagSet::String(std::string name, std::string* target, std::string help,
                     std::vector<std::string> choices) {
  if (!choices.empty()) absl::StrAppend(&help, " (", absl::StrJoin(choices, "|"), ")");
  Add({name, std::move(help), target->empty() ? "" : *target, false,
       [name, target, choices](absl::string_view v) -> absl::Status {
         if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
           return absl::InvalidArgumentError(absl::StrCat(
               "--", name, "=", Quoted(v), ": expected one of ", absl::StrJoin(choices, ", ")));
         }
         *target = std::string(v);
         return absl::OkStatus();
       }});
}

absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view name, absl::string_view text,
                                                 absl::Duration min, absl::Duration max) {
  absl::Duration d;
  double seconds;
  bool parsed = false;
  if (absl::SimpleAtod(text, &seconds)) {
    parsed = std::isfinite(seconds);
    if (parsed) d = absl::Seconds(seconds);  // 1e300 becomes infinite: rejected below
  } else {
    parsed = absl::ParseDuration(text, &d);
  }
  if (!parsed || d < min || d > max) {
    const std::string example =
        max >= absl::Seconds(10) ? "10s or 500ms" : absl::FormatDuration(max / 2);
    return absl::InvalidArgumentError(absl::StrCat(
        "--", name, "=", Quoted(text), ": expected a duration from ", absl::FormatDuration(min),
        " to ", absl::FormatDuration(max), ", such as ", example));
  }
  return d;
}

void FlagSet::Duration(std::string name, absl::Duration* target, std::string help,
                       absl::Duration min, absl::Duration max) {
  Add({name, std::move(help), absl::FormatDuration(*target), false,
       [name, target, min, max](absl::string_view v) -> absl::Status {
         absl::StatusOr<absl::Duration> d = ParseDurationFlag(name, v, min, max);
         if (!d.ok()) return d.status();
         *target = *d;
         return absl::OkStatus();
       }});
}

absl::StatusOr<std::vector<std::string>> FlagSet::Parse(int argc, char** argv) {
  std::vector<std::string> positional;
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (only_positional || arg.size() < 2 || arg[0] != '-') {
      positional.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positional = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      help_requested_ = true;
      continue;
    }
    absl::string_view body = arg.substr(arg[1] == '-' ? 2 : 1);
    absl::string_view name = body;
    absl::string_view value;
    bool has_value = false;
    if (size_t eq = body.find('='); eq != absl::string_view::npos) {
      name = body.substr(0, eq);
      value = body.substr(eq + 1);
      has_value = true;
    }
    const Flag* flag = Find(name);
    if (flag == nullptr && !has_value && name.substr(0, 3) == "no-") {
      if (const Flag* negated = Find(name.substr(3)); negated != nullptr && negated->is_bool) {
        if (absl::Status s = negated->set("false"); !s.ok()) return s;
        continue;
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", Quoted(arg), " (see --help)"));
    }
    if (!has_value) {
      if (flag->is_bool) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag ", Quoted(absl::StrCat("--", name)), " needs a value"));
      }
    }
    if (absl::Status s = flag->set(value); !s.ok()) return s;
  }
  return positional;
}

std::vector<std::string> FlagSet::ParseOrExit(int argc, char** argv) {
  absl::StatusOr<std::vector<std::string>> positional = Parse(argc, argv);
  if (help_requested_) {
    std::fputs(Usage().c_str(), stdout);
    std::exit(0);
  }
  if (!positional.ok()) {
    std::fprintf(stderr, "%s: %s\n", program_.c_str(),
                 std::string(positional.status().message()).c_str());
    std::exit(2);
  }
  return *std::move(positional);
}

std::string FlagSet::Usage() const {
  std::string out = usage_;
  if (!out.empty() && out.back() != '\n') out += '\n';
  out += "\nFlags:\n";
  for (const Flag& f : flags_) {
    std::string left = absl::StrCat("  --", f.name, f.is_bool ? "" : "=VALUE");
    std::string help = f.help;
    if (!f.default_text.empty()) absl::StrAppend(&help, " [default: ", f.default_text, "]");
    absl::StrAppendFormat(&out, "%-26s %s\n", left, help);
  }
  absl::StrAppendFormat(&out, "%-26s %s\n", "  -h, --help", "show this help and exit");
  return out;
}

void DieIfError(absl::string_view program, const absl::Status& status) {
  if (status.ok()) return;
  std::fprintf(stderr, "%.*s: %.*s\n", static_cast<int>(program.size()), program.data(),
               static_cast<int>(status.message().size()), status.message().data());
  std::exit(1);
}

}  // namespace upcase
