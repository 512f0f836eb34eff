// HdrHistogram interval logs (format version 1.3), as HistogramLogWriter writes them, so that
// HistogramLogReader, HistogramLogProcessor and the HdrHistogram plotters read --hdr-log files:
//
//   #[Histogram log format version 1.3]
//   #[StartTime: 1700000000.000 (seconds since epoch), Tue Nov 14 22:13:20 UTC 2023]
//   #[BaseTime: 1700000000.000 (seconds since epoch)]
//   "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//   0.000,1.000,0.131,HISTFAAAA...
//   Tag=uncorrected,0.000,1.000,0.129,HISTFAAAA...
//
// Timestamps are seconds after BaseTime (the measurement start); Interval_Max is in milliseconds
// because the values are nanoseconds and HdrHistogram's convention divides by 10^6. Untagged
// lines hold the latency from the intended send time (coordinated omission corrected), lines
// tagged "uncorrected" the latency from the actual send.
#ifndef UPCASE_LOADGEN_HDR_LOG_H_
#define UPCASE_LOADGEN_HDR_LOG_H_

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "loadgen/histogram.h"

namespace upcase::load {

class HdrLogWriter {
 public:
  // Creates (truncates) `path` and writes the header; `start_unix_s` becomes StartTime/BaseTime.
  static absl::StatusOr<HdrLogWriter> Open(const std::string& path, double start_unix_s,
                                           const std::string& comment);

  // One interval: start and length in seconds after the base time. An empty tag: no Tag= field.
  absl::Status Write(double start_s, double length_s, const Histogram& histogram,
                     const std::string& tag = "");
  absl::Status Close();

 private:
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  HdrLogWriter(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}

  std::string path_;
  std::unique_ptr<std::FILE, Closer> file_;
};

}  // namespace upcase::load

#endif  // UPCASE_LOADGEN_HDR_LOG_H_
