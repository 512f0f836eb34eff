#include "loadgen/hdr_log.h"

#include <cerrno>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/net.h"

namespace upcase::load {
namespace {
// HistogramLogWriter divides the interval maximum by this before printing it (ns -> ms).
constexpr double kMaxValueUnitRatio = 1e6;
}  // namespace

absl::StatusOr<HdrLogWriter> HdrLogWriter::Open(const std::string& path, double start_unix_s,
                                                const std::string& comment) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return ErrnoError(absl::StrCat("open ", path), errno);
  HdrLogWriter w(path, f);
  // Java's Date.toString(), which HistogramLogWriter prints after the epoch seconds.
  const std::time_t t = static_cast<std::time_t>(start_unix_s);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char date[64];
  std::strftime(date, sizeof date, "%a %b %d %H:%M:%S UTC %Y", &tm);
  std::string header = "#[Histogram log format version 1.3]\n";
  if (!comment.empty()) absl::StrAppend(&header, "#", comment, "\n");
  absl::StrAppendFormat(&header, "#[StartTime: %.3f (seconds since epoch), %s]\n", start_unix_s,
                        date);
  absl::StrAppendFormat(&header, "#[BaseTime: %.3f (seconds since epoch)]\n", start_unix_s);
  header +=
      "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";
  if (std::fputs(header.c_str(), f) < 0) return ErrnoError(absl::StrCat("write ", path), errno);
  return w;
}

absl::Status HdrLogWriter::Write(double start_s, double length_s, const Histogram& histogram,
                                 const std::string& tag) {
  std::string line;
  if (!tag.empty()) absl::StrAppend(&line, "Tag=", tag, ",");
  absl::StrAppendFormat(&line, "%.3f,%.3f,%.3f,%s\n", start_s, length_s,
                        static_cast<double>(histogram.max()) / kMaxValueUnitRatio,
                        histogram.EncodeBase64());
  if (std::fputs(line.c_str(), file_.get()) < 0) {
    return ErrnoError(absl::StrCat("write ", path_), errno);
  }
  return absl::OkStatus();
}

absl::Status HdrLogWriter::Close() {
  std::FILE* f = file_.release();
  if (f != nullptr && std::fclose(f) != 0) return ErrnoError(absl::StrCat("close ", path_), errno);
  return absl::OkStatus();
}

}  // namespace upcase::load
