#include "common/env.h"

#include <sys/utsname.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/procfs.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#ifdef UPCASE_HAVE_URING
#include <liburing.h>
#endif

namespace upcase {
namespace {

using nlohmann::json;

// io_uring opcodes by number, as the kernel's uapi io_uring.h lists them (up to 6.16); newer ones
// print as opN.
constexpr const char* kUringOps[] = {
    "nop",
    "readv",
    "writev",
    "fsync",
    "read_fixed",
    "write_fixed",
    "poll_add",
    "poll_remove",
    "sync_file_range",
    "sendmsg",
    "recvmsg",
    "timeout",
    "timeout_remove",
    "accept",
    "async_cancel",
    "link_timeout",
    "connect",
    "fallocate",
    "openat",
    "close",
    "files_update",
    "statx",
    "read",
    "write",
    "fadvise",
    "madvise",
    "send",
    "recv",
    "openat2",
    "epoll_ctl",
    "splice",
    "provide_buffers",
    "remove_buffers",
    "tee",
    "shutdown",
    "renameat",
    "unlinkat",
    "mkdirat",
    "symlinkat",
    "linkat",
    "msg_ring",
    "fsetxattr",
    "setxattr",
    "fgetxattr",
    "getxattr",
    "socket",
    "uring_cmd",
    "send_zc",
    "sendmsg_zc",
    "read_multishot",
    "waitid",
    "futex_wait",
    "futex_wake",
    "futex_waitv",
    "fixed_fd_install",
    "ftruncate",
    "bind",
    "listen",
    "recv_zc",
    "epoll_wait",
    "readv_fixed",
    "writev_fixed",
    "pipe",
};

// DMI vendor strings of hypervisors, and the name reported for them.
constexpr std::pair<const char*, const char*> kDmiHypervisors[] = {
    {"QEMU", "kvm"},           {"KVM", "kvm"},    {"VMware", "vmware"},
    {"innotek", "virtualbox"}, {"Xen", "xen"},    {"Microsoft Corporation", "hyperv"},
    {"Amazon EC2", "kvm"},     {"Google", "kvm"}, {"Parallels", "parallels"},
};
// CPUID leaf 0x40000000 signatures.
constexpr std::pair<const char*, const char*> kCpuidHypervisors[] = {
    {"KVMKVMKVM", "kvm"},     {"Microsoft Hv", "hyperv"},     {"VMwareVMware", "vmware"},
    {"XenVMMXenVMM", "xen"},  {"TCGTCGTCGTCG", "qemu-tcg"},   {" lrpepyh  vr", "parallels"},
    {"ACRNACRNACRN", "acrn"}, {"VBoxVBoxVBox", "virtualbox"},
};

// A one-line file, trimmed; nullopt when unreadable.
std::optional<std::string> ReadLine(const std::string& root, const std::string& path) {
  std::optional<std::string> text = ReadProcFile(root, path);
  if (!text.has_value()) return std::nullopt;
  return std::string(absl::StripAsciiWhitespace(*text));
}

json StringOrNull(const std::optional<std::string>& s) {
  return s.has_value() ? json(*s) : json(nullptr);
}

json IntOrNull(const std::string& root, const std::string& path) {
  std::optional<std::string> s = ReadLine(root, path);
  std::int64_t n = 0;
  if (!s.has_value() || !absl::SimpleAtoi(*s, &n)) return nullptr;
  return n;
}

// "always [madvise] never" -> "madvise".
json BracketedChoice(const std::string& root, const std::string& path) {
  std::optional<std::string> s = ReadLine(root, path);
  if (!s.has_value()) return nullptr;
  const std::size_t open = s->find('[');
  const std::size_t close = s->find(']', open);
  if (open == std::string::npos || close == std::string::npos) return *s;
  return s->substr(open + 1, close - open - 1);
}

// The value of "key: value" lines of /proc/cpuinfo, first occurrence.
std::optional<std::string> CpuinfoField(const std::string& cpuinfo, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(cpuinfo, '\n')) {
    std::vector<absl::string_view> kv = absl::StrSplit(line, absl::MaxSplits(':', 1));
    if (kv.size() == 2 && absl::StripAsciiWhitespace(kv[0]) == key) {
      return std::string(absl::StripAsciiWhitespace(kv[1]));
    }
  }
  return std::nullopt;
}

std::optional<std::string> CpuidHypervisor() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __cpuid(1, eax, ebx, ecx, edx);
  if ((ecx & (1u << 31)) == 0) return std::nullopt;  // the "hypervisor present" bit
  __cpuid(0x40000000, eax, ebx, ecx, edx);
  char sig[13] = {};
  std::memcpy(sig, &ebx, 4);
  std::memcpy(sig + 4, &ecx, 4);
  std::memcpy(sig + 8, &edx, 4);
  for (const auto& [signature, name] : kCpuidHypervisors) {
    if (std::string(sig) == signature) return std::string(name);
  }
#endif
  return std::nullopt;
}

// "kvm", "xen", ..., "hypervisor" (present, kind unknown), "none", or null (cannot tell).
json Virtualization(const EnvOptions& o, const std::optional<std::string>& cpuinfo) {
  if (std::optional<std::string> type = ReadLine(o.root, "/sys/hypervisor/type");
      type.has_value() && !type->empty()) {
    return *type;
  }
  for (const char* file : {"/sys/class/dmi/id/sys_vendor", "/sys/class/dmi/id/product_name"}) {
    if (std::optional<std::string> vendor = ReadLine(o.root, file)) {
      for (const auto& [prefix, name] : kDmiHypervisors) {
        if (absl::StartsWith(*vendor, prefix)) return name;
      }
    }
  }
  if (o.probe_live) {
    if (std::optional<std::string> name = CpuidHypervisor()) return *name;
  }
  if (!cpuinfo.has_value()) return nullptr;
  std::optional<std::string> flags = CpuinfoField(*cpuinfo, "flags");
  if (!flags.has_value()) return nullptr;  // not x86: no flag to tell by
  for (absl::string_view f : absl::StrSplit(*flags, ' ')) {
    if (f == "hypervisor") return "hypervisor";
  }
  return "none";
}

// The distinct values of a per-CPU cpufreq file, joined by ",": "performance" or
// "performance,powersave"; null when no CPU has it.
json PerCpuSetting(const std::string& root, const std::string& file) {
  std::set<std::string> values;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator(root + "/sys/devices/system/cpu", ec)) {
    const std::string name = entry.path().filename().string();
    int n = 0;
    if (!absl::StartsWith(name, "cpu") || !absl::SimpleAtoi(name.substr(3), &n)) continue;
    if (std::optional<std::string> v =
            ReadLine(root, absl::StrCat("/sys/devices/system/cpu/", name, "/cpufreq/", file))) {
      values.insert(*v);
    }
  }
  if (values.empty()) return nullptr;
  return absl::StrJoin(values, ",");
}

// Turbo/boost enabled: intel_pstate's no_turbo, else cpufreq's boost; null when neither exists.
json Boost(const std::string& root) {
  std::optional<std::string> no_turbo =
      ReadLine(root, "/sys/devices/system/cpu/intel_pstate/no_turbo");
  if (no_turbo.has_value()) return *no_turbo == "0";
  std::optional<std::string> boost = ReadLine(root, "/sys/devices/system/cpu/cpufreq/boost");
  if (boost.has_value()) return *boost == "1";
  return nullptr;
}

json Mitigations(const std::string& root) {
  const std::string dir = "/sys/devices/system/cpu/vulnerabilities";
  std::error_code ec;
  std::filesystem::directory_iterator it(root + dir, ec);
  if (ec) return nullptr;
  json out = json::object();  // ordered by name: nlohmann's object is a std::map
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (std::optional<std::string> v = ReadLine(root, dir + "/" + name)) out[name] = *v;
  }
  return out;
}

// A kernel command-line parameter's value ("" for a bare flag), false when absent, null when the
// command line cannot be read.
json CmdlineParam(const std::optional<std::string>& cmdline, absl::string_view key) {
  if (!cmdline.has_value()) return nullptr;
  for (absl::string_view word :
       absl::StrSplit(*cmdline, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    if (word == "--") break;  // the rest belongs to init
    if (word == key) return "";
    if (absl::ConsumePrefix(&word, key) && absl::ConsumePrefix(&word, "=")) {
      return std::string(word);
    }
  }
  return false;
}

// A process named irqbalance among /proc/*/comm; null when /proc cannot be listed.
json IrqbalanceRunning(const std::string& root) {
  std::error_code ec;
  std::filesystem::directory_iterator it(root + "/proc", ec);
  if (ec) return nullptr;
  for (const auto& entry : it) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    if (ReadLine(root, absl::StrCat("/proc/", pid, "/comm")) == "irqbalance") return true;
  }
  return false;
}

// io_uring_setup works here, and the opcodes this kernel supports (io_uring_get_probe).
void ProbeIoUring(const EnvOptions& o, json* env) {
  (*env)["io_uring"] = nullptr;
  (*env)["io_uring_ops"] = nullptr;
#ifdef UPCASE_HAVE_URING
  (*env)["liburing"] = UPCASE_LIBURING_VERSION;
  if (!o.probe_live) return;
  io_uring ring;
  if (io_uring_queue_init(2, &ring, 0) != 0) {
    (*env)["io_uring"] = false;
    return;
  }
  (*env)["io_uring"] = true;
  if (io_uring_probe* probe = io_uring_get_probe_ring(&ring)) {
    json ops = json::array();
    for (int op = 0; op <= probe->last_op; ++op) {
      if (!io_uring_opcode_supported(probe, op)) continue;
      ops.push_back(op < static_cast<int>(std::size(kUringOps)) ? kUringOps[op]
                                                                : absl::StrCat("op", op));
    }
    (*env)["io_uring_ops"] = ops;
    io_uring_free_probe(probe);
  }
  io_uring_queue_exit(&ring);
#else
  (void)o;  // built without liburing: nothing to probe with
  (*env)["liburing"] = nullptr;
#endif
}

}  // namespace

json EnvFingerprint(const EnvOptions& o) {
  const std::string& r = o.root;
  json env = json::object();
  env["kernel"] = StringOrNull(ReadLine(r, "/proc/sys/kernel/osrelease"));
  const std::optional<std::string> cpuinfo = ReadProcFile(r, "/proc/cpuinfo");
  env["cpu_model"] =
      cpuinfo.has_value() ? StringOrNull(CpuinfoField(*cpuinfo, "model name")) : json(nullptr);
  env["cpus_online"] = StringOrNull(ReadLine(r, "/sys/devices/system/cpu/online"));
  env["virtualization"] = Virtualization(o, cpuinfo);
  env["clocksource"] =
      StringOrNull(ReadLine(r, "/sys/devices/system/clocksource/clocksource0/current_clocksource"));
  env["scaling_driver"] = PerCpuSetting(r, "scaling_driver");
  env["scaling_governor"] = PerCpuSetting(r, "scaling_governor");
  env["boost"] = Boost(r);
  env["smt"] = StringOrNull(ReadLine(r, "/sys/devices/system/cpu/smt/control"));
  env["mitigations"] = Mitigations(r);
  const std::optional<std::string> cmdline = ReadLine(r, "/proc/cmdline");
  env["isolcpus"] = CmdlineParam(cmdline, "isolcpus");
  env["nohz_full"] = CmdlineParam(cmdline, "nohz_full");
  env["irqbalance"] = IrqbalanceRunning(r);
  env["io_uring_disabled"] = IntOrNull(r, "/proc/sys/kernel/io_uring_disabled");
  ProbeIoUring(o, &env);
  env["rmem_max"] = IntOrNull(r, "/proc/sys/net/core/rmem_max");
  env["wmem_max"] = IntOrNull(r, "/proc/sys/net/core/wmem_max");
  env["busy_poll"] = IntOrNull(r, "/proc/sys/net/core/busy_poll");
  env["busy_read"] = IntOrNull(r, "/proc/sys/net/core/busy_read");
  env["transparent_hugepage"] = BracketedChoice(r, "/sys/kernel/mm/transparent_hugepage/enabled");
  env["perf_event_paranoid"] = IntOrNull(r, "/proc/sys/kernel/perf_event_paranoid");
  return env;
}

std::vector<EnvAdvice> EnvCheck(const json& env) {
  std::vector<EnvAdvice> out;
  auto str = [&](const char* key) -> std::string {
    return env.contains(key) && env.at(key).is_string() ? env.at(key).get<std::string>() : "";
  };
  const std::string virt = str("virtualization");
  if (!virt.empty() && virt != "none") {
    out.push_back({"virtualization",
                   absl::StrCat("runs under a hypervisor (", virt,
                                "): it steals CPU time in slices of milliseconds and adds timer "
                                "jitter (a result's host.cpus[].steal_pct and host.hiccup_us)"),
                   "measure on bare metal, or on dedicated vCPUs (pinned, not overcommitted)"});
  }
  const std::string governor = str("scaling_governor");
  if (!governor.empty() && governor != "performance") {
    out.push_back({"scaling_governor",
                   absl::StrCat("CPU frequency governor '", governor,
                                "': the clock speed follows the load, so the same work takes a "
                                "varying time"),
                   "sudo cpupower frequency-set --governor performance"});
  }
  if (env.contains("boost") && env.at("boost").is_boolean() && env.at("boost").get<bool>()) {
    const bool pstate = absl::StrContains(str("scaling_driver"), "intel_pstate");
    out.push_back({"boost",
                   "turbo/boost is on: the frequency depends on temperature and on how many "
                   "cores are busy",
                   pstate ? "echo 1 | sudo tee /sys/devices/system/cpu/intel_pstate/no_turbo"
                          : "echo 0 | sudo tee /sys/devices/system/cpu/cpufreq/boost"});
  }
  if (str("smt") == "on") {
    out.push_back({"smt",
                   "SMT (hyper-threading) is on: work on a sibling CPU slows the measured thread "
                   "on the same core",
                   "echo off | sudo tee /sys/devices/system/cpu/smt/control (or pin server and "
                   "load to CPUs of different cores)"});
  }
  if (env.contains("isolcpus") && env.at("isolcpus") == false && env.contains("nohz_full") &&
      env.at("nohz_full") == false) {
    out.push_back({"isolcpus",
                   "no CPU is isolated: other tasks, kernel threads and the scheduler tick share "
                   "the CPUs of the server and the load",
                   "add isolcpus=LIST nohz_full=LIST rcu_nocbs=LIST to GRUB_CMDLINE_LINUX in "
                   "/etc/default/grub, run sudo update-grub and reboot; then pin with taskset and "
                   "--cpus"});
  }
  if (env.contains("irqbalance") && env.at("irqbalance") == true) {
    out.push_back({"irqbalance",
                   "irqbalance is running: it moves interrupts between CPUs during a run",
                   "sudo systemctl stop irqbalance"});
  }
  const std::string clocksource = str("clocksource");
  if (!clocksource.empty() && clocksource != "tsc" && clocksource != "arch_sys_counter" &&
      clocksource != "kvm-clock") {
    out.push_back({"clocksource",
                   absl::StrCat("clock source '", clocksource,
                                "': reading the clock costs a system call or more"),
                   "echo tsc | sudo tee "
                   "/sys/devices/system/clocksource/clocksource0/current_clocksource"});
  }
  if (str("transparent_hugepage") == "always") {
    out.push_back({"transparent_hugepage",
                   "transparent huge pages 'always': khugepaged compacts memory in the background, "
                   "a source of latency spikes",
                   "echo madvise | sudo tee /sys/kernel/mm/transparent_hugepage/enabled"});
  }
  return out;
}

std::string FormatEnvCheck(const std::vector<EnvAdvice>& advice) {
  if (advice.empty()) {
    return "upcase-load env --check: nothing found that lowers the precision of measurements\n";
  }
  std::string out = absl::StrCat("upcase-load env --check: ", advice.size(),
                                 advice.size() == 1 ? " setting lowers" : " settings lower",
                                 " the precision of measurements on this host\n");
  for (const EnvAdvice& a : advice) {
    absl::StrAppend(&out, "- ", a.key, ": ", a.what, "\n  fix: ", a.fix, "\n");
  }
  return out;
}

}  // namespace upcase
