// Quoting user input inside error messages: errors must stay one line, whatever bytes the user
// (or a script) passed, so control characters and non-UTF-8 bytes are C-escaped.
#ifndef UPCASE_COMMON_QUOTE_H_
#define UPCASE_COMMON_QUOTE_H_

#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace upcase {

// 'text' with C escapes: Quoted("a\nb") == "'a\\nb'".
inline std::string Quoted(absl::string_view text) {
  return absl::StrCat("'", absl::CHexEscape(text), "'");
}

}  // namespace upcase

#endif  // UPCASE_COMMON_QUOTE_H_
