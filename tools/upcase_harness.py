"""Runs one measurement: upcase-server on one CPU, upcase-load on another, on loopback.

Shared by tools/compare and tools/regress. A run is

    taskset -c 0 upcase-server --backend=B --bind=127.0.0.1 --shards=1 --proto=P 0
    (wait for its "ready" line, read /proc/PID/stat, enable perf counters on PID)
    taskset -c 1 upcase-load --proto=P ... --json=FILE 127.0.0.1 PORT
    (read /proc/PID/stat again, disable the counters, SIGTERM the server, read --stats-json)

and yields one JSON-able dict: the point, the commands, upcase-load's own JSON untouched, and
what the server cost (CPU seconds, context switches, peak threads, syscalls when probed, its
counters). Per-request figures divide by the requests the *server* counted over the whole
run (warm-up, connection set-up and tear-down included), so every figure shares one window.

Every child is started through Children, which kills whatever is still alive by PID at exit,
and every wait is bounded.
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import os
import pathlib
import re
import select
import shlex
import signal
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN_DIR = ROOT / "build" / "release" / "bin"

# How long a server may take to print "ready", and to exit after SIGTERM (beyond --grace).
READY_TIMEOUT_S = 10.0
SERVER_GRACE_S = 1.0
STOP_TIMEOUT_S = SERVER_GRACE_S + 5.0
# A load run may overrun warmup+duration by this much (connecting 1024 sockets, writing JSON)
# before it is killed.
LOAD_SLACK_S = 30.0
# upcase-load --timeout for TCP runs (its default, 1s, is also its UDP loss threshold).
TCP_LOAD_TIMEOUT_S = 3.0
# How often peak thread count is sampled while a load runs.
SAMPLE_PERIOD_S = 0.05
# Per-syscall tracepoints counted in a probe run; everything else is summed as "other".
PROBE_SYSCALLS = (
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
    "recvmmsg", "sendmmsg", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
    "io_uring_enter", "poll", "ppoll", "select", "pselect6", "accept", "accept4", "close",
    "shutdown", "futex", "clone", "clone3", "mmap", "munmap", "mprotect", "madvise",
    "rt_sigprocmask", "setsockopt", "getsockopt", "sched_yield", "nanosleep",
    "clock_nanosleep", "eventfd2",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class HarnessError(Exception):
    """A one-line, user-facing reason a step could not run."""


class ServerStartError(HarnessError):
    """The server exited or stayed silent instead of printing its ready line."""


class MismatchError(HarnessError):
    """upcase-load saw a reply that is not uppercase(request): a bug, never retried."""


# upcase-load's exit status when a reply differed from uppercase(request).
LOAD_EXIT_MISMATCH = 3


# ---------------------------------------------------------------------------------------------
# Children: every process we start, so none outlives us.

class Children:
    _live: dict[int, subprocess.Popen] = {}

    @classmethod
    def popen(cls, cmd, **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, **kw)
        cls._live[p.pid] = p
        return p

    @classmethod
    def reap(cls, p: subprocess.Popen, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S) -> int:
        """Signals p (by PID) unless it already exited, then waits; SIGKILL when it lingers."""
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        cls._live.pop(p.pid, None)
        return p.returncode

    @classmethod
    def kill_all(cls):
        for p in list(cls._live.values()):
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        cls._live.clear()


def _on_signal(signum, _frame):
    # Turn SIGTERM/SIGHUP into an exception so `finally` blocks stop the servers.
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup():
    atexit.register(Children.kill_all)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


# ---------------------------------------------------------------------------------------------
# Binaries and backends.

def binary(name: str, bin_dir: pathlib.Path | None = None) -> pathlib.Path:
    """An executable from `bin_dir` (default: build/release/bin, what tools/compare builds)."""
    path = (bin_dir or BIN_DIR) / name
    if not os.access(path, os.X_OK):
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        raise HarnessError(f"{shown} not found: build Release first "
                           "(cmake --preset release && cmake --build --preset release)")
    return path


@dataclasses.dataclass
class BackendInfo:
    name: str
    summary: str
    unavailable: str | None  # the reason, or None when usable


def discover_backends(bin_dir: pathlib.Path | None = None) -> list[BackendInfo]:
    """Parses the "Backends" section of `upcase-server --help`."""
    out = subprocess.run([str(binary("upcase-server", bin_dir)), "--help"], capture_output=True,
                         text=True, timeout=10)
    text = out.stdout + out.stderr
    backends, inside = [], False
    for line in text.splitlines():
        if line.startswith("Backends"):
            inside = True
            continue
        if inside:
            m = re.match(r"^\s+([a-z0-9_]+)\s+(.*?)\s*(?:\[unavailable: (.*)\])?\s*$", line)
            if not m or not line.startswith(" "):
                break
            backends.append(BackendInfo(m.group(1), m.group(2), m.group(3)))
    if not backends:
        raise HarnessError("cannot find the Backends section in `upcase-server --help`")
    return backends


# ---------------------------------------------------------------------------------------------
# Measurement points.

@dataclasses.dataclass(frozen=True)
class Point:
    backend: str
    proto: str            # tcp | udp
    size: int             # request bytes
    connections: int      # TCP connections or UDP sockets, one request outstanding each
    rate: float = 0.0     # offered requests/s in total; 0 = closed loop
    label: str = ""       # open loop: e.g. "50%" of the reference maximum
    probe: bool = False   # a syscall-counting run (its CPU figures are not used)

    @property
    def mode(self) -> str:
        return "closed" if self.rate == 0 else "open"

    @property
    def key(self) -> str:
        """The same for every backend at the same load, e.g. tcp-64B-c64-open50."""
        tail = "closed" if self.rate == 0 else "open" + self.label.rstrip("%")
        return f"{self.proto}-{self.size}B-c{self.connections}-{tail}"

    def describe(self) -> str:
        load = "closed" if self.rate == 0 else f"open {self.label} ({fmt_count(self.rate)}/s)"
        probe = " [syscall probe]" if self.probe else ""
        return (f"{self.backend} {self.proto} {fmt_size(self.size)} c={self.connections} "
                f"{load}{probe}")


def fmt_size(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}KiB" if n < 1 << 20 else f"{n >> 20}MiB"
    return f"{n}B"


def fmt_count(x: float | None) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{x:.3g}"


def fmt_duration(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


# ---------------------------------------------------------------------------------------------
# /proc readers.

def proc_stat(pid: int) -> dict:
    """utime/stime (seconds, all threads, living and exited) and thread count from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2:].split()  # fields[0] is field 3 (state) of proc(5)
    return {"utime_s": int(fields[11]) / CLK_TCK, "stime_s": int(fields[12]) / CLK_TCK,
            "threads": int(fields[17])}


def proc_ctx_switches(pid: int) -> dict:
    """Context switches summed over the living threads (exited threads are not counted)."""
    vol = invol = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread exited meanwhile
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return {"voluntary": vol, "involuntary": invol}


def cpu_busy_s(cpus) -> float:
    """Non-idle time of these CPUs (every process, interrupts included) from /proc/stat."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                v = [int(x) for x in vals]
                total += sum(v[:8]) - v[3] - v[4]  # all but idle and iowait; guest is in user
    return total / CLK_TCK


def thread_names(pid: int) -> dict[str, int]:
    names = collections.Counter()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            # Kernel helpers carry their number in the name (iou-wrk-1234): group them.
            names[re.sub(r"-?\d+$", "", (task / "comm").read_text().strip())] += 1
        except OSError:
            pass
    return dict(names)


# ---------------------------------------------------------------------------------------------
# Counting tools: perf (preferred) and strace.

def _tool_works(cmd) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclasses.dataclass
class Tools:
    perf_cs: bool      # perf can count context switches of a PID (with its future threads)
    perf_syscalls: bool
    strace: bool

    @classmethod
    def probe(cls) -> "Tools":
        cs = _perf_attach_works(["context-switches"])
        sc = cs and _perf_attach_works(["raw_syscalls:sys_enter"])
        return cls(cs, sc, _tool_works(["strace", "-c", "-o", "/dev/null", "true"]))


def _perf_attach_works(events: list[str]) -> bool:
    """Tries PerfCounter exactly as a run uses it, on a sleeping child."""
    if not _tool_works(["perf", "--version"]):
        return False
    work = pathlib.Path(tempfile.mkdtemp(prefix="upcase-perf-probe-"))
    target = Children.popen(["sleep", "30"])
    try:
        counter = PerfCounter(target.pid, events, work)
        counter.enable()
        return set(counter.finish()) == set(events)
    except (HarnessError, OSError):
        return False
    finally:
        Children.reap(target, signal.SIGKILL)
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def _tracepoint_exists(name: str) -> bool:
    return any(pathlib.Path(root, "events/syscalls", f"sys_enter_{name}").is_dir()
               for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))


class PerfCounter:
    """`perf stat -p PID` started disabled and switched through its control FIFO, so the
    counting window starts and ends exactly when we say (the ack is the synchronisation)."""

    def __init__(self, pid: int, events: list[str], workdir: pathlib.Path):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="perf-", dir=workdir))
        ctl, ack = self.dir / "ctl", self.dir / "ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        # Opened read-write so neither side blocks on open().
        self.ctl = os.open(ctl, os.O_RDWR)
        self.ack = os.open(ack, os.O_RDWR)
        self.out = self.dir / "out.csv"
        self.events = events
        self.proc = Children.popen(
            ["perf", "stat", "-x,", "--no-big-num", "-D", "-1", "-p", str(pid),
             "--control", f"fifo:{ctl},{ack}", "-o", str(self.out),
             "-e", ",".join(events)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _command(self, word: str):
        os.write(self.ctl, (word + "\n").encode())
        deadline = time.monotonic() + 10
        got = b""
        while b"ack" not in got:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise HarnessError(f"perf stat did not acknowledge '{word}'"
                                   + (f": {err[-1]}" if err else ""))
            r, _, _ = select.select([self.ack], [], [], min(remaining, 0.5))
            if r:
                got += os.read(self.ack, 64)

    def enable(self):
        self._command("enable")

    def finish(self) -> dict[str, int]:
        try:
            self._command("disable")
        finally:
            Children.reap(self.proc, signal.SIGINT, timeout=10)
            os.close(self.ctl)
            os.close(self.ack)
        counts = {}
        for line in self.out.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2] in self.events:
                counts[parts[2]] = int(parts[0]) if parts[0].isdigit() else 0
        return counts


class StraceCounter:
    """Fallback syscall counter: `strace -c -f -p PID` (slows the server; counts only)."""

    def __init__(self, pid: int, workdir: pathlib.Path):
        self.out = pathlib.Path(tempfile.mkstemp(prefix="strace-", dir=workdir)[1])
        self.proc = Children.popen(["strace", "-c", "-f", "-o", str(self.out), "-p", str(pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # strace reports each thread it attached to on stderr; the first line means tracing.
        deadline = time.monotonic() + 10
        line = _read_line(self.proc.stderr, deadline)
        if b"attached" not in line:
            Children.reap(self.proc)
            raise HarnessError(f"strace could not attach: {line.decode(errors='replace')}")

    def finish(self) -> dict[str, int]:
        Children.reap(self.proc, signal.SIGINT, timeout=10)
        counts = {}
        for line in self.out.read_text().splitlines():
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                counts[parts[-1]] = int(parts[3])
        return counts


def _read_line(stream, deadline: float) -> bytes:
    """One line from a pipe, waiting at most until `deadline`; b"" on EOF or timeout."""
    fd, buf = stream.fileno(), b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        r, _, _ = select.select([fd], [], [], remaining)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n", 1)[0]


# ---------------------------------------------------------------------------------------------
# The server.

class Server:
    def __init__(self, point: Point, cpu: int | None, workdir: pathlib.Path,
                 extra_args: list[str] = (), bin_dir: pathlib.Path | None = None):
        self.stats_path = workdir / "stats.json"
        self.log_path = workdir / "server.log"
        self.command = [str(binary("upcase-server", bin_dir)), f"--backend={point.backend}",
                        "--bind=127.0.0.1", "--shards=1", f"--proto={point.proto}",
                        f"--grace={fmt_duration(SERVER_GRACE_S)}",
                        f"--stats-json={self.stats_path}", *extra_args, "0"]
        if cpu is not None:
            self.command = ["taskset", "-c", str(cpu)] + self.command
        self.proc = None
        self.port = None
        self.ready_line = None

    def start(self):
        log = open(self.log_path, "wb")
        # taskset execs the server, so proc.pid is the server's PID.
        self.proc = Children.popen(self.command, stdout=subprocess.PIPE, stderr=log,
                                   stdin=subprocess.DEVNULL)
        log.close()
        line = _read_line(self.proc.stdout, time.monotonic() + READY_TIMEOUT_S).decode()
        m = re.search(r"^ready .*?(?:tcp|udp)=\S*:(\d+)", line)
        if not m:
            Children.reap(self.proc, signal.SIGKILL)
            raise ServerStartError(f"server did not get ready: {self.last_log_line() or line}")
        self.ready_line, self.port = line, int(m.group(1))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self) -> tuple[int, dict | None]:
        rc = Children.reap(self.proc, signal.SIGTERM)
        self.proc.stdout.close()
        try:
            stats = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            stats = None
        return rc, stats


# ---------------------------------------------------------------------------------------------
# One run.

@dataclasses.dataclass
class RunSettings:
    duration: float = 1.5
    warmup: float = 0.5
    server_cpu: int | None = 0
    load_cpu: int | None = 1
    arrival: str = "poisson"
    server_args: tuple[str, ...] = ()
    bin_dir: pathlib.Path | None = None  # upcase-server and upcase-load from here (default BIN_DIR)
    # Probe runs count each of PROBE_SYSCALLS too; off, only the total (perf then exits in ~0.1 s
    # instead of ~1.5 s).
    syscall_names: bool = True


def load_command(point: Point, port: int, settings: RunSettings, json_path) -> list[str]:
    cmd = [str(binary("upcase-load", settings.bin_dir)), f"--proto={point.proto}",
           f"--connections={point.connections}", "--threads=1",
           f"--duration={fmt_duration(settings.duration)}",
           f"--warmup={fmt_duration(settings.warmup)}", f"--size={point.size}",
           f"--rate={point.rate:.0f}", f"--json={json_path}", "--quiet"]
    if point.rate:
        # Open loop: requests leave on schedule whatever is in flight (--pipeline=0, no cap),
        # so a slow server builds a queue instead of slowing the offered load.
        cmd += ["--pipeline=0", f"--arrival={settings.arrival}"]
    else:
        cmd.append("--pipeline=1")
    if point.proto == "tcp":
        # Connect, start-up probe and end-of-run drain may wait this long on a starved or
        # throttled server; UDP keeps the default, since there it also declares a reply lost.
        cmd.append(f"--timeout={fmt_duration(TCP_LOAD_TIMEOUT_S)}")
    cmd += ["127.0.0.1", str(port)]
    if settings.load_cpu is not None:
        cmd = ["taskset", "-c", str(settings.load_cpu)] + cmd
    return cmd


def run_point(point: Point, settings: RunSettings, tools: Tools, workroot: pathlib.Path) -> dict:
    """Runs one point and returns its record; raises HarnessError when it could not run."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=workroot))
    server = Server(point, settings.server_cpu, workdir, list(settings.server_args),
                    settings.bin_dir)
    server.start()
    record = {"point": dataclasses.asdict(point) | {"key": point.key, "mode": point.mode},
              "settings": {"duration_s": settings.duration, "warmup_s": settings.warmup,
                           "arrival": settings.arrival if point.rate else None},
              "server_ready": server.ready_line, "ok": False}
    counter = None
    try:
        events = []
        if tools.perf_cs:
            events.append("context-switches")
        if point.probe and tools.perf_syscalls:
            events.append("raw_syscalls:sys_enter")
            if settings.syscall_names:
                events += [f"syscalls:sys_enter_{s}" for s in PROBE_SYSCALLS
                           if _tracepoint_exists(s)]
        if events:
            counter = PerfCounter(server.pid, events, workdir)
            counter.enable()
        elif point.probe and tools.strace:
            counter = StraceCounter(server.pid, workdir)
        ctx_before = proc_ctx_switches(server.pid)
        before = proc_stat(server.pid)
        cpus = {c for c in (settings.server_cpu, settings.load_cpu) if c is not None}
        busy_before = cpu_busy_s(cpus)

        json_path = workdir / "load.json"
        cmd = load_command(point, server.port, settings, json_path)
        record["commands"] = {"server": shlex.join(server.command), "load": shlex.join(cmd)}
        err_path = workdir / "load.err"
        with open(err_path, "wb") as err:
            load = Children.popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                  stdin=subprocess.DEVNULL)
        started = time.monotonic()
        deadline = started + settings.warmup + settings.duration + LOAD_SLACK_S
        threads_peak, names = before["threads"], thread_names(server.pid)
        while True:
            try:
                load.wait(timeout=SAMPLE_PERIOD_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                Children.reap(load, signal.SIGKILL)
                raise HarnessError(f"upcase-load did not finish within "
                                   f"{deadline - started:.0f}s; killed")
            now = proc_stat(server.pid)["threads"]
            if now > threads_peak:
                threads_peak, names = now, thread_names(server.pid)
        wall = time.monotonic() - started
        Children._live.pop(load.pid, None)
        after = proc_stat(server.pid)
        busy = cpu_busy_s(cpus) - busy_before
        ctx_after = proc_ctx_switches(server.pid)
        counts = counter.finish() if counter else {}
        counter = None
        if load.returncode != 0:
            lines = err_path.read_text(errors="replace").strip().splitlines()
            error = MismatchError if load.returncode == LOAD_EXIT_MISMATCH else HarnessError
            raise error(f"upcase-load exited {load.returncode}"
                        + (f": {lines[-1]}" if lines else ""))
        try:
            record["load"] = json.loads(json_path.read_text())
        except (OSError, ValueError) as e:
            raise HarnessError(f"upcase-load wrote no readable --json: {e}")

        server_info = {
            "pid": server.pid,
            "utime_s": after["utime_s"] - before["utime_s"],
            "stime_s": after["stime_s"] - before["stime_s"],
            "wall_s": wall,
            "threads_peak": threads_peak,
            "thread_names": names,
        }
        if "context-switches" in counts:
            server_info["ctx_switches"] = {"total": counts["context-switches"], "source": "perf"}
        else:
            total = sum(ctx_after.values()) - sum(ctx_before.values())
            server_info["ctx_switches"] = {"total": total, "source": "proc-live-threads"}
        if point.probe:
            if "raw_syscalls:sys_enter" in counts:
                by_name = {k.removeprefix("syscalls:sys_enter_"): v for k, v in counts.items()
                           if k.startswith("syscalls:") and v}
                server_info["syscalls"] = {"total": counts["raw_syscalls:sys_enter"],
                                           "by_name": by_name, "source": "perf"}
            elif counts:
                server_info["syscalls"] = {"total": sum(counts.values()), "by_name": counts,
                                           "source": "strace"}
        record["server"] = server_info
        # What every process used on the two CPUs: minus server and load, the noise.
        record["cpus"] = {"cpus": sorted(cpus), "busy_s": busy, "wall_s": wall}
    finally:
        if counter:
            try:
                counter.finish()
            except HarnessError:
                pass
        rc, stats = server.stop()
    record["server"]["exit_status"] = rc
    record["server"]["stats"] = stats
    if stats:
        total = stats.get("total", {})
        served = (total.get("bytes_in", 0) / point.size if point.proto == "tcp"
                  else total.get("datagrams_in", 0))
        record["server"]["requests_served"] = served
        record["server"]["requests_source"] = "server --stats-json"
    record["ok"] = True
    return record


# ---------------------------------------------------------------------------------------------
# A sequence of runs with progress lines, each saved as DIR/runs/NNN-....json.

class Runner:
    def __init__(self, out: pathlib.Path, settings: RunSettings, tools: Tools, total: int,
                 log=print):
        self.out, self.settings, self.tools, self.total, self.log = out, settings, tools, total, log
        self.done = 0
        self.dead: dict[str, str] = {}  # backend -> why its server would not start
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="upcase-harness-"))
        (out / "runs").mkdir(parents=True, exist_ok=True)

    def close(self):
        import shutil
        shutil.rmtree(self.work, ignore_errors=True)

    def run(self, point: Point, repeat: int, settings: RunSettings | None = None) -> dict | None:
        """Runs `point` unless its backend could not start before; returns the record."""
        self.done += 1
        tag = f"[{self.done}/{self.total}] {point.describe()}"
        if point.backend in self.dead:
            return None
        retried = None
        while True:
            try:
                rec = run_point(point, settings or self.settings, self.tools, self.work)
            except ServerStartError as e:
                self.dead[point.backend] = str(e)
                self.log(f"{tag}: SKIPPED backend {point.backend}: {e}")
                return None
            except HarnessError as e:
                # One retry absorbs a transient (a starved run that saw no reply in its
                # window); a wrong reply is a bug and is reported at once.
                if retried is None and not isinstance(e, MismatchError):
                    retried = str(e)
                    self.log(f"{tag}: {e}; retrying once")
                    continue
                rec = {"point": dataclasses.asdict(point) | {"key": point.key,
                                                             "mode": point.mode},
                       "ok": False, "error": str(e)}
                self.log(f"{tag}: FAILED: {e}")
            break
        if retried:
            rec["retried_after"] = retried
        if rec["ok"]:
            load, srv = rec["load"], rec["server"]
            served = srv.get("requests_served") or load.get("requests") or 0
            cpu = srv["utime_s"] + srv["stime_s"]
            extra = ""
            if point.probe and "syscalls" in srv and served:
                extra = f", {srv['syscalls']['total'] / served:.2f} syscalls/req"
            self.log(f"{tag}: {fmt_count(load.get('throughput_rps'))} req/s, "
                     f"p99 {load.get('latency_us', {}).get('p99', 0):.0f} µs, "
                     f"server {cpu * 1e6 / served if served else 0:.1f} µs CPU/req{extra}")
        rec["repeat"] = repeat
        name = f"{self.done:03d}-{point.backend}-{point.key}" + (
            "-probe" if point.probe else f"-r{repeat}")
        (self.out / "runs" / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
        return rec


def machine_info() -> dict:
    def read(path, pattern):
        try:
            m = re.search(pattern, pathlib.Path(path).read_text(), re.M)
            return m.group(1).strip() if m else "?"
        except OSError:
            return "?"
    mem_kb = read("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    return {"nproc": os.cpu_count(), "online_cpus": len(os.sched_getaffinity(0)),
            "kernel": os.uname().release, "cpu_model": read("/proc/cpuinfo", r"^model name\s*:(.*)$"),
            "memory": f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() else "?",
            "os": read("/etc/os-release", r'^PRETTY_NAME="?([^"\n]*)')}


def git_describe() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def cpus_for_runs() -> tuple[int | None, int | None, str | None]:
    """Server CPU, load CPU, and a note when the machine cannot keep them apart."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return cpus[0], cpus[1], None
    return cpus[0], cpus[0], (f"only CPU {cpus[0]} is available: server and load share it, "
                              "so figures are not comparable with 2-CPU results")


def build_release(log=print):
    """tools/install-deps, then the release preset, as DESIGN.md asks of tools/compare."""
    steps = [[str(ROOT / "tools" / "install-deps")],
             ["cmake", "--preset", "release", "-G", "Ninja"] if not
             (ROOT / "build" / "release" / "CMakeCache.txt").exists()
             else ["cmake", "--preset", "release"],
             ["cmake", "--build", "--preset", "release", "-j", str(os.cpu_count() or 1)]]
    for cmd in steps:
        log(f"$ {shlex.join(cmd)}")
        # Output goes straight to the terminal: a first build takes minutes and shows progress.
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL if "--preset" in cmd
                           and "--build" not in cmd else None)
        if r.returncode != 0:
            raise HarnessError(f"`{shlex.join(cmd)}` failed (exit {r.returncode})")


def parse_seconds(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|)\s*", text)
    if not m:
        raise ValueError(f"not a duration: '{text}' (e.g. 2s, 1.5, 500ms)")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "ms" else v
