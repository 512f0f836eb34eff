#include "common/procfs.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/sys.h"

namespace upcase {
namespace {

// Fields of /proc/PID/stat counted from the first one after the command's ')' (field 3, state).
constexpr int kUtimeField = 14 - 3;
constexpr int kStimeField = 15 - 3;
constexpr int kProcessorField = 39 - 3;

double Percent(double part, std::uint64_t whole) {
  return whole == 0 ? 0.0 : 100.0 * part / static_cast<double>(whole);
}

// Clock ticks per second (USER_HZ), the unit of /proc/stat and /proc/PID/stat.
double TicksPerSecond() {
  static const double hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
  return hz;
}

// A thread's CPU time between two samples, in clock ticks (fractional): from its schedstat
// runtime (ns) when both samples have it, else from utime + stime. `before` null: the thread is
// new, all its time counts.
double TaskDelta(const TaskTicks* before, const TaskTicks& after) {
  if (after.runtime_ns.has_value() && (before == nullptr || before->runtime_ns.has_value())) {
    const std::uint64_t from = before == nullptr ? 0 : *before->runtime_ns;
    return static_cast<double>(*after.runtime_ns >= from ? *after.runtime_ns - from : 0) * 1e-9 *
           TicksPerSecond();
  }
  const std::uint64_t from = before == nullptr ? 0 : before->ticks;
  return static_cast<double>(after.ticks >= from ? after.ticks - from : 0);
}

// b - a for counters that only grow; 0 when a counter went back (a CPU that went offline and
// came back restarts its counts).
std::uint64_t Delta(std::uint64_t a, std::uint64_t b) { return b >= a ? b - a : 0; }

}  // namespace

std::optional<std::string> ReadProcFile(const std::string& root, const std::string& path) {
  std::ifstream in(root + path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return text.str();
}

absl::StatusOr<std::vector<CpuTicks>> ParseProcStat(absl::string_view text) {
  std::vector<CpuTicks> cpus;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, "cpu") || line.empty() || line[0] == ' ') continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    CpuTicks t;
    std::uint64_t* fields[] = {&t.user,   &t.nice, &t.system,  &t.idle,
                               &t.iowait, &t.irq,  &t.softirq, &t.steal};
    // Kernels before 2.6.11 lack steal: 8 fields at least, counted from the CPU number.
    if (f.size() < 8 || !absl::SimpleAtoi(f[0], &t.cpu) || t.cpu < 0) {
      return absl::InvalidArgumentError(absl::StrCat("/proc/stat: bad line 'cpu", line, "'"));
    }
    for (std::size_t i = 0; i < std::size(fields) && i + 1 < f.size(); ++i) {
      if (!absl::SimpleAtoi(f[i + 1], fields[i])) {
        return absl::InvalidArgumentError(absl::StrCat("/proc/stat: bad line 'cpu", line, "'"));
      }
    }
    cpus.push_back(t);
  }
  if (cpus.empty()) return absl::InvalidArgumentError("/proc/stat: no per-CPU lines");
  return cpus;
}

absl::Status ParseTaskStat(absl::string_view text, TaskTicks* task) {
  const std::size_t close = text.rfind(')');
  if (close == absl::string_view::npos) {
    return absl::InvalidArgumentError("stat: no ')' after the command");
  }
  std::vector<absl::string_view> f =
      absl::StrSplit(text.substr(close + 1), absl::ByAnyChar(" \n"), absl::SkipEmpty());
  std::uint64_t utime = 0, stime = 0;
  if (f.size() <= static_cast<std::size_t>(kProcessorField) ||
      !absl::SimpleAtoi(f[kUtimeField], &utime) || !absl::SimpleAtoi(f[kStimeField], &stime) ||
      !absl::SimpleAtoi(f[kProcessorField], &task->last_cpu)) {
    return absl::InvalidArgumentError("stat: too few or malformed fields");
  }
  task->ticks = utime + stime;
  return absl::OkStatus();
}

void ParseTaskStatus(absl::string_view text, TaskTicks* task) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, "Cpus_allowed_list:")) {
      absl::StatusOr<std::vector<int>> cpus = ParseCpuList(absl::StripAsciiWhitespace(line));
      if (cpus.ok()) task->allowed = *std::move(cpus);
    } else if (absl::ConsumePrefix(&line, "nonvoluntary_ctxt_switches:")) {
      std::uint64_t n = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &n)) task->involuntary = n;
    }
  }
}

std::vector<TaskTicks> ReadProcessTasks(const std::string& root, pid_t pid) {
  std::vector<TaskTicks> tasks;
  const std::string dir = absl::StrCat("/proc/", pid, "/task");
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root + dir, ec)) {
    TaskTicks t;
    t.pid = pid;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &t.tid)) continue;
    const std::string base = absl::StrCat(dir, "/", t.tid);
    std::optional<std::string> stat = ReadProcFile(root, base + "/stat");
    if (!stat.has_value() || !ParseTaskStat(*stat, &t).ok()) continue;  // exited meanwhile
    if (std::optional<std::string> status = ReadProcFile(root, base + "/status")) {
      ParseTaskStatus(*status, &t);
    }
    if (std::optional<std::string> sched = ReadProcFile(root, base + "/schedstat")) {
      std::uint64_t ns = 0;
      const std::vector<absl::string_view> f = absl::StrSplit(*sched, ' ');
      if (absl::SimpleAtoi(f[0], &ns)) t.runtime_ns = ns;
    }
    tasks.push_back(std::move(t));
  }
  return tasks;
}

std::vector<pid_t> WithDescendants(const std::string& root, const std::vector<pid_t>& pids) {
  std::map<pid_t, std::vector<pid_t>> children;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root + "/proc", ec)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    std::optional<std::string> stat = ReadProcFile(root, absl::StrCat("/proc/", pid, "/stat"));
    if (!stat.has_value()) continue;  // exited meanwhile
    const std::size_t close = stat->rfind(')');
    if (close == std::string::npos) continue;
    // After the command: state, then the parent's PID (field 4).
    std::vector<absl::string_view> f =
        absl::StrSplit(absl::string_view(*stat).substr(close + 1), ' ', absl::SkipEmpty());
    pid_t parent = 0;
    if (f.size() > 1 && absl::SimpleAtoi(f[1], &parent)) children[parent].push_back(pid);
  }
  std::vector<pid_t> out;
  std::vector<pid_t> todo(pids.rbegin(), pids.rend());
  while (!todo.empty()) {
    const pid_t pid = todo.back();
    todo.pop_back();
    if (std::find(out.begin(), out.end(), pid) != out.end()) continue;
    out.push_back(pid);
    const auto it = children.find(pid);
    if (it != children.end()) todo.insert(todo.end(), it->second.rbegin(), it->second.rend());
  }
  return out;
}

HostSample SampleHost(const std::string& root, const std::vector<pid_t>& pids) {
  HostSample s;
  if (std::optional<std::string> stat = ReadProcFile(root, "/proc/stat")) {
    if (absl::StatusOr<std::vector<CpuTicks>> cpus = ParseProcStat(*stat); cpus.ok()) {
      s.cpus = *std::move(cpus);
    }
  }
  for (pid_t pid : WithDescendants(root, pids)) {
    // The process's total first: a thread that exits between the two readings is then in it
    // and, vanished, not among the threads (counted once, by CpuNoiseBetween).
    if (std::optional<std::string> stat =
            ReadProcFile(root, absl::StrCat("/proc/", pid, "/stat"))) {
      TaskTicks whole;
      if (ParseTaskStat(*stat, &whole).ok()) s.process_ticks[pid] = whole.ticks;
    }
    std::vector<TaskTicks> tasks = ReadProcessTasks(root, pid);
    s.tasks.insert(s.tasks.end(), tasks.begin(), tasks.end());
  }
  return s;
}

std::vector<CpuNoise> CpuNoiseBetween(const HostSample& before, const HostSample& after,
                                      const std::vector<int>& cpus) {
  // The known threads' ticks in the interval, by the CPU they are attributed to.
  std::map<std::pair<pid_t, pid_t>, const TaskTicks*> was;
  for (const TaskTicks& t : before.tasks) was[{t.pid, t.tid}] = &t;
  std::map<int, double> own;
  // Threads that ran and may move: the CPUs they may run on (empty: unknown, any CPU).
  std::vector<const std::vector<int>*> movable;
  auto attribute = [&](const TaskTicks& t, double ticks) {
    own[t.allowed.size() == 1 ? t.allowed[0] : t.last_cpu] += ticks;
    if (ticks > 0 && t.allowed.size() != 1) movable.push_back(&t.allowed);
  };
  std::map<pid_t, double> living;  // per process: its living threads' ticks
  std::set<std::pair<pid_t, pid_t>> alive;
  for (const TaskTicks& t : after.tasks) {
    const auto it = was.find({t.pid, t.tid});
    const double ticks = TaskDelta(it == was.end() ? nullptr : it->second, t);
    attribute(t, ticks);
    living[t.pid] += ticks;
    alive.insert({t.pid, t.tid});
  }
  // Threads that exited in the interval: their process's growth beyond its living threads',
  // spread evenly over them (the time they ran before the interval is not in the growth).
  for (const auto& [pid, total_after] : after.process_ticks) {
    const auto b = before.process_ticks.find(pid);
    if (b == before.process_ticks.end()) continue;
    std::vector<const TaskTicks*> gone;
    for (const TaskTicks& t : before.tasks) {
      if (t.pid == pid && !alive.contains({t.pid, t.tid})) gone.push_back(&t);
    }
    const double exited = static_cast<double>(Delta(b->second, total_after)) - living[pid];
    if (gone.empty() || exited <= 0) continue;
    for (const TaskTicks* t : gone) attribute(*t, exited / static_cast<double>(gone.size()));
  }
  std::vector<CpuNoise> out;
  for (int cpu : cpus) {
    auto find = [cpu](const std::vector<CpuTicks>& v) {
      return std::find_if(v.begin(), v.end(), [cpu](const CpuTicks& c) { return c.cpu == cpu; });
    };
    const auto a = find(before.cpus);
    const auto b = find(after.cpus);
    if (a == before.cpus.end() || b == after.cpus.end()) continue;
    CpuNoise n;
    n.cpu = cpu;
    n.ticks = Delta(a->total(), b->total());
    const auto busy = static_cast<double>(Delta(a->busy(), b->busy()));
    const double mine = std::min(own[cpu], busy);
    n.steal_pct = Percent(static_cast<double>(Delta(a->steal, b->steal)), n.ticks);
    n.irq_pct = Percent(static_cast<double>(Delta(a->irq, b->irq) + Delta(a->softirq, b->softirq)),
                        n.ticks);
    n.own_pct = Percent(mine, n.ticks);
    n.foreign_pct = Percent(busy - mine, n.ticks);
    n.foreign_exact =
        std::none_of(movable.begin(), movable.end(), [cpu](const std::vector<int>* allowed) {
          return allowed->empty() ||
                 std::find(allowed->begin(), allowed->end(), cpu) != allowed->end();
        });
    out.push_back(n);
  }
  return out;
}

std::uint64_t InvoluntarySwitchesBetween(const HostSample& before, const HostSample& after,
                                         pid_t pid) {
  std::map<pid_t, std::uint64_t> start;
  for (const TaskTicks& t : before.tasks) {
    if (t.pid == pid) start[t.tid] = t.involuntary;
  }
  std::uint64_t n = 0;
  for (const TaskTicks& t : after.tasks) {
    if (t.pid != pid) continue;
    const auto it = start.find(t.tid);
    n += it == start.end() ? t.involuntary : Delta(it->second, t.involuntary);
  }
  return n;
}

}  // namespace upcase
