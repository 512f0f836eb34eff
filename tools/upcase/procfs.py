"""/proc and CPU sets: the one place that reads and parses /proc.

The parsers take the text, so a remote host's /proc (read through ssh, hosts.SshHost) parses the
same way as this machine's; the readers beside them read this machine's files.

- /proc/PID/stat: CPU seconds (utime, stime) and thread count of a process;
- /proc/PID/task/*/status and comm: context switches, allowed CPUs, tracer, thread names;
- /proc/stat: busy seconds of a set of CPUs (everything but idle and iowait), and per-CPU busy
  shares between two samples (tools/quiet waits on those, QuietWatch);
- /proc/cpuinfo, /proc/meminfo, /proc/loadavg: what the machine is and how loaded;
- /proc/net/sockstat, /proc/net/tcp{,6}, /proc/PID/smaps_rollup: kernel socket memory, a
  listener's accept queue, and the memory of a process and its children (the idle experiment);
- CPU lists as taskset and upcase-load --cpus take them ("0-3,8").
"""
from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import re
import time
from typing import Callable, Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# CPU lists ("0-3,8", as taskset and upcase-load --cpus take them).


def parse_cpu_list(text: str, allowed: Iterable[int] | None = None,
                   flag: str = "--cpus") -> list[int]:
    """Sorted CPUs of a list such as 0-3,8; ValueError (one line) when malformed, empty, or
    naming a CPU outside `allowed`."""
    cpus: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"{flag}={text}: expected CPUs such as 0-3,8")
        lo = int(m.group(1))
        cpus.update(range(lo, int(m.group(2) or lo) + 1))
    if allowed is not None:
        allowed = list(allowed)
        outside = sorted(cpus - set(allowed))
        if outside:
            raise ValueError(f"{flag}={text}: CPU {fmt_cpu_list(outside)} not in the allowed set "
                             f"{fmt_cpu_list(allowed)}")
    return sorted(cpus)


def fmt_cpu_list(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8] -> "0-3,8"."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def split_cpus(allowed: Iterable[int]) -> tuple[list[int], list[int], str | None]:
    """The default placement on one host: server on the first half of the allowed CPUs, load on
    the second (CPU 0 | CPU 1 on two CPUs); on one CPU both share it, with a note."""
    cpus = sorted(allowed)
    if len(cpus) >= 2:
        half = len(cpus) // 2
        return cpus[:half], cpus[half:], None
    return cpus, cpus, (f"only CPU {cpus[0]} is available: server and load share it, "
                        "so figures are not comparable with 2-CPU results")


def cpus_for_runs() -> tuple[int | None, int | None, str | None]:
    """Server CPU, load CPU, and a note when the machine cannot keep them apart."""
    cpus = allowed_cpus()
    if len(cpus) >= 2:
        return cpus[0], cpus[1], None
    return cpus[0], cpus[0], split_cpus(cpus)[2]


# ---------------------------------------------------------------------------------------------
# A process: /proc/PID/stat and /proc/PID/task/*.


def parse_proc_stat(raw: str) -> dict:
    """utime/stime (seconds) and thread count from the text of /proc/PID/stat. The times include
    the children the process has reaped (cutime/cstime): the fork backend's connections run in
    child processes, whose CPU is the server's too (0 for the other backends)."""
    fields = raw[raw.rindex(")") + 2:].split()  # fields[0] is field 3 (state) of proc(5)
    return {"utime_s": (int(fields[11]) + int(fields[13])) / CLK_TCK,
            "stime_s": (int(fields[12]) + int(fields[14])) / CLK_TCK,
            "threads": int(fields[17])}


def proc_stat(pid: int) -> dict:
    """utime/stime (seconds, all threads, living and exited) and thread count from
    /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return parse_proc_stat(f.read())


def parse_process_tree(stats: Iterable[str], pid: int) -> tuple[dict[int, str], list[int]]:
    """(each process's stat text by PID, pid and its descendants) from the /proc/N/stat texts of
    every process; a PID read twice keeps its first reading; ValueError without pid's."""
    parent: dict[int, list[int]] = {}
    by_pid: dict[int, str] = {}
    for raw in stats:
        try:
            n, ppid = int(raw.split(" ", 1)[0]), int(raw[raw.rindex(")") + 2:].split()[1])
        except (ValueError, IndexError):
            continue  # not a stat line (a process that exited while read)
        if n in by_pid:
            continue
        by_pid[n] = raw
        parent.setdefault(ppid, []).append(n)
    if pid not in by_pid:
        raise ValueError(f"no /proc/{pid}/stat")
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += parent.get(p, [])
    return by_pid, tree


def _all_stats(first: int) -> list[str]:
    """Every process's /proc/N/stat text on this machine, `first`'s read first."""
    texts = [_read(f"/proc/{first}/stat")]
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != first:
            texts.append(_read(f"/proc/{d.name}/stat"))
    return [t for t in texts if t]


def parse_tree_stat(stats: Iterable[str], pid: int,
                    runtime_s: Callable[[int], float | None] = lambda _: None) -> dict:
    """proc_stat of pid with its living descendants added, from the /proc/N/stat texts of every
    process (pid's must come first): the fork backend serves each connection in a child, whose
    CPU time is the server's own and reaches the parent's cutime/cstime only once reaped.
    A single-threaded descendant's time is runtime_s(its pid) where that knows it (schedstat,
    in ns): utime + stime are whole clock ticks, so a child that ran 9 ms reads 0, and 64 such
    children hide a CPU-second in ten seconds. `processes` counts pid and its descendants;
    `threads` is pid's own."""
    by_pid, tree = parse_process_tree(stats, pid)
    out = dict(parse_proc_stat(by_pid[pid]), processes=0)
    for p in tree:
        out["processes"] += 1
        if p != pid:
            child = parse_proc_stat(by_pid[p])
            exact = runtime_s(p) if child["threads"] == 1 else None
            if exact is not None:  # schedstat does not split user from system: all "system"
                out["stime_s"] += max(exact, child["utime_s"] + child["stime_s"])
            else:
                out["utime_s"] += child["utime_s"]
                out["stime_s"] += child["stime_s"]
    return out


def schedstat_runtime_s(pid: int) -> float | None:
    """The time on a CPU of pid's main thread from /proc/PID/schedstat (ns); None when absent."""
    try:
        return int(_read(f"/proc/{pid}/schedstat").split()[0]) / 1e9
    except (ValueError, IndexError):
        return None


def tree_stat(pid: int) -> dict:
    """parse_tree_stat of this machine's pid (its own stat read first, so that a child reaped
    meanwhile is missed rather than counted twice)."""
    return parse_tree_stat(_all_stats(pid), pid, schedstat_runtime_s)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants, all their threads, in seconds."""
    s = tree_stat(pid)
    return s["utime_s"] + s["stime_s"]


def thread_count(pid: int) -> int:
    """The threads a process has now; 0 when it is gone."""
    try:
        return proc_stat(pid)["threads"]
    except (OSError, ValueError, IndexError):
        return 0


def task_files(pid: int, name: str) -> list[str]:
    """/proc/PID/task/*/NAME of every living thread (a thread that exits meanwhile is skipped)."""
    out = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            out.append((task / name).read_text())
        except OSError:
            continue  # the thread exited meanwhile
    return out


def parse_ctx_switches(statuses: Iterable[str]) -> dict:
    vol = invol = 0
    for text in statuses:
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return {"voluntary": vol, "involuntary": invol}


def proc_ctx_switches(pid: int) -> dict:
    """Context switches summed over the living threads (exited threads are not counted)."""
    return parse_ctx_switches(task_files(pid, "status"))


def group_thread_names(comms: Iterable[str]) -> dict[str, int]:
    # Kernel helpers carry their number in the name (iou-wrk-1234): group them.
    return dict(collections.Counter(re.sub(r"-?\d+$", "", c.strip()) for c in comms))


def thread_names(pid: int) -> dict[str, int]:
    return group_thread_names(task_files(pid, "comm"))


def parse_allowed_cpus(statuses: Iterable[str]) -> list[list[int]]:
    """Cpus_allowed_list of each thread, from /proc/PID/task/*/status texts."""
    out = []
    for text in statuses:
        m = re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.M)
        if m:
            out.append(parse_cpu_list(m.group(1)))
    return out


def thread_cpus(pid: int) -> list[list[int]]:
    return parse_allowed_cpus(task_files(pid, "status"))


def all_tasks_traced(pid: int) -> bool:
    """Whether every thread of the process has a tracer (strace attached to all of them)."""
    try:
        statuses = task_files(pid, "status")
    except OSError:
        return False
    return all(re.search(r"^TracerPid:\s*[1-9]", text, re.M) for text in statuses)


# ---------------------------------------------------------------------------------------------
# The machine: /proc/stat, /proc/cpuinfo, /proc/meminfo, /proc/loadavg.


def _busy_total(vals: list[int]) -> tuple[int, int]:
    """(busy, total) jiffies of one /proc/stat cpu line: all but idle and iowait are busy;
    guest time is already in user."""
    total = sum(vals[:8])
    return total - vals[3] - vals[4], total


def parse_cpu_times(stat_text: str) -> dict[int | None, tuple[int, int]]:
    """(busy, total) jiffies per CPU from /proc/stat; key None is the all-CPU "cpu" line."""
    out: dict[int | None, tuple[int, int]] = {}
    for line in stat_text.splitlines():
        name, *vals = line.split()
        if name == "cpu":
            out[None] = _busy_total([int(x) for x in vals])
        elif name.startswith("cpu") and name[3:].isdigit():
            out[int(name[3:])] = _busy_total([int(x) for x in vals])
    return out


def parse_cpu_busy(stat_text: str, cpus: Iterable[int] | None = None) -> float:
    """Non-idle seconds of these CPUs (every process, interrupts included) from /proc/stat;
    cpus None: of the whole machine (the "cpu" line)."""
    times = parse_cpu_times(stat_text)
    if cpus is None:
        return times[None][0] / CLK_TCK
    wanted = set(cpus)
    return sum(b for c, (b, _) in times.items() if c is not None and c in wanted) / CLK_TCK


def read_stat() -> str:
    with open("/proc/stat") as f:
        return f.read()


def cpu_busy_s(cpus: Iterable[int] | None = None) -> float:
    return parse_cpu_busy(read_stat(), cpus)


def online_cpus(stat_text: str | None = None) -> list[int]:
    """The CPUs /proc/stat lists (the online ones)."""
    return sorted(c for c in parse_cpu_times(stat_text or read_stat()) if c is not None)


def busy_shares(before: dict[int | None, tuple[int, int]],
                after: dict[int | None, tuple[int, int]], cpus: Iterable[int]
                ) -> dict[int, float]:
    """Per CPU, the share of the time between two /proc/stat samples it was busy (0.0-1.0); a CPU
    whose counters did not move (no tick yet) counts as idle."""
    out = {}
    for c in cpus:
        busy = after[c][0] - before[c][0]
        total = after[c][1] - before[c][1]
        out[c] = busy / total if total > 0 else 0.0
    return out


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    return pathlib.Path("/proc/loadavg").read_text().split()[:3]


def parse_cpuinfo(text: str) -> tuple[str, int]:
    """(model name of the first CPU or "?", number of processors) from /proc/cpuinfo."""
    m = re.search(r"^model name\s*:(.*)$", text, re.M)
    return (m.group(1).strip() if m else "?",
            len(re.findall(r"^processor\s*:", text, re.M)))


def parse_mem_total(text: str) -> str:
    """MemTotal of /proc/meminfo as "N.N GiB", "?" when absent."""
    m = re.search(r"^MemTotal:\s+(\d+)", text, re.M)
    return f"{int(m.group(1)) / 2**20:.1f} GiB" if m else "?"


def _read(path: str) -> str:
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    return parse_cpuinfo(_read("/proc/cpuinfo"))[0]


def machine_info() -> dict:
    """This machine as report.md and regress.json describe it."""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)', _read("/etc/os-release"), re.M)
    return {"nproc": os.cpu_count(), "online_cpus": len(os.sched_getaffinity(0)),
            "kernel": os.uname().release, "cpu_model": cpu_model(),
            "memory": parse_mem_total(_read("/proc/meminfo")),
            "os": m.group(1).strip() if m else "?"}


# ---------------------------------------------------------------------------------------------
# Sockets and memory (tools/compare --idle).


def parse_sockstat(text: str) -> dict[str, int]:
    """/proc/net/sockstat's TCP line: inuse, orphan, tw, alloc and mem (pages) as tcp_*."""
    m = re.search(r"^TCP:(.*)$", text, re.M)
    words = m.group(1).split() if m else []
    return {f"tcp_{k}": int(v) for k, v in zip(words[::2], words[1::2]) if v.isdigit()}


def sockstat() -> dict[str, int]:
    return parse_sockstat(_read("/proc/net/sockstat"))


def parse_meminfo_kib(text: str, key: str) -> int | None:
    """One /proc/meminfo line's kB, e.g. key "Slab"; None when absent."""
    m = re.search(rf"^{re.escape(key)}:\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def slab_kib() -> int | None:
    """The kernel's slab memory (sockets, their inodes, files, ...), in KiB."""
    return parse_meminfo_kib(_read("/proc/meminfo"), "Slab")


def parse_listen_queue(text: str, port: int) -> int | None:
    """The accept queue of the listening sockets on `port` in /proc/net/tcp (or tcp6) text: a
    LISTEN socket's rx_queue is its count of connections waiting for accept(); None when none
    listens there."""
    total = None
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) > 4 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
            total = (total or 0) + int(f[4].split(":")[1], 16)
    return total


def listen_queue(port: int) -> int | None:
    """Connections waiting in the accept queues of every listener on `port` (IPv4 and IPv6)."""
    got = [parse_listen_queue(_read(f"/proc/net/{t}"), port) for t in ("tcp", "tcp6")]
    return None if got == [None, None] else sum(g or 0 for g in got)


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (by the parent PID of every /proc/N/stat); [pid] when gone."""
    try:
        return parse_process_tree(_all_stats(pid), pid)[1]
    except ValueError:
        return [pid]


def tree_memory(pid: int) -> dict[str, int]:
    """RSS and PSS (shared pages split among their users, so a forked child's shared memory is
    not counted twice) of pid and its descendants, in KiB, and how many processes."""
    rss = pss = n = 0
    for p in process_tree(pid):
        text = _read(f"/proc/{p}/smaps_rollup")
        r, s = parse_meminfo_kib(text, "Rss"), parse_meminfo_kib(text, "Pss")
        if r is not None and s is not None:
            rss, pss, n = rss + r, pss + s, n + 1
    return {"rss_kib": rss, "pss_kib": pss, "processes": n}


# ---------------------------------------------------------------------------------------------
# Waiting for quiet CPUs (tools/quiet).


@dataclasses.dataclass
class QuietWatch:
    """Fed /proc/stat samples in time order, says when every CPU of `cpus` has stayed at or
    below `max_busy` (a share, 0.05 = 5 %) between consecutive samples for `settle` seconds."""
    cpus: list[int]
    max_busy: float
    settle: float
    quiet_since: float | None = None
    last: tuple[float, dict] | None = None
    busiest: tuple[int, float] | None = None  # the busiest CPU of the last interval

    def feed(self, t: float, stat_text: str) -> bool:
        times = parse_cpu_times(stat_text)
        missing = [c for c in self.cpus if c not in times]
        if missing:
            raise ValueError(f"CPU {fmt_cpu_list(missing)} is not online")
        if self.last is None:
            self.last, self.quiet_since = (t, times), t
            return self.settle <= 0
        shares = busy_shares(self.last[1], times, self.cpus)
        self.last = (t, times)
        self.busiest = max(shares.items(), key=lambda kv: kv[1])
        if self.busiest[1] > self.max_busy:
            self.quiet_since = t
        return self.quiet_since is not None and t - self.quiet_since >= self.settle


def wait_quiet(cpus: list[int], max_busy: float, settle: float, timeout: float,
               period: float = 0.25, log: Callable[[str], None] = print,
               sample: Callable[[], str] = read_stat) -> bool:
    """Samples /proc/stat every `period` until QuietWatch says quiet (True) or `timeout` seconds
    have passed (False). Logs one line when it starts waiting."""
    watch = QuietWatch(cpus, max_busy, settle)
    log(f"waiting for CPU {fmt_cpu_list(cpus)} to stay below {max_busy * 100:g} % busy "
        f"for {settle:g} s (giving up after {timeout:g} s)")
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if watch.feed(now, sample()):
            return True
        if now - start >= timeout:
            return False
        time.sleep(period)
