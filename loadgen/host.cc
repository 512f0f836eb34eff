#include "loadgen/host.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace upcase::load {
namespace {

double Micros(std::int64_t ns) { return static_cast<double>(ns) / 1000.0; }

std::string Millis(std::int64_t ns) { return absl::StrFormat("%.1f ms", ns / 1e6); }

}  // namespace

nlohmann::json HiccupSummaryJson(const Histogram& h) {
  return {{"p50", Micros(h.ValueAtPercentile(50))},
          {"p99", Micros(h.ValueAtPercentile(99))},
          {"p999", Micros(h.ValueAtPercentile(99.9))},
          {"max", Micros(h.max())},
          {"count", h.total_count()}};
}

std::vector<std::pair<int, std::string>> WatchedCpus(const std::vector<int>& load_cpus,
                                                     const std::vector<int>& server_cpus) {
  std::map<int, std::string> roles;
  for (int c : load_cpus) roles[c] = "load";
  for (int c : server_cpus) roles[c] = roles.count(c) != 0 ? "load+server" : "server";
  return {roles.begin(), roles.end()};
}

std::vector<std::string> HostFigures::NoiseReasons() const {
  std::vector<std::string> reasons;
  for (const HostCpu& c : cpus) {
    if (c.noise.steal_pct > kNoisyStealPct) {
      reasons.push_back(absl::StrFormat("the host stole %.1f %% of CPU %d (%s)", c.noise.steal_pct,
                                        c.noise.cpu, c.role));
    }
    if (c.noise.foreign_exact && c.noise.foreign_pct > kNoisyForeignPct) {
      reasons.push_back(absl::StrFormat("other processes took %.1f %% of CPU %d (%s)",
                                        c.noise.foreign_pct, c.noise.cpu, c.role));
    }
  }
  if (hiccups.total_count() > 0 && hiccups.max() > kNoisyHiccupNs) {
    reasons.push_back(absl::StrCat("the worst hiccup was ", Millis(hiccups.max())));
  }
  return reasons;
}

std::string HostFigures::VerdictLine() const {
  std::vector<std::string> reasons = NoiseReasons();
  if (reasons.empty()) return "";
  std::string line = absl::StrCat("HOST NOISE: ", absl::StrJoin(reasons, ", "));
  if (hiccups.total_count() > 0) {
    if (reasons.back().find("hiccup") == std::string::npos) {
      absl::StrAppend(&line, "; the worst hiccup was ", Millis(hiccups.max()));
    }
    absl::StrAppendFormat(&line, "; latency above ~%s may be the host's, not the server's",
                          Millis(hiccups.max()));
  } else {
    absl::StrAppend(&line, "; the latency tail may be the host's, not the server's");
  }
  return line;
}

nlohmann::json HostFigures::ToJson() const {
  nlohmann::json cpu_list = nlohmann::json::array();
  for (const HostCpu& c : cpus) {
    cpu_list.push_back({{"cpu", c.noise.cpu},
                        {"role", c.role},
                        {"steal_pct", c.noise.steal_pct},
                        {"irq_pct", c.noise.irq_pct},
                        {"foreign_pct", c.noise.foreign_pct},
                        {"foreign_exact", c.noise.foreign_exact},
                        {"own_pct", c.noise.own_pct}});
  }
  std::vector<std::string> reasons = NoiseReasons();
  return {{"hiccups", hiccups_on},
          {"hiccup_us", hiccups_on ? HiccupSummaryJson(hiccups) : nlohmann::json(nullptr)},
          {"cpus", cpu_list},
          {"involuntary_switches", involuntary_switches},
          {"intervals", intervals},
          {"noisy", !reasons.empty()},
          {"noise", reasons},
          {"thresholds",
           {{"steal_pct", kNoisyStealPct},
            {"foreign_pct", kNoisyForeignPct},
            {"hiccup_us", Micros(kNoisyHiccupNs)}}}};
}

absl::StatusOr<HostFigures> HostFigures::FromJson(const nlohmann::json& j) {
  // Checked before any get<>(): a floating-point value cast to an integer that cannot hold it is
  // undefined behaviour, and result files may be crafted.
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("host.", what, " has the wrong type"));
  };
  if (!j.is_object()) return absl::InvalidArgumentError("host is not an object");
  HostFigures h;
  h.present = true;
  if (j.contains("hiccups")) {
    if (!j.at("hiccups").is_boolean()) return bad("hiccups");
    h.hiccups_on = j.at("hiccups").get<bool>();
  }
  if (j.contains("involuntary_switches")) {
    if (!j.at("involuntary_switches").is_number_unsigned()) return bad("involuntary_switches");
    h.involuntary_switches = j.at("involuntary_switches").get<std::uint64_t>();
  }
  if (j.contains("intervals") && j.at("intervals").is_array()) h.intervals = j.at("intervals");
  if (j.contains("cpus")) {
    if (!j.at("cpus").is_array()) return bad("cpus");
    for (const nlohmann::json& c : j.at("cpus")) {
      if (!c.is_object() || !c.contains("cpu") || !c.at("cpu").is_number_integer() ||
          c.at("cpu").get<std::int64_t>() < 0 || c.at("cpu").get<std::int64_t>() > 1 << 20) {
        return bad("cpus[].cpu");
      }
      HostCpu cpu;
      cpu.noise.cpu = static_cast<int>(c.at("cpu").get<std::int64_t>());
      if (c.contains("role")) {
        if (!c.at("role").is_string()) return bad("cpus[].role");
        cpu.role = c.at("role").get<std::string>();
      }
      for (auto [key, target] :
           {std::pair{"steal_pct", &cpu.noise.steal_pct}, std::pair{"irq_pct", &cpu.noise.irq_pct},
            std::pair{"foreign_pct", &cpu.noise.foreign_pct},
            std::pair{"own_pct", &cpu.noise.own_pct}}) {
        if (!c.contains(key)) continue;
        if (!c.at(key).is_number()) return bad(absl::StrCat("cpus[].", key));
        *target = c.at(key).get<double>();
      }
      if (c.contains("foreign_exact")) {  // absent in results older than the field: exact
        if (!c.at("foreign_exact").is_boolean()) return bad("cpus[].foreign_exact");
        cpu.noise.foreign_exact = c.at("foreign_exact").get<bool>();
      }
      h.cpus.push_back(cpu);
    }
  }
  return h;
}

void HostFigures::Merge(const HostFigures& o) {
  if (!o.present) return;
  if (!present) {
    *this = o;
    return;
  }
  hiccups_on = hiccups_on || o.hiccups_on;
  hiccups.Add(o.hiccups);
  // Runs on other hosts: their CPUs are other CPUs, listed as they were.
  cpus.insert(cpus.end(), o.cpus.begin(), o.cpus.end());
  involuntary_switches += o.involuntary_switches;
  intervals = nlohmann::json::array();  // per-interval figures do not line up across hosts
}

}  // namespace upcase::load
