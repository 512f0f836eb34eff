// libFuzzer target for what `upcase-load merge` reads from files it is given: the --json result
// document (loadgen/report.cc, Report::FromJson) and the HdrHistogram V2 histograms inside it
// (loadgen/histogram.cc: base64, zlib, ZigZag LEB128 counts), then what merge does with them
// (Merge, the summary table, the JSON written back).
// Input: bytes tried three ways: as the JSON document, as a base64 histogram, and as a raw V2
// (compressed or not) histogram. Invariants checked beyond "no crash, no UB, no uncaught
// exception": a rejected input comes with a one-line error; an accepted histogram encodes and
// decodes back to itself; an accepted document survives ToJson -> FromJson.
//
//   tools/fuzz 60 merge   # build with clang and fuzz for 60 s (corpus: tests/fuzz/corpus/merge)
#include <cstdint>
#include <cstdlib>
#include <string>

#include "loadgen/histogram.h"
#include "loadgen/report.h"
#include "nlohmann/json.hpp"

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

void CheckError(const absl::Status& status) {
  Check(!status.ok());
  Check(!status.message().empty());
}

// A decoded histogram must round-trip through our own encoder unchanged.
void CheckHistogram(const upcase::load::Histogram& h) {
  absl::StatusOr<upcase::load::Histogram> again =
      upcase::load::Histogram::DecodeBase64(h.EncodeBase64());
  Check(again.ok());
  Check(again->total_count() == h.total_count());
  Check(again->SameLayout(h));
  if (h.total_count() > 0) {
    Check(h.ValueAtPercentile(50) <= h.ValueAtPercentile(99.9));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);

  for (auto decode :
       {&upcase::load::Histogram::DecodeBase64, &upcase::load::Histogram::DecodeCompressed}) {
    absl::StatusOr<upcase::load::Histogram> h = decode(input);
    if (h.ok()) {
      CheckHistogram(*h);
    } else {
      CheckError(h.status());
    }
  }

  const nlohmann::json j = nlohmann::json::parse(input, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  absl::StatusOr<upcase::load::Report> report = upcase::load::Report::FromJson(j);
  if (!report.ok()) {
    CheckError(report.status());
    return 0;
  }
  CheckHistogram(report->latency);
  absl::StatusOr<upcase::load::Report> back = upcase::load::Report::FromJson(report->ToJson());
  Check(back.ok());
  Check(back->latency == report->latency);
  // As `upcase-load merge a.json a.json` would: merge, then print the table.
  upcase::load::Report merged = *report;
  if (absl::Status s = merged.Merge(*report); !s.ok()) {
    CheckError(s);
    return 0;
  }
  Check(merged.latency.total_count() == 2 * report->latency.total_count());
  Check(!merged.Table().empty());
  return 0;
}
