"""tools/compare --idle=0,1000,10000: the idle-connection experiment.

For each backend and each count N, a run is: the server (one shard, on the server CPUs, with
limits that admit N: --max-conns=N+EXTRA_CONNS, --max-conns-per-ip=0, --idle-timeout=0 so no
idle connection times out during the run); the holder (idle.py, on the load CPUs) opens N TCP
connections from 127.0.0.2.. and sends nothing on them; once the server's accept queue is empty
and the holder sees none of them closed, the usual run (runner.PointRun) measures a fixed
open-loop load, TCP 64 B on ACTIVE_CONNS connections at --idle-rate requests/s, the same for every
backend and N; then the holder checks again that all N are still open and closes them. One probe
run per backend and N counts syscalls (perf), as tools/compare's other probes do.

A backend *cannot hold N* when the holder could not open them all, the server closed any (select
past FD_SETSIZE, a --max-conns or descriptor limit), its counters show connections refused, or the
load failed while they did: reported as such (no figures), never as a failure, and larger counts
of that backend are not tried. iterative, one connection at a time, cannot serve the 64-connection
load at all and is not run. idle_summary.py fits the figures; docs/compare.md describes them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import subprocess
import sys
import time
from typing import Any

from . import compare, procfs
from .counters import PROBE_SYSCALLS
from .errors import HarnessError, ToolExit
from .plan import parse_list
from .points import Point, RunSettings
from .processes import Children, LineReader
from .runner import PointRun, Runner
from .units import fmt_count, parse_seconds

ACTIVE_CONNS = 64
SIZE = 64
DEFAULT_RATE = 2000.0            # req/s in total over the 64 connections (--idle-rate)
# (duration s, warm-up s, repeats): default and --quick.
SHAPES = {"default": (2.0, 0.5, 3), "quick": (1.0, 0.3, 1)}
# --max-conns beyond N + ACTIVE_CONNS (upcase-load's start-up probe connection, reconnects).
EXTRA_CONNS = 64
# Descriptors the server needs beyond its connections (listeners, stdio, files).
SPARE_FDS = 128
HOLDER = pathlib.Path(__file__).resolve().with_name("idle.py")
# The holder's handshakes may take this long, plus a second per CONNECT_PER_S connections (a
# server that accepts slowly fills its backlog, and SYNs then retry after 1, 3, 7 s ...).
CONNECT_PER_S = 200
CONNECT_BASE_S = 30.0
# How long the server may take to accept what the holder opened (beyond a second per 2000).
ACCEPT_BASE_S = 5.0
ACCEPT_POLL_S = 0.02
LINE_TIMEOUT_S = 10.0
# The share of the descriptor limit a syscall probe's perf may take (one per event and thread).
PERF_FD_SHARE = 0.8
# Flags of the matrix that do not apply to the idle experiment's fixed load.
NOT_WITH_IDLE = ("full", "sizes", "connections", "protos", "curve", "slo", "server_host",
                 "load_hosts", "remote_bin", "copy_bins")


@dataclasses.dataclass(frozen=True)
class IdlePoint(Point):
    idle: int = 0          # idle connections held open beside the load

    @property
    def key(self) -> str:
        return f"tcp-{self.size}B-c{self.connections}-open-idle{self.idle}"

    def describe(self) -> str:
        probe = " [syscall probe]" if self.probe else ""
        return (f"{self.backend} tcp {self.size}B c={self.connections} open "
                f"{fmt_count(self.rate)}/s +{self.idle} idle{probe}")


def parse_counts(text: str) -> list[int]:
    def count(t: str) -> int:
        if not t.isdigit():
            raise ValueError(f"'{t}': an idle connection count must be a whole number >= 0")
        return int(t)
    return sorted(parse_list(text, "--idle", count))


def parse_rate(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--idle-rate={text}: not a number of requests/s such as 2000") from None


def server_flags(n: int) -> tuple[str, ...]:
    """What lets the server hold n idle connections beside the load, for the whole run."""
    return (f"--max-conns={n + ACTIVE_CONNS + EXTRA_CONNS}", "--max-conns-per-ip=0",
            "--idle-timeout=0")


def raise_descriptor_limit(need: int) -> str | None:
    """Raises this process's RLIMIT_NOFILE (the server and holder inherit it) to `need`; a
    note when the hard limit stops it (root may raise that too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), max(hard, need)))
        return None
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return (f"descriptor limit {hard} (RLIMIT_NOFILE hard; raise it with `ulimit -Hn` as "
                f"root): counts near or above it cannot be held")


# ---------------------------------------------------------------------------------------------
# The holder, seen from here.

class Holder:
    """idle.py holding n connections to the server on port, on the load CPUs."""

    def __init__(self, n: int, port: int, addr: str, cpus: list[int] | None, lifetime: float):
        self.connect_s = CONNECT_BASE_S + n / CONNECT_PER_S
        cmd = [sys.executable, str(HOLDER), f"--connections={n}",
               f"--connect-timeout={self.connect_s:g}", f"--lifetime={lifetime:.0f}", addr,
               str(port)]
        if cpus:
            cmd = ["taskset", "-c", procfs.fmt_cpu_list(cpus)] + cmd
        self.command = cmd
        self.proc = Children.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        self.reader = LineReader(self.proc.stdout)  # type: ignore[arg-type]

    def line(self, timeout: float) -> str:
        text = self.reader.line(time.monotonic() + timeout).decode(errors="replace").strip()
        if not text:
            raise HarnessError("the idle holder (tools/upcase/idle.py) said nothing in time")
        return text

    def held(self) -> tuple[int, str | None]:
        """(connections established, why fewer than asked or None)."""
        text = self.line(self.connect_s + LINE_TIMEOUT_S)
        words = text.split()
        if words[0] == "held":
            return int(words[1]), None
        if words[0] == "partial":
            return int(words[1]), text.split(":", 1)[1].strip()
        raise HarnessError(f"idle holder: {text}")

    def check(self) -> int:
        """How many held connections the server has closed."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"check\n")
        self.proc.stdin.flush()
        words = self.line(LINE_TIMEOUT_S).split()
        if words[:1] != ["open"] or len(words) != 4:
            raise HarnessError(f"idle holder: {' '.join(words)}")
        return int(words[3])

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"close\n")
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        Children.reap(self.proc, timeout=LINE_TIMEOUT_S)
        if self.proc.stdout:
            self.proc.stdout.close()


def wait_accepted(port: int, timeout: float) -> int | None:
    """Waits (bounded) until the server's accept queue on port is empty; what is left in it."""
    deadline = time.monotonic() + timeout
    while True:
        left = procfs.listen_queue(port)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(ACCEPT_POLL_S)


def refusals(stats: dict | None) -> dict[str, int]:
    """The server's counters of TCP connections closed at once by policy or limit."""
    total = (stats or {}).get("total", {})
    return {k: v for k, v in total.items()
            if (k == "rejected" or k.endswith("_refused")) and not k.startswith("udp") and v}


def kernel_memory() -> dict:
    return {"sockstat": procfs.sockstat(), "slab_kib": procfs.slab_kib()}


# ---------------------------------------------------------------------------------------------
# One run: hold, measure, check.

class IdlePointRun(PointRun):
    """PointRun with N idle connections held around the measurement (record["idle"])."""

    holder: Holder | None = None
    load_error: str | None = None

    def _body(self) -> None:
        point = self.point
        assert isinstance(point, IdlePoint)
        idle: dict = {"requested": point.idle, "kernel_before": kernel_memory()}
        self.record["idle"] = idle
        if point.idle:
            self.holder = self._hold(idle)
        if idle.get("reason") is not None:
            return  # could not hold them: reported, not measured
        idle["kernel_held"] = kernel_memory()
        idle["server_memory_held"] = procfs.tree_memory(self.server.pid)
        if point.probe:
            self._probe_budget(idle)
        try:
            self._measure()
        except HarnessError as e:
            self.load_error = str(e)
        idle["server_memory_end"] = procfs.tree_memory(self.server.pid)
        if self.holder:
            idle["closed_end"] = self.holder.check()

    def _release(self) -> None:
        if self.holder:
            self.holder.close()

    def _conclude(self, stats: dict | None) -> None:
        self._classify(self.record["idle"], stats, self.load_error)

    def _probe_budget(self, idle: dict) -> None:
        """perf opens a descriptor per counted event and thread of the server: with many
        threads (a thread per connection) count only the total, or nothing when even that
        would not fit the descriptor limit perf inherits (idle["syscalls_counted"])."""
        threads = procfs.proc_stat(self.server.pid)["threads"]
        budget = resource.getrlimit(resource.RLIMIT_NOFILE)[0] * PERF_FD_SHARE
        if threads * (len(PROBE_SYSCALLS) + 2) <= budget:
            idle["syscalls_counted"] = "by name"
        elif threads * 2 <= budget:
            self.settings = dataclasses.replace(self.settings, syscall_names=False)
            idle["syscalls_counted"] = "total only"
        else:
            self.skip_count = True
            idle["syscalls_counted"] = (f"none: perf would need {threads * 2} descriptors for "
                                        f"{threads} server threads")

    def _start_counter(self) -> None:
        if not getattr(self, "skip_count", False):
            super()._start_counter()

    def _hold(self, idle: dict) -> Holder:
        """Opens the idle connections and waits until the server has accepted them; sets
        idle["reason"] when it could not hold them all."""
        n, s = self.point.idle, self.settings  # type: ignore[attr-defined]
        lifetime = (CONNECT_BASE_S + n / CONNECT_PER_S + ACCEPT_BASE_S + n / 2000 + s.warmup
                    + s.duration + 120)
        holder = Holder(n, self.server.port or 0, s.connect_addr(), s.load_cpu_list(), lifetime)
        self.record.setdefault("commands", {})["idle_holder"] = " ".join(
            "tools/upcase/idle.py" if c == str(HOLDER) else c for c in holder.command)
        started = time.monotonic()
        idle["opened"], why = holder.held()
        idle["connect_s"] = time.monotonic() - started
        queued = wait_accepted(self.server.port or 0, ACCEPT_BASE_S + n / 2000)
        idle["accept_s"] = time.monotonic() - started
        idle["closed_before"] = holder.check()
        if why:
            idle["reason"] = f"opened {idle['opened']} of {n}: {why}"
        elif queued:
            idle["reason"] = f"{queued} still waiting in the server's accept queue"
        elif idle["closed_before"]:
            idle["reason"] = f"the server closed {idle['closed_before']} of {n}"
        return holder

    def _classify(self, idle: dict, stats: dict | None, load_error: str | None) -> None:
        """Whether the server held every idle connection through the run (idle["held"])."""
        refused = refusals(stats)
        idle["refused"] = refused
        reason = idle.get("reason")
        if reason is None and idle.get("closed_end"):
            reason = f"the server closed {idle['closed_end']} of {idle['requested']} during the run"
        if reason is None and refused:
            reason = "the server refused connections (" + ", ".join(
                f"{k}={v}" for k, v in refused.items()) + ")"
        if reason is None and load_error:
            raise HarnessError(load_error)  # held everything: a real failure
        if reason and refused and "refused" not in reason:
            reason += " (" + ", ".join(f"{k}={v}" for k, v in refused.items()) + ")"
        idle["held"] = reason is None
        idle["reason"] = reason
        if load_error:
            idle["load_error"] = load_error


class IdleRunner(Runner):
    """Runs IdlePoints; skips counts above one a backend could not hold."""
    point_run = IdlePointRun

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.cannot: dict[str, int] = {}   # backend -> the smallest count it could not hold

    def run(self, point: Point, repeat: int, settings: RunSettings | None = None) -> dict | None:
        assert isinstance(point, IdlePoint)
        least = self.cannot.get(point.backend)
        if least is not None and point.idle >= least:
            self.done += 1
            why = f"not tried: could not hold {least}"
            self.log(f"[{self.done}/{self.total}] {point.describe()}: cannot hold "
                     f"{point.idle} idle connections: {why}")
            rec: dict = {"point": point.record(), "ok": True, "repeat": repeat,
                         "idle": {"requested": point.idle, "held": False, "reason": why}}
            name = f"{self.done:03d}-{point.backend}-{point.key}" + (
                "-probe" if point.probe else f"-r{repeat}")
            (self.out / "runs" / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
            return rec
        got = super().run(point, repeat, settings)
        if got and got.get("ok") and not got["idle"]["held"]:
            self.cannot[point.backend] = min(point.idle, self.cannot.get(point.backend, point.idle))
        return got

    @staticmethod
    def _progress(point: Point, rec: dict) -> str:
        idle = rec["idle"]
        if not idle["held"]:
            return f"cannot hold {idle['requested']} idle connections: {idle['reason']}"
        text = Runner._progress(point, rec)
        mem = idle.get("server_memory_end") or {}
        return text + (f", RSS {mem.get('rss_kib', 0) / 1024:.1f} MiB" if mem else "")


# ---------------------------------------------------------------------------------------------
# The whole experiment.

def check_flags(args: argparse.Namespace) -> tuple[list[int], float, float, float, int]:
    """(counts, rate, duration, warm-up, repeats) from the flags; ToolExit when malformed."""
    for name in NOT_WITH_IDLE:
        if getattr(args, name, None):
            raise ToolExit(f"--{name.replace('_', '-')} does not apply to --idle (its load is "
                           f"fixed: TCP {SIZE} B on {ACTIVE_CONNS} connections, open loop, on "
                           "this host)")
    if args.shards and "," in args.shards:
        raise ToolExit("--idle takes one --shards value, not a sweep")
    duration, warmup, repeat = SHAPES["quick" if args.quick else "default"]
    try:
        counts = parse_counts(args.idle)
        rate = parse_rate(args.idle_rate) if args.idle_rate is not None else DEFAULT_RATE
        duration = parse_seconds(args.duration) if args.duration else duration
        warmup = parse_seconds(args.warmup) if args.warmup is not None else warmup
    except ValueError as e:
        raise ToolExit(str(e))
    repeat = args.repeat if args.repeat is not None else repeat
    if rate <= 0 or repeat < 1 or duration <= 0:
        raise ToolExit("--idle-rate must be > 0, --repeat >= 1 and --duration > 0")
    return counts, rate, duration, warmup, repeat


def make_points(backends: list[str], counts: list[int], rate: float, repeat: int,
                probes: bool) -> list[tuple[IdlePoint, int, bool]]:
    """(point, repeat, is a probe) in run order: repeats outermost, then counts, then backends,
    so slow drift spreads over every backend; the syscall probes last."""
    def point(b: str, n: int, probe: bool) -> IdlePoint:
        return IdlePoint(b, "tcp", SIZE, ACTIVE_CONNS, rate=rate, label=f"idle{n}",
                         probe=probe, idle=n)
    out = [(point(b, n, False), r, False) for r in range(repeat) for n in counts
           for b in backends]
    if probes:
        out += [(point(b, n, True), 0, True) for n in counts for b in backends]
    return out


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """tools/compare --idle: environment, runs, report."""
    counts, rate, duration, warmup, repeat = check_flags(args)
    env = compare.environment(args)
    env.notes[:] = [n for n in env.notes if not n.startswith("iterative")]
    backends = [b for b in env.backends if b != "iterative"]
    not_run = {}
    if "iterative" in env.backends:
        not_run["iterative"] = "serves one connection at a time"
        env.notes.append("iterative not run: it serves one connection at a time, so it cannot "
                         f"serve the {ACTIVE_CONNS}-connection load, idle connections or not")
    if not backends:
        raise ToolExit("--idle needs a backend other than iterative")
    note = raise_descriptor_limit(max(counts) + ACTIVE_CONNS + EXTRA_CONNS + SPARE_FDS)
    if note:
        env.notes.append(note)
    place = env.place
    settings = RunSettings(duration=duration, warmup=warmup, server_cpu=place["server_cpus"][0],
                           load_cpu=place["load_cpus"][0], server_cpus=tuple(place["server_cpus"]),
                           load_cpus=tuple(place["load_cpus"]),
                           load_threads=place["load_threads"], server_placement=True,
                           pin=len(place["server_cpus"]) > 1,
                           server_args=tuple(args.server_arg))
    probe = dataclasses.replace(settings, duration=min(duration, compare.PROBE_DURATION_S))
    plan = make_points(backends, counts, rate, repeat,
                       env.tools.perf_syscalls or env.tools.strace)
    out = pathlib.Path(args.out)
    compare.prepare_out(out)
    meta = idle_meta(args, argv, env, settings, counts, rate, repeat, backends)
    meta["idle"]["not_run"] = not_run
    estimate = sum((s.duration + warmup + compare.RUN_OVERHEAD_S + p.idle / 2000)
                   for p, _, pr in plan for s in [probe if pr else settings])
    print(f"tools/compare: idle experiment: backends {', '.join(backends)}; idle counts "
          f"{','.join(map(str, counts))}; {len(plan)} runs, about {estimate / 60:.1f} min; "
          f"results in {out}/")
    for n in env.notes:
        print(f"  note: {n}")
    return run_plan(out, plan, settings, probe, env, meta)


def idle_meta(args: argparse.Namespace, argv: list[str], env: compare.Environment,
              settings: RunSettings, counts: list[int], rate: float, repeat: int,
              backends: list[str]) -> dict:
    """meta.json: tools/compare's, with the experiment and its load."""
    meta = compare.make_meta(args, argv, _Choice(settings, repeat),  # type: ignore[arg-type]
                             env, _Plan(settings))  # type: ignore[arg-type]
    meta["experiment"] = "idle"
    meta["settings"]["backends"] = backends
    meta["idle"] = {"counts": counts, "rate_rps": rate, "connections": ACTIVE_CONNS,
                    "size": SIZE, "server_flags": "--max-conns=N+" f"{ACTIVE_CONNS + EXTRA_CONNS}"
                    " --max-conns-per-ip=0 --idle-timeout=0", "sources": 8}
    return meta


@dataclasses.dataclass
class _Choice:
    """What compare.make_meta reads of a MatrixChoice."""
    settings: RunSettings
    repeat: int
    name: str = "idle"

    @property
    def duration(self) -> float:
        return self.settings.duration

    @property
    def warmup(self) -> float:
        return self.settings.warmup


@dataclasses.dataclass
class _Plan:
    """What compare.make_meta reads of a RunPlan."""
    settings: RunSettings

    @property
    def base(self) -> dict:
        return {"server_cpu": self.settings.server_cpu, "load_cpu": self.settings.load_cpu,
                "pin": self.settings.pin, "server_args": self.settings.server_args}


def run_plan(out: pathlib.Path, plan: list[tuple[IdlePoint, int, bool]], settings: RunSettings,
             probe: RunSettings, env: compare.Environment, meta: dict) -> int:
    runner = IdleRunner(out, settings, env.tools, len(plan))
    status = 0
    try:
        for point, r, is_probe in plan:
            s = probe if is_probe else settings
            flags = server_flags(point.idle)
            runner.run(point, r, dataclasses.replace(s, server_args=flags + s.server_args))
    except KeyboardInterrupt:
        print("\ntools/compare: interrupted; reporting what was measured", file=sys.stderr)
        meta["notes"].append("interrupted: the experiment is incomplete")
        status = 130
    finally:
        Children.kill_all()
        runner.close()
        for b, why in runner.dead.items():
            meta["notes"].append(f"backend {b} skipped: {why}")
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return compare.write_report(out, runner, status)
