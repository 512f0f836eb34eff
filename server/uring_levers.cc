#include "server/uring_levers.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

#ifdef UPCASE_HAVE_URING
#include "server/uring_ring.h"
#endif

namespace upcase {
namespace {

struct LeverName {
  unsigned bit;
  const char* name;
};
constexpr LeverName kLevers[] = {
    {kLeverRingFd, "ring-fd"},
    {kLeverSkipSuccess, "skip-success"},
    {kLeverMinWait, "min-wait"},
    {kLeverFixedFiles, "fixed-files"},
};

}  // namespace

absl::StatusOr<unsigned> ParseUringLevers(absl::string_view list) {
  unsigned set = 0;
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    if (item == "default") {
      set = kDefaultUringLevers;
      continue;
    }
    if (item == "all") {
      set = kAllUringLevers;
      continue;
    }
    if (item == "none") {
      set = 0;
      continue;
    }
    const bool off = absl::ConsumePrefix(&item, "-");
    unsigned bit = 0;
    for (const LeverName& lever : kLevers) {
      if (item == lever.name) bit = lever.bit;
    }
    if (bit == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--uring-levers='", list, "': unknown lever '",
                                                     item, "' (expected default, all, none or [-]",
                                                     AllUringLeverNames(), ")"));
    }
    set = off ? set & ~bit : set | bit;
  }
  return set;
}

std::string UringLeverNames(unsigned set) {
  std::vector<std::string> names;
  for (const LeverName& lever : kLevers) {
    if (set & lever.bit) names.emplace_back(lever.name);
  }
  return names.empty() ? "none" : absl::StrJoin(names, ",");
}

std::string AllUringLeverNames() {
  std::vector<std::string> names;
  for (const LeverName& lever : kLevers) names.emplace_back(lever.name);
  return absl::StrJoin(names, ",");
}

unsigned UringLeversInEffect(unsigned requested, bool sqpoll) {
#ifdef UPCASE_HAVE_URING
  return requested & UringLeversSupported(sqpoll);
#else
  (void)requested;
  (void)sqpoll;
  return 0;
#endif
}

}  // namespace upcase
