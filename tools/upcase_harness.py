"""Runs one measurement: upcase-server on one CPU set, upcase-load on another, on loopback or
between hosts.

Shared by tools/compare and tools/regress. A run is, by default (2 CPUs),

    taskset -c 0 upcase-server --backend=B --bind=127.0.0.1 --shards=1 --proto=P 0
    (wait for its "ready" line, read /proc/PID/stat, enable perf counters on PID)
    taskset -c 1 upcase-load --proto=P ... --json=FILE 127.0.0.1 PORT
    (read /proc/PID/stat again, disable the counters, SIGTERM the server, read --stats-json)

RunSettings widens that: CPU sets for both sides (`taskset -c 0-3 upcase-server --shards=4
--pin`, `upcase-load --threads=4 --cpus=4-7`), and hosts: a Host runs the processes and reads
their /proc, locally (LocalHost) or through ssh (upcase_remote.SshHost), and several load hosts
start together with --start-at and are merged with `upcase-load merge`.

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
import sys
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
# With several load hosts, every instance gets the same --start-at this far ahead, time enough to
# start over ssh and connect before the common start.
START_AHEAD_S = 3.0
# The backends that take --shards and --pin (one reactor thread per shard).
SHARDED_BACKENDS = ("epoll", "uring")
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
    # Called first by kill_all: e.g. stopping remote processes while their ssh still runs.
    hooks: list = []

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
        for hook in list(cls.hooks):
            try:
                hook()
            except Exception as e:  # noqa: BLE001 - cleanup goes on whatever one step did
                print(f"cleanup: {e}", file=sys.stderr)
        cls.hooks.clear()
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
    shards: int | None = None  # epoll/uring: --shards; None = not swept (--shards=1)

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
        shards = f" shards={self.shards}" if self.shards else ""
        return (f"{self.backend}{shards} {self.proto} {fmt_size(self.size)} "
                f"c={self.connections} {load}{probe}")


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
# CPU lists ("0-3,8", as taskset and upcase-load --cpus take them).

def parse_cpu_list(text: str, allowed=None, flag: str = "--cpus") -> list[int]:
    """Sorted CPUs of a list such as 0-3,8; ValueError (one line) when malformed, empty, or
    naming a CPU outside `allowed`."""
    cpus = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"{flag}={text}: expected CPUs such as 0-3,8")
        lo = int(m.group(1))
        cpus.update(range(lo, int(m.group(2) or lo) + 1))
    if allowed is not None:
        outside = sorted(cpus - set(allowed))
        if outside:
            raise ValueError(f"{flag}={text}: CPU {fmt_cpu_list(outside)} not in the allowed set "
                             f"{fmt_cpu_list(allowed)}")
    return sorted(cpus)


def fmt_cpu_list(cpus) -> str:
    """[0, 1, 2, 3, 8] -> "0-3,8"."""
    out, run = [], []
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


def split_cpus(allowed) -> tuple[list[int], list[int], str | None]:
    """The default placement on one host: server on the first half of the allowed CPUs, load on
    the second (CPU 0 | CPU 1 on two CPUs); on one CPU both share it, with a note."""
    cpus = sorted(allowed)
    if len(cpus) >= 2:
        half = len(cpus) // 2
        return cpus[:half], cpus[half:], None
    return cpus, cpus, (f"only CPU {cpus[0]} is available: server and load share it, "
                        "so figures are not comparable with 2-CPU results")


# ---------------------------------------------------------------------------------------------
# /proc readers: parsers of the text, so a remote host's /proc (read through ssh) parses alike.

def parse_proc_stat(raw: str) -> dict:
    fields = raw[raw.rindex(")") + 2:].split()  # fields[0] is field 3 (state) of proc(5)
    return {"utime_s": int(fields[11]) / CLK_TCK, "stime_s": int(fields[12]) / CLK_TCK,
            "threads": int(fields[17])}


def proc_stat(pid: int) -> dict:
    """utime/stime (seconds, all threads, living and exited) and thread count from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return parse_proc_stat(f.read())


def parse_ctx_switches(statuses) -> dict:
    vol = invol = 0
    for text in statuses:
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return {"voluntary": vol, "involuntary": invol}


def _task_files(pid: int, name: str) -> list[str]:
    out = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            out.append((task / name).read_text())
        except OSError:
            continue  # the thread exited meanwhile
    return out


def proc_ctx_switches(pid: int) -> dict:
    """Context switches summed over the living threads (exited threads are not counted)."""
    return parse_ctx_switches(_task_files(pid, "status"))


def parse_cpu_busy(stat_text: str, cpus) -> float:
    """Non-idle seconds of these CPUs (every process, interrupts included) from /proc/stat."""
    total = 0
    for line in stat_text.splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals]
            total += sum(v[:8]) - v[3] - v[4]  # all but idle and iowait; guest is in user
    return total / CLK_TCK


def cpu_busy_s(cpus) -> float:
    with open("/proc/stat") as f:
        return parse_cpu_busy(f.read(), cpus)


def group_thread_names(comms) -> dict[str, int]:
    # Kernel helpers carry their number in the name (iou-wrk-1234): group them.
    return dict(collections.Counter(re.sub(r"-?\d+$", "", c.strip()) for c in comms))


def thread_names(pid: int) -> dict[str, int]:
    return group_thread_names(_task_files(pid, "comm"))


def parse_allowed_cpus(statuses) -> list[list[int]]:
    """Cpus_allowed_list of each thread, from /proc/PID/task/*/status texts."""
    out = []
    for text in statuses:
        m = re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.M)
        if m:
            out.append(parse_cpu_list(m.group(1)))
    return out


class LocalHost:
    """This machine: processes start as children, /proc is read directly."""
    name = "local"
    remote = False

    def allowed_cpus(self) -> list[int]:
        return sorted(os.sched_getaffinity(0))

    def binary(self, name: str, bin_dir: pathlib.Path | None = None) -> str:
        return str(binary(name, bin_dir))

    def proc_stat(self, pid):
        return proc_stat(pid)

    def ctx_switches(self, pid):
        return proc_ctx_switches(pid)

    def thread_names(self, pid):
        return thread_names(pid)

    def thread_cpus(self, pid) -> list[list[int]]:
        return parse_allowed_cpus(_task_files(pid, "status"))

    def cpu_busy_s(self, cpus) -> float:
        return cpu_busy_s(cpus)

    def tracepoint_exists(self, name: str) -> bool:
        return _tracepoint_exists(name)


LOCAL = LocalHost()


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
            text = self._stop()
        return parse_perf_csv(text, self.events)

    def _stop(self) -> str:
        """Ends perf stat; its CSV output."""
        Children.reap(self.proc, signal.SIGINT, timeout=10)
        os.close(self.ctl)
        os.close(self.ack)
        return self.out.read_text()


def parse_perf_csv(text: str, events) -> dict[str, int]:
    """`perf stat -x,` output: count,unit,event,... per line ("<not counted>" counts 0)."""
    counts = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] in events:
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
    return LineReader(stream).line(deadline)


class LineReader:
    """Lines from a pipe with a deadline each; keeps what arrived after a line for the next."""

    def __init__(self, stream):
        self.fd, self.buf = stream.fileno(), b""

    def line(self, deadline: float) -> bytes:
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            r, _, _ = select.select([self.fd], [], [], remaining)
            if r:
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    break
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line


# ---------------------------------------------------------------------------------------------
# The server.

class Server:
    """upcase-server on `host` (this machine or one reached through ssh)."""

    def __init__(self, point: Point, settings: "RunSettings", workdir: pathlib.Path, host=None):
        self.host = host or LOCAL
        self.log_path = workdir / "server.log"
        # On a remote host the counters go to its own work folder; read back at stop().
        self.stats_path = (self.host.work_path(f"stats-{workdir.name}.json") if self.host.remote
                           else workdir / "stats.json")
        self.command = [self.host.binary("upcase-server", settings.bin_dir),
                        f"--backend={point.backend}",
                        f"--bind={settings.bind_addr()}", f"--shards={point.shards or 1}"]
        if settings.pin and point.backend in SHARDED_BACKENDS:
            self.command.append("--pin")
        self.command += [f"--proto={point.proto}", f"--grace={fmt_duration(SERVER_GRACE_S)}",
                         f"--stats-json={self.stats_path}", *settings.server_args, "0"]
        cpus = settings.server_cpu_list()
        if cpus is not None:
            self.command = ["taskset", "-c", fmt_cpu_list(cpus)] + self.command
        self.proc = None
        self.remote_pid = None
        self.port = None
        self.ready_line = None

    def start(self):
        log = open(self.log_path, "wb")
        if self.host.remote:
            self.proc, self.remote_pid, reader = self.host.spawn(self.command, stderr=log)
        else:
            # taskset execs the server, so proc.pid is the server's PID.
            self.proc = Children.popen(self.command, stdout=subprocess.PIPE, stderr=log,
                                       stdin=subprocess.DEVNULL)
            reader = LineReader(self.proc.stdout)
        log.close()
        line = reader.line(time.monotonic() + READY_TIMEOUT_S).decode(errors="replace")
        m = re.search(r"^ready .*?(?:tcp|udp)=\S*:(\d+)", line)
        if not m:
            self.stop(signal.SIGKILL)
            raise ServerStartError(f"server did not get ready: {self.last_log_line() or line}")
        self.ready_line, self.port = line, int(m.group(1))

    @property
    def pid(self) -> int:
        """The server's PID on its host."""
        return self.remote_pid if self.host.remote else self.proc.pid

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self, sig=signal.SIGTERM) -> tuple[int, dict | None]:
        if self.host.remote:
            rc = self.host.stop(self.proc, self.remote_pid, sig, STOP_TIMEOUT_S)
            text = self.host.read_text(self.stats_path, remove=True)
        else:
            rc = Children.reap(self.proc, sig)
            try:
                text = pathlib.Path(self.stats_path).read_text()
            except OSError:
                text = None
        self.proc.stdout.close()
        try:
            stats = json.loads(text) if text else None
        except ValueError:
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
    # Placement beyond one CPU each (tools/compare's flags); the defaults keep the above.
    server_cpus: tuple[int, ...] | None = None  # replaces server_cpu
    load_cpus: tuple[int, ...] | None = None    # replaces load_cpu
    load_threads: int = 1
    pin: bool = False          # epoll/uring get --pin (shard i on the i-th CPU of server_cpus)
    server_host: object = None  # None: this machine; else an upcase_remote.SshHost
    load_hosts: tuple = ()      # () : this machine; else LOCAL and/or SshHosts
    server_addr: str | None = None  # where upcase-load connects (default 127.0.0.1)
    bin_dir: pathlib.Path | None = None  # local binaries from here (default BIN_DIR)
    # Probe runs count each of PROBE_SYSCALLS too; off, only the total (perf then exits in ~0.1 s
    # instead of ~1.5 s).
    syscall_names: bool = True

    def server_cpu_list(self) -> list[int] | None:
        if self.server_cpus is not None:
            return list(self.server_cpus)
        return None if self.server_cpu is None else [self.server_cpu]

    def load_cpu_list(self) -> list[int] | None:
        if self.load_cpus is not None:
            return list(self.load_cpus)
        return None if self.load_cpu is None else [self.load_cpu]

    def connect_addr(self) -> str:
        return self.server_addr or "127.0.0.1"

    def bind_addr(self) -> str:
        """The server binds to the address the load connects to when it is a literal (so it
        listens on the benchmark network only), else to every IPv4 address."""
        import ipaddress
        try:
            ipaddress.ip_address(self.connect_addr())
            return self.connect_addr()
        except ValueError:
            return "0.0.0.0"


def placement(point: Point, settings: RunSettings) -> dict:
    """Where a run's processes ran, as recorded in runs/*.json and stated by report.md."""
    server_host = settings.server_host or LOCAL
    load_hosts = [h for h, _, _ in load_shares(point, settings)]
    server_cpus, load_cpus = settings.server_cpu_list(), settings.load_cpu_list()
    shared = any(h is server_host for h in load_hosts)
    sharded = point.backend in SHARDED_BACKENDS
    return {"server_host": server_host.name, "server_cpus": server_cpus,
            "shards": (point.shards or 1) if sharded else None,
            "pin": bool(settings.pin and sharded),
            "load_hosts": [h.name for h in load_hosts], "load_cpus": load_cpus,
            "load_threads": settings.load_threads, "server_addr": settings.connect_addr(),
            "overlap_cpus": sorted(set(server_cpus) & set(load_cpus))
            if shared and server_cpus is not None and load_cpus is not None else []}


def load_shares(point: Point, settings: RunSettings) -> list[tuple[object, int, float]]:
    """(host, connections, rate) per load host: the point's connections and rate split evenly;
    with fewer connections than hosts, only the first hosts take part."""
    hosts = list(settings.load_hosts) or [LOCAL]
    hosts = hosts[:max(1, min(len(hosts), point.connections))]
    out = []
    for i, host in enumerate(hosts):
        conns = point.connections // len(hosts) + (1 if i < point.connections % len(hosts) else 0)
        out.append((host, conns, point.rate * conns / point.connections))
    return out


def load_command(point: Point, port: int, settings: RunSettings, json_path, host=None,
                 connections: int | None = None, rate: float | None = None,
                 start_at: float | None = None) -> list[str]:
    host = host or LOCAL
    connections = point.connections if connections is None else connections
    rate = point.rate if rate is None else rate
    cmd = [host.binary("upcase-load", settings.bin_dir), f"--proto={point.proto}",
           f"--connections={connections}", f"--threads={settings.load_threads}",
           f"--duration={fmt_duration(settings.duration)}",
           f"--warmup={fmt_duration(settings.warmup)}", f"--size={point.size}",
           f"--rate={rate:.0f}", f"--json={json_path}", "--quiet"]
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
    cpus = settings.load_cpu_list()
    if cpus is not None and (len(cpus) > 1 or settings.load_threads > 1):
        cmd.append(f"--cpus={fmt_cpu_list(cpus)}")  # thread i on the i-th CPU
    if start_at:
        cmd.append(f"--start-at={start_at:.3f}")
    cmd += [settings.connect_addr(), str(port)]
    if cpus is not None:
        cmd = ["taskset", "-c", fmt_cpu_list(cpus)] + cmd
    return cmd


@dataclasses.dataclass
class LoadInstance:
    """One upcase-load process of a run, on its host."""
    host: object
    command: list[str]
    json_path: object   # on its host
    err_path: pathlib.Path
    proc: subprocess.Popen | None = None
    remote_pid: int | None = None

    def start(self):
        with open(self.err_path, "wb") as err:
            if self.host.remote:
                self.proc, self.remote_pid, _ = self.host.spawn(self.command, stderr=err,
                                                                stdout_null=True)
            else:
                self.proc = Children.popen(self.command, stdout=subprocess.DEVNULL, stderr=err,
                                           stdin=subprocess.DEVNULL)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            if self.host.remote:
                self.host.stop(self.proc, self.remote_pid, signal.SIGKILL, 5)
            else:
                Children.reap(self.proc, signal.SIGKILL)

    def result(self) -> dict:
        """Its --json, after it exited; raises HarnessError (MismatchError) on failure."""
        where = f" on {self.host.name}" if self.host.remote else ""
        if self.host.remote:
            self.host.forget(self.proc, self.remote_pid)
        else:
            Children._live.pop(self.proc.pid, None)
        rc = self.proc.returncode
        if rc != 0:
            lines = self.err_path.read_text(errors="replace").strip().splitlines()
            error = MismatchError if rc == LOAD_EXIT_MISMATCH else HarnessError
            raise error(f"upcase-load{where} exited {rc}" + (f": {lines[-1]}" if lines else ""))
        try:
            text = (self.host.read_text(self.json_path, remove=True) if self.host.remote
                    else pathlib.Path(self.json_path).read_text())
            return json.loads(text or "")
        except (OSError, ValueError) as e:
            raise HarnessError(f"upcase-load{where} wrote no readable --json: {e}")


def merge_loads(docs: list[dict], workdir: pathlib.Path) -> dict:
    """One result from several load hosts' --json, by `upcase-load merge`."""
    paths = []
    for i, doc in enumerate(docs):
        paths.append(workdir / f"load-part-{i}.json")
        paths[-1].write_text(json.dumps(doc))
    merged = workdir / "load-merged.json"
    cmd = [str(binary("upcase-load")), "merge", f"--json={merged}", "--quiet", *map(str, paths)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        raise HarnessError("upcase-load merge failed" + (f": {lines[-1]}" if lines else ""))
    return json.loads(merged.read_text())


def run_point(point: Point, settings: RunSettings, tools: Tools, workroot: pathlib.Path) -> dict:
    """Runs one point and returns its record; raises HarnessError when it could not run."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=workroot))
    host = settings.server_host or LOCAL
    server = Server(point, settings, workdir, host)
    server.start()
    record = {"point": dataclasses.asdict(point) | {"key": point.key, "mode": point.mode},
              "settings": {"duration_s": settings.duration, "warmup_s": settings.warmup,
                           "arrival": settings.arrival if point.rate else None},
              "placement": placement(point, settings),
              "server_ready": server.ready_line, "ok": False}
    counter = None
    loads: list[LoadInstance] = []
    try:
        if host.remote:
            tools = host.tools  # what the server's host can count
        events = []
        if tools.perf_cs:
            events.append("context-switches")
        if point.probe and tools.perf_syscalls:
            events.append("raw_syscalls:sys_enter")
            if settings.syscall_names:
                events += [f"syscalls:sys_enter_{s}" for s in PROBE_SYSCALLS
                           if host.tracepoint_exists(s)]
        if events:
            counter = (host.perf_counter(server.pid, events) if host.remote
                       else PerfCounter(server.pid, events, workdir))
            counter.enable()
        elif point.probe and tools.strace and not host.remote:
            counter = StraceCounter(server.pid, workdir)
        ctx_before = host.ctx_switches(server.pid)
        before = host.proc_stat(server.pid)

        shares = load_shares(point, settings)
        # Every CPU in use, per host, for the "other processes" figure.
        sampled: dict[int, tuple[object, set]] = {}
        for h, cpus in [(host, settings.server_cpu_list())] + [
                (h, settings.load_cpu_list()) for h, _, _ in shares]:
            if cpus is not None:
                sampled.setdefault(id(h), (h, set()))[1].update(cpus)
        busy_before = sum(h.cpu_busy_s(c) for h, c in sampled.values())

        start_at = time.time() + START_AHEAD_S if len(shares) > 1 else None
        for i, (h, conns, rate) in enumerate(shares):
            json_path = (h.work_path(f"load-{workdir.name}-{i}.json") if h.remote
                         else workdir / ("load.json" if i == 0 else f"load-{i}.json"))
            cmd = load_command(point, server.port, settings, json_path, h, conns, rate, start_at)
            loads.append(LoadInstance(h, cmd, json_path, workdir / f"load-{i}.err"))
            loads[-1].start()
        record["commands"] = {"server": shlex.join(server.command),
                              "load": shlex.join(loads[0].command)}
        if host.remote:
            record["commands"]["server_host"] = host.name
        if len(loads) > 1:
            record["commands"]["loads"] = [{"host": l.host.name, "command": shlex.join(l.command)}
                                           for l in loads]
        started = time.monotonic()
        ahead = max(0.0, start_at - time.time()) if start_at else 0.0
        deadline = started + ahead + settings.warmup + settings.duration + LOAD_SLACK_S
        threads_peak, names = before["threads"], host.thread_names(server.pid)
        while True:
            running = [l for l in loads if l.proc.poll() is None]
            if not running:
                break
            try:
                running[0].proc.wait(timeout=SAMPLE_PERIOD_S)
                continue
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise HarnessError(f"upcase-load did not finish within "
                                   f"{deadline - started:.0f}s; killed")
            now = host.proc_stat(server.pid)["threads"]
            if now > threads_peak:
                threads_peak, names = now, host.thread_names(server.pid)
        wall = time.monotonic() - started - ahead
        after = host.proc_stat(server.pid)
        busy = sum(h.cpu_busy_s(c) for h, c in sampled.values()) - busy_before
        ctx_after = host.ctx_switches(server.pid)
        # Read late: a shard pins itself when its thread starts, which may follow "ready".
        thread_cpus = host.thread_cpus(server.pid)
        counts = counter.finish() if counter else {}
        counter = None
        docs = [l.result() for l in loads]
        record["load"] = docs[0] if len(docs) == 1 else merge_loads(docs, workdir)
        if len(docs) > 1:
            record["load_instances"] = [
                {"host": l.host.name, "connections": d.get("connections"),
                 "requests": d.get("requests"), "throughput_rps": d.get("throughput_rps"),
                 "client_cpu_s": d.get("client_cpu_s"), "start_unix_s": d.get("start_unix_s")}
                for l, d in zip(loads, docs)]

        server_info = {
            "pid": server.pid,
            "utime_s": after["utime_s"] - before["utime_s"],
            "stime_s": after["stime_s"] - before["stime_s"],
            "wall_s": wall,
            "threads_peak": threads_peak,
            "thread_names": names,
            "thread_cpus": sorted({fmt_cpu_list(c) for c in thread_cpus}),
        }
        server_cpus = settings.server_cpu_list()
        if server_cpus is not None and any(set(c) - set(server_cpus) for c in thread_cpus):
            record["placement"]["outside_server_cpus"] = True
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
            elif host.remote:
                server_info["syscalls_skipped"] = f"perf unusable on {host.name}"
        record["server"] = server_info
        # What every process used on the CPUs in use: minus server and load, the noise.
        record["cpus"] = {"cpus": sorted(c for _, cs in sampled.values() for c in cs),
                          "busy_s": busy, "wall_s": wall,
                          "client_cpu_s": sum(d.get("client_cpu_total_s",
                                                    d.get("client_cpu_s", 0.0)) for d in docs)}
        if len(sampled) > 1:
            record["cpus"]["hosts"] = {h.name: sorted(c) for h, c in sampled.values()}
    finally:
        for l in loads:
            l.kill()
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
        shards = f"-s{point.shards}" if point.shards else ""
        name = f"{self.done:03d}-{point.backend}{shards}-{point.key}" + (
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
    return cpus[0], cpus[0], split_cpus(cpus)[2]


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
