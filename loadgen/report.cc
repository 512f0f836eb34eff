#include "loadgen/report.h"

#include <algorithm>
#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "loadgen/config.h"

namespace upcase::load {
namespace {

constexpr int kFormatVersion = 1;

struct Percentile {
  const char* key;    // JSON key
  const char* label;  // table column
  double value;
};
constexpr Percentile kSpectrum[] = {
    {"p50", "p50", 50}, {"p75", "p75", 75},      {"p90", "p90", 90},
    {"p99", "p99", 99}, {"p999", "p99.9", 99.9}, {"p9999", "p99.99", 99.99},
};

double Micros(std::int64_t ns) { return static_cast<double>(ns) / 1000.0; }

nlohmann::json LatencyJson(const Histogram& h) {
  nlohmann::json j = nlohmann::json::object();
  for (const Percentile& p : kSpectrum) j[p.key] = Micros(h.ValueAtPercentile(p.value));
  j["max"] = Micros(h.max());
  j["min"] = Micros(h.min());
  j["mean"] = h.mean() / 1000.0;
  j["count"] = h.total_count();
  return j;
}

nlohmann::json HistogramJson(const Histogram& h) {
  return {{"count", h.total_count()},
          {"min", h.min()},
          {"max", h.max()},
          {"sum", h.sum()},
          {"hdr", h.EncodeBase64()}};
}

// nlohmann's get<integer>() of a floating-point number is a plain cast, undefined behaviour when
// the value does not fit: the integers of a result file must be written as integers.
absl::Status CheckIntegers(const nlohmann::json& j, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    if (j.contains(key) && !j.at(key).is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(key, " is not an integer"));
    }
  }
  return absl::OkStatus();
}

// Bounds a result file's numbers must respect before they are cast or summed: past them merge's
// arithmetic would overflow (undefined behaviour for the signed and floating-point casts). Real
// runs are far inside them.
constexpr std::int64_t kMaxInstances = std::int64_t{1} << 20;
constexpr std::int64_t kMaxThreadsOrConnections = std::int64_t{1} << 40;
constexpr double kMaxFigure = 1e15;   // seconds (UNIX time included), rates, CPU seconds
constexpr double kMaxBytes = 1.8e19;  // below 2^64

// Every key present is a number in [lo, hi] (a JSON integer or floating-point number).
absl::Status CheckRange(const nlohmann::json& j, std::initializer_list<const char*> keys, double lo,
                        double hi) {
  for (const char* key : keys) {
    if (!j.contains(key)) continue;
    const nlohmann::json& v = j.at(key);
    if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s is not a number from %.17g to %.17g", key, lo, hi));
    }
  }
  return absl::OkStatus();
}

// Every key present is a non-negative integer (a count).
absl::Status CheckCounts(const nlohmann::json& j, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    if (j.contains(key) && !j.at(key).is_number_unsigned()) {
      return absl::InvalidArgumentError(absl::StrCat(key, " is not a non-negative integer"));
    }
  }
  return absl::OkStatus();
}

// Table() prints these keys of `config`; a result file that gives one a different type is
// rejected when read, instead of throwing (and aborting merge) when printed.
absl::Status CheckConfigTypes(const nlohmann::json& c) {
  if (!c.is_object()) return absl::InvalidArgumentError("config is not an object");
  struct Key {
    const char* name;
    bool (nlohmann::json::*type_ok)() const noexcept;
  };
  constexpr Key kPrinted[] = {
      {"proto", &nlohmann::json::is_string},
      {"arrival", &nlohmann::json::is_string},
      {"host", &nlohmann::json::is_string},
      {"size", &nlohmann::json::is_string},
      {"pipeline", &nlohmann::json::is_number_integer},
      {"port", &nlohmann::json::is_number_integer},
      {"reconnect", &nlohmann::json::is_boolean},
      {"verify", &nlohmann::json::is_boolean},
  };
  for (const Key& key : kPrinted) {
    if (c.contains(key.name) && !(c.at(key.name).*key.type_ok)()) {
      return absl::InvalidArgumentError(absl::StrCat("config.", key.name, " has the wrong type"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Histogram> HistogramFromJson(const nlohmann::json& j, const char* name) {
  if (absl::Status s = CheckIntegers(j, {"count", "min", "max", "sum"}); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".", s.message()));
  }
  absl::StatusOr<Histogram> h = Histogram::DecodeBase64(j.at("hdr").get<std::string>());
  if (!h.ok()) return absl::InvalidArgumentError(absl::StrCat(name, ": ", h.status().message()));
  if (h->total_count() != j.at("count").get<std::uint64_t>()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": count disagrees with the counts"));
  }
  if (absl::Status s =
          h->SetExactStats(j.at("min").get<std::int64_t>(), j.at("max").get<std::int64_t>(),
                           j.at("sum").get<std::uint64_t>());
      !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
  }
  return h;
}

// Every number of a result, before anything is cast or summed (see the bounds above).
absl::Status CheckNumbers(const nlohmann::json& j) {
  if (absl::Status s = CheckIntegers(j, {"format", "instances", "threads", "connections"});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange(j, {"instances"}, 1, kMaxInstances); !s.ok()) return s;
  if (absl::Status s = CheckRange(j, {"threads", "connections"}, 0, kMaxThreadsOrConnections);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          CheckCounts(j, {"requests", "scheduled", "sent", "unfinished", "drain_replies",
                          "unanswered", "unsent", "failed", "reconnects", "mismatches"});
      !s.ok()) {
    return s;
  }
  for (const char* age : {"unanswered_min_age_us", "failed_min_age_us"}) {
    if (j.contains(age) && !j.at(age).is_null()) {
      if (absl::Status s = CheckRange(j, {age}, 0, kMaxFigure); !s.ok()) return s;
    }
  }
  return CheckRange(
      j,
      {"start_unix_s", "duration_s", "warmup_s", "requested_rps", "throughput_rps", "bytes_per_s",
       "sent_rps", "client_cpu_s", "client_spin_s", "client_cpu_total_s"},
      0, kMaxFigure);
}

// The counters of a result (all but bytes_received, which the caller derives).
absl::StatusOr<Counters> CountersFromJson(const nlohmann::json& j) {
  Counters c;
  c.requests = j.at("requests").get<std::uint64_t>();
  c.scheduled = j.at("scheduled").get<std::uint64_t>();
  c.sent = j.at("sent").get<std::uint64_t>();
  c.unfinished = j.at("unfinished").get<std::uint64_t>();
  // Keys added after format 1 was released: absent from older files.
  c.drain_replies = j.value("drain_replies", std::uint64_t{0});
  c.unanswered = j.value("unanswered", c.unfinished);
  c.unsent = j.value("unsent", std::uint64_t{0});
  if (const auto age = j.find("unanswered_min_age_us"); age != j.end() && !age->is_null()) {
    c.unanswered_min_age_ns = static_cast<std::int64_t>(age->get<double>() * 1000.0);
  }
  c.failed = j.value("failed", std::uint64_t{0});
  if (const auto age = j.find("failed_min_age_us"); age != j.end() && !age->is_null()) {
    c.failed_min_age_ns = static_cast<std::int64_t>(age->get<double>() * 1000.0);
  }
  c.connects = j.at("reconnects").get<std::uint64_t>();
  c.mismatches = j.at("mismatches").get<std::uint64_t>();
  for (int i = 0; i < kErrorKinds; ++i) {
    const char* kind = ErrorKindName(static_cast<ErrorKind>(i));
    if (absl::Status s = CheckCounts(j.at("errors"), {kind}); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("errors.", s.message()));
    }
    c.errors[i] = j.at("errors").value(kind, std::uint64_t{0});
  }
  const nlohmann::json& udp = j.at("udp");
  if (absl::Status s =
          CheckCounts(udp, {"sent", "received", "lost", "reordered", "duplicated", "late"});
      !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("udp.", s.message()));
  }
  c.udp_sent = udp.at("sent").get<std::uint64_t>();
  c.udp_received = udp.at("received").get<std::uint64_t>();
  c.udp_lost = udp.at("lost").get<std::uint64_t>();
  c.udp_reordered = udp.at("reordered").get<std::uint64_t>();
  c.udp_duplicated = udp.at("duplicated").get<std::uint64_t>();
  c.udp_late = udp.at("late").get<std::uint64_t>();
  return c;
}

std::string FormatRate(double rps) { return absl::StrFormat("%.1f", rps); }

}  // namespace

int Report::ExitCode() const {
  if (counters.mismatches > 0) return kExitMismatch;
  if (counters.requests == 0) return kExitFailed;
  return kExitOk;
}

std::string Report::FailureReason() const {
  if (counters.mismatches > 0) {
    return absl::StrCat(counters.mismatches,
                        " replies differed from uppercase(request); first: ", first_mismatch);
  }
  if (counters.requests == 0) {
    return absl::StrCat("no reply arrived within the measurement window",
                        first_error.empty() ? "" : absl::StrCat(" (", first_error, ")"));
  }
  return "";
}

nlohmann::json Report::ToJson() const {
  nlohmann::json errors = nlohmann::json::object();
  for (int i = 0; i < kErrorKinds; ++i) {
    errors[ErrorKindName(static_cast<ErrorKind>(i))] = counters.errors[i];
  }
  const double per_request_us =
      counters.requests == 0 ? 0.0 : client_cpu_s * 1e6 / static_cast<double>(counters.requests);
  nlohmann::json j = {
      {"tool", "upcase-load"},
      {"format", kFormatVersion},
      {"config", config},
      {"instances", instances},
      {"sources", sources},
      {"start_unix_s", start_unix_s},
      {"duration_s", duration_s},
      {"stopped_early", stopped_early},
      {"warmup_s", warmup_s},
      {"threads", threads},
      {"connections", connections},
      {"loop", open_loop ? "open" : "closed"},
      {"requests", counters.requests},
      {"throughput_rps", throughput_rps},
      {"bytes_per_s", bytes_per_s},
      {"requested_rps", requested_rps},
      {"achieved_ratio", open_loop && requested_rps > 0
                             ? nlohmann::json(throughput_rps / requested_rps)
                             : nlohmann::json(nullptr)},
      {"kept_up", kept_up()},
      {"client_busy", client_busy()},
      {"scheduled", counters.scheduled},
      {"sent", counters.sent},
      {"sent_rps", sent_rps},
      {"unfinished", counters.unfinished},
      {"drain_replies", counters.drain_replies},
      {"unanswered", counters.unanswered},
      {"unsent", counters.unsent},
      {"unanswered_min_age_us", counters.unanswered_min_age_ns == INT64_MAX
                                    ? nlohmann::json(nullptr)
                                    : nlohmann::json(Micros(counters.unanswered_min_age_ns))},
      {"failed", counters.failed},
      {"failed_min_age_us", counters.failed_min_age_ns == INT64_MAX
                                ? nlohmann::json(nullptr)
                                : nlohmann::json(Micros(counters.failed_min_age_ns))},
      {"reconnects", counters.connects},
      {"latency_us", LatencyJson(latency)},
      {"latency_uncorrected_us", LatencyJson(latency_uncorrected)},
      {"send_lag_us", LatencyJson(send_lag)},
      {"errors", errors},
      {"errors_total", counters.errors_total()},
      {"first_error", first_error},
      {"mismatches", counters.mismatches},
      {"first_mismatch", first_mismatch},
      {"udp",
       {{"sent", counters.udp_sent},
        {"received", counters.udp_received},
        {"lost", counters.udp_lost},
        {"reordered", counters.udp_reordered},
        {"duplicated", counters.udp_duplicated},
        {"late", counters.udp_late}}},
      {"client_cpu_s", client_cpu_s},
      {"client_spin_s", client_spin_s},
      {"client_cpu_total_s", client_cpu_total_s},
      {"client_cpu_us_per_request", per_request_us},
      {"histograms",
       {{"unit", "ns"},
        {"lowest_discernible", latency.lowest_discernible()},
        {"highest_trackable", latency.highest_trackable()},
        {"significant_digits", latency.significant_digits()},
        {"latency", HistogramJson(latency)},
        {"latency_uncorrected", HistogramJson(latency_uncorrected)},
        {"send_lag", HistogramJson(send_lag)}}},
      {"env", env},
      {"host", host.present ? host.ToJson() : nlohmann::json(nullptr)},
  };
  if (host.present && host.hiccups_on) j["histograms"]["hiccups"] = HistogramJson(host.hiccups);
  return j;
}

absl::StatusOr<Report> Report::FromJson(const nlohmann::json& j) {
  try {
    if (j.value("tool", "") != "upcase-load") {
      return absl::InvalidArgumentError("not an upcase-load result (no \"tool\": \"upcase-load\")");
    }
    if (absl::Status s = CheckNumbers(j); !s.ok()) return s;
    if (j.at("format").get<int>() != kFormatVersion) {
      return absl::InvalidArgumentError(absl::StrCat("result format ", j.at("format").dump(),
                                                     " (this tool reads ", kFormatVersion, ")"));
    }
    Report r;
    r.config = j.at("config");
    if (r.config.is_null()) r.config = nlohmann::json::object();  // a Report built in code
    if (absl::Status s = CheckConfigTypes(r.config); !s.ok()) return s;
    r.instances = j.at("instances").get<int>();
    r.sources = j.at("sources").get<std::vector<std::string>>();
    r.start_unix_s = j.at("start_unix_s").get<double>();
    r.duration_s = j.at("duration_s").get<double>();
    r.stopped_early = j.value("stopped_early", false);
    r.warmup_s = j.at("warmup_s").get<double>();
    r.threads = j.at("threads").get<std::int64_t>();
    r.connections = j.at("connections").get<std::int64_t>();
    r.open_loop = j.at("loop").get<std::string>() == "open";
    r.requested_rps = j.at("requested_rps").get<double>();
    r.throughput_rps = j.at("throughput_rps").get<double>();
    r.bytes_per_s = j.at("bytes_per_s").get<double>();
    r.sent_rps = j.at("sent_rps").get<double>();
    absl::StatusOr<Counters> counters = CountersFromJson(j);
    if (!counters.ok()) return counters.status();
    r.counters = *counters;
    // The bucketed counts would round the bytes; the measured figure is the rate times the window.
    const double bytes = r.bytes_per_s * r.duration_s + 0.5;
    if (!(bytes < kMaxBytes)) {
      return absl::InvalidArgumentError(
          "bytes_per_s * duration_s is more bytes than can be counted");
    }
    r.counters.bytes_received = static_cast<std::uint64_t>(bytes);
    r.client_cpu_s = j.at("client_cpu_s").get<double>();
    r.client_spin_s = j.value("client_spin_s", 0.0);
    r.client_cpu_total_s = j.at("client_cpu_total_s").get<double>();
    r.first_error = j.value("first_error", "");
    r.first_mismatch = j.value("first_mismatch", "");
    const nlohmann::json& hs = j.at("histograms");
    if (hs.at("unit").get<std::string>() != "ns") {
      return absl::InvalidArgumentError("histograms: unit is not ns");
    }
    for (auto [name, target] : {std::pair{"latency", &r.latency},
                                std::pair{"latency_uncorrected", &r.latency_uncorrected},
                                std::pair{"send_lag", &r.send_lag}}) {
      absl::StatusOr<Histogram> h =
          HistogramFromJson(hs.at(name), absl::StrCat("histograms.", name).c_str());
      if (!h.ok()) return h.status();
      *target = *std::move(h);
    }
    // Keys added after format 1 was released: absent from older files.
    r.env = j.value("env", nlohmann::json(nullptr));
    if (j.contains("host") && !j.at("host").is_null()) {
      absl::StatusOr<HostFigures> host = HostFigures::FromJson(j.at("host"));
      if (!host.ok()) return host.status();
      r.host = *std::move(host);
      if (hs.contains("hiccups")) {
        absl::StatusOr<Histogram> h = HistogramFromJson(hs.at("hiccups"), "histograms.hiccups");
        if (!h.ok()) return h.status();
        r.host.hiccups = *std::move(h);
      }
    }
    return r;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("malformed result: ", e.what()));
  }
}

absl::Status Report::Merge(const Report& o) {
  // Checked first, so that a failed merge changes nothing. FromJson's bounds keep instances,
  // threads and connections far from overflowing, but not counters summed over many files.
  if (instances > kMaxInstances - o.instances) {
    return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxInstances, " runs"));
  }
  if (threads > INT64_MAX - o.threads || connections > INT64_MAX - o.connections) {
    return absl::InvalidArgumentError("threads or connections would overflow");
  }
  if (counters.AddWouldOverflow(o.counters)) {
    return absl::InvalidArgumentError("a counter would overflow");
  }
  for (auto [mine, theirs] :
       {std::pair{&latency, &o.latency}, std::pair{&latency_uncorrected, &o.latency_uncorrected},
        std::pair{&send_lag, &o.send_lag}, std::pair{&host.hiccups, &o.host.hiccups}}) {
    // Runs recorded with other layouts (lowest or highest trackable value, significant digits)
    // would be re-bucketed at a coarser resolution and clamped again: refuse instead.
    if (!mine->SameLayout(*theirs)) {
      return absl::InvalidArgumentError(
          "the runs' histograms have different layouts (lowest/highest trackable value or "
          "significant digits): merge only runs of the same upcase-load settings");
    }
    if (mine->total_count() > UINT64_MAX - theirs->total_count() ||
        mine->sum() > UINT64_MAX - theirs->sum()) {
      return absl::InvalidArgumentError("a histogram's count or sum would overflow");
    }
  }
  instances += o.instances;
  sources.insert(sources.end(), o.sources.begin(), o.sources.end());
  start_unix_s = std::min(start_unix_s, o.start_unix_s);
  duration_s = std::max(duration_s, o.duration_s);
  stopped_early = stopped_early || o.stopped_early;
  warmup_s = std::max(warmup_s, o.warmup_s);
  threads += o.threads;
  connections += o.connections;
  open_loop = open_loop || o.open_loop;
  requested_rps += o.requested_rps;
  throughput_rps += o.throughput_rps;
  bytes_per_s += o.bytes_per_s;
  sent_rps += o.sent_rps;
  counters.Add(o.counters);
  latency.Add(o.latency);
  latency_uncorrected.Add(o.latency_uncorrected);
  send_lag.Add(o.send_lag);
  client_cpu_s += o.client_cpu_s;
  client_spin_s += o.client_spin_s;
  client_cpu_total_s += o.client_cpu_total_s;
  if (first_error.empty()) first_error = o.first_error;
  if (first_mismatch.empty()) first_mismatch = o.first_mismatch;
  host.Merge(o.host);
  if (env.is_null()) env = o.env;  // the first run's host; a merge of several hosts keeps one
  return absl::OkStatus();
}

namespace {

// The table's first lines: what ran, the window, the rate.
void AppendRunLines(const Report& r, std::string* out) {
  const nlohmann::json& c = r.config;
  const std::string proto = c.value("proto", "?");
  std::string load;
  if (r.open_loop) {
    const std::int64_t pipeline = c.value("pipeline", std::int64_t{1});
    load = absl::StrCat("open loop, ", c.value("arrival", "uniform"), " arrivals",
                        pipeline >= kUnlimitedPipeline
                            ? ""
                            : absl::StrCat(", at most ", pipeline, " in flight per connection"));
  } else {
    load = absl::StrCat("closed loop, pipeline ", c.value("pipeline", std::int64_t{1}));
  }
  if (c.value("reconnect", false)) load += ", a connection per request";
  absl::StrAppendFormat(
      out, "upcase-load  %s %s:%d  %d thread%s  %d connection%s  %s-byte requests  %s\n", proto,
      c.value("host", "?"), c.value("port", 0), r.threads, r.threads == 1 ? "" : "s", r.connections,
      r.connections == 1 ? "" : "s", c.value("size", "?"), load);
  if (r.instances > 1) {
    absl::StrAppendFormat(out, "merged       %d runs: %s\n", r.instances,
                          absl::StrJoin(r.sources, " "));
  }
  absl::StrAppendFormat(out, "window       %.2f s after %.2f s of warmup%s\n", r.duration_s,
                        r.warmup_s, r.stopped_early ? " (stopped early by a signal)" : "");
  absl::StrAppendFormat(out, "requests     %d  (%s req/s, %.2f MB/s of replies)\n",
                        r.counters.requests, FormatRate(r.throughput_rps), r.bytes_per_s / 1e6);
  if (r.open_loop) {
    const double ratio = r.requested_rps > 0 ? r.throughput_rps / r.requested_rps : 0;
    absl::StrAppendFormat(out, "rate         requested %s req/s, achieved %s req/s (%.2f %%)\n",
                          FormatRate(r.requested_rps), FormatRate(r.throughput_rps), 100 * ratio);
    if (!r.kept_up() && r.client_busy() < kBusyRatio) {
      absl::StrAppendFormat(out,
                            "             THE SERVER DID NOT KEEP UP: it answered %.1f %% of the "
                            "requested rate; the corrected latency includes the queueing\n",
                            100 * ratio);
    } else if (!r.kept_up()) {  // a busy load generator may be what fell short: not the server
                                // alone
      absl::StrAppendFormat(
          out,
          "             THE RATE WAS NOT REACHED: %.1f %% of it was answered, and "
          "upcase-load itself was busy (client cpu below)\n",
          100 * ratio);
    }
  }
}

// The latency spectrum: corrected, uncorrected, and in open loop the send lag.
void AppendLatencyRows(const Report& r, std::string* out) {
  // Wider columns when some figures carry a ">=".
  const int width = r.counters.lower_bounds_from() == INT64_MAX ? 10 : 12;
  absl::StrAppendFormat(out, "%-14s", "latency (us)");
  for (const Percentile& p : kSpectrum) absl::StrAppendFormat(out, "%*s", width, p.label);
  absl::StrAppendFormat(out, "%*s%*s\n", width, "max", width, "mean");
  // Figures at or above `lower_bounds_from` may be the age of an unanswered or failed request:
  // marked ">=".
  auto row = [&](const char* name, const Histogram& h, std::int64_t lower_bounds_from) {
    auto cell = [&](std::int64_t ns) {
      return ns >= lower_bounds_from ? absl::StrFormat(">=%.1f", Micros(ns))
                                     : absl::StrFormat("%.1f", Micros(ns));
    };
    absl::StrAppendFormat(out, "  %-12s", name);
    for (const Percentile& p : kSpectrum) {
      absl::StrAppendFormat(out, "%*s", width, cell(h.ValueAtPercentile(p.value)));
    }
    const std::string mean =
        absl::StrFormat("%s%.1f", lower_bounds_from == INT64_MAX ? "" : ">=", h.mean() / 1000.0);
    absl::StrAppendFormat(out, "%*s%*s\n", width, cell(h.max()), width, mean);
  };
  row("corrected", r.latency, r.counters.lower_bounds_from());
  row("uncorrected", r.latency_uncorrected, INT64_MAX);
  // Open loop: how much of the corrected latency the client itself added by sending late.
  if (r.open_loop) row("send lag", r.send_lag, INT64_MAX);
  // The host's stalls, measured beside the load (loadgen/host.h).
  if (r.host.present && r.host.hiccups_on) row("hiccups", r.host.hiccups, INT64_MAX);
}

// The host's CPUs over the window, and the verdict.
void AppendHostLines(const Report& r, std::string* out) {
  if (!r.host.present) return;
  std::vector<std::string> cpus;
  for (const HostCpu& c : r.host.cpus) {
    cpus.push_back(absl::StrFormat("cpu%d (%s) steal %.1f %% irq %.1f %% foreign %.1f %%%s",
                                   c.noise.cpu, c.role, c.noise.steal_pct, c.noise.irq_pct,
                                   c.noise.foreign_pct,
                                   c.noise.foreign_exact ? "" : " (approximate: not judged)"));
  }
  absl::StrAppendFormat(out, "host         %s; involuntary switches %d\n",
                        cpus.empty() ? "no CPU figures" : absl::StrJoin(cpus, ", "),
                        r.host.involuntary_switches);
  if (const std::string verdict = r.host.VerdictLine(); !verdict.empty()) {
    absl::StrAppend(out, verdict, "\n");
  }
}

// Errors, mismatches, UDP's fate of datagrams, and the drain's outcome.
void AppendOutcomeLines(const Report& r, std::string* out) {
  const nlohmann::json& c = r.config;
  const std::string proto = c.value("proto", "?");
  if (r.counters.errors_total() == 0) {
    *out += "errors       none\n";
  } else {
    std::vector<std::string> parts;
    for (int i = 0; i < kErrorKinds; ++i) {
      if (r.counters.errors[i] > 0) {
        parts.push_back(
            absl::StrCat(ErrorKindName(static_cast<ErrorKind>(i)), " ", r.counters.errors[i]));
      }
    }
    absl::StrAppendFormat(out, "errors       %s (first: %s)\n", absl::StrJoin(parts, ", "),
                          r.first_error);
  }
  if (r.counters.mismatches == 0) {
    absl::StrAppendFormat(out, "mismatches   0%s\n",
                          c.value("verify", true) ? "" : " (not verified: --no-verify)");
  } else {
    absl::StrAppendFormat(out, "mismatches   %d  VERIFICATION FAILED; first: %s\n",
                          r.counters.mismatches, r.first_mismatch);
  }
  if (proto == "udp") {
    const double lost_pct =
        r.counters.udp_sent == 0 ? 0.0 : 100.0 * r.counters.udp_lost / r.counters.udp_sent;
    absl::StrAppendFormat(out,
                          "udp          sent %d  received %d  lost %d (%.2f %%)  reordered %d  "
                          "duplicated %d  late %d\n",
                          r.counters.udp_sent, r.counters.udp_received, r.counters.udp_lost,
                          lost_pct, r.counters.udp_reordered, r.counters.udp_duplicated,
                          r.counters.udp_late);
  }
  const double drain_s = c.value("drain_s", 0.0);
  if (r.counters.drain_replies > 0 && r.open_loop) {
    absl::StrAppendFormat(out,
                          "drain        %d replies came after the window: in the latency, not in "
                          "the rate\n",
                          r.counters.drain_replies);
  }
  if (r.counters.unanswered > 0) {
    absl::StrAppendFormat(out,
                          "unanswered   %d requests of the window had no reply %.2f s after it",
                          r.counters.unanswered, drain_s);
    if (r.counters.unsent > 0) absl::StrAppendFormat(out, " (%d never sent)", r.counters.unsent);
    if (r.counters.unanswered_min_age_ns != INT64_MAX) {
      absl::StrAppendFormat(out,
                            ";\n             their age then is in the corrected latency: figures "
                            "marked >= are lower bounds");
    }
    *out += "\n";
  }
  if (r.counters.failed > 0) {
    absl::StrAppendFormat(out,
                          "failed       %d requests of the window were lost with their connection "
                          "(sent, never answered)",
                          r.counters.failed);
    if (r.counters.failed_min_age_ns != INT64_MAX) {
      absl::StrAppendFormat(out,
                            ";\n             their age then is in the corrected latency: figures "
                            "marked >= are lower bounds");
    }
    *out += "\n";
  }
}

// What the load generator itself cost.
void AppendClientCpuLines(const Report& r, std::string* out) {
  const double per_request = r.counters.requests == 0
                                 ? 0.0
                                 : r.client_cpu_s * 1e6 / static_cast<double>(r.counters.requests);
  absl::StrAppendFormat(
      out,
      "client cpu   %.3f s in the window (%.0f %% busy), %.2f us per request (process: %.3f s)\n",
      r.client_cpu_s, 100 * r.client_busy(), per_request, r.client_cpu_total_s);
  if (r.client_spin_s > 0) {
    absl::StrAppendFormat(out,
                          "             of which %.3f s spinning for send times (not counted as "
                          "busy)\n",
                          r.client_spin_s);
  }
  if (r.client_busy() >= kBusyRatio) {
    absl::StrAppendFormat(
        out,
        "             UPCASE-LOAD WAS %.0f %% BUSY: latency includes time replies waited for "
        "it,\n"
        "             and the rate may be its limit rather than the server's; give "
        "it more --threads and CPUs\n",
        100 * r.client_busy());
  }
}

}  // namespace

std::string Report::Table() const {
  std::string out;
  AppendRunLines(*this, &out);
  AppendLatencyRows(*this, &out);
  AppendOutcomeLines(*this, &out);
  AppendClientCpuLines(*this, &out);
  AppendHostLines(*this, &out);
  return out;
}

}  // namespace upcase::load
