"""The point runner: one measurement, and a sequence of them with progress lines.

A run is, by default (2 CPUs),

    taskset -c 0 upcase-server --backend=B --bind=127.0.0.1 --shards=1 --proto=P 0
    (wait for its "ready" line, read /proc/PID/stat, enable perf counters on PID)
    taskset -c 1 upcase-load --proto=P ... --json=FILE 127.0.0.1 PORT
    (read /proc/PID/stat again, disable the counters, SIGTERM the server, read --stats-json)

RunSettings widens that: CPU sets for both sides (`taskset -c 0-3 upcase-server --shards=4
--pin`, `upcase-load --threads=4 --cpus=4-7`), and hosts: a host runs the processes and reads
their /proc, locally (hosts.LOCAL) or through ssh (hosts.SshHost), and several load hosts start
together with --start-at and are merged with `upcase-load merge`.

A run yields one JSON-able dict: the point, the commands, upcase-load's own JSON untouched (its
keys: docs/upcase-load.md), and what the server cost (CPU seconds, context switches, peak
threads, syscalls when probed, its --stats-json counters: docs/upcase-server.md). Per-request
figures divide by the requests the *server* counted over the whole run (warm-up, connection
set-up and tear-down included), so every figure shares one window.
Runner runs a sequence of points, retries a transient failure once and saves each record as
DIR/runs/NNN-....json.
"""
from __future__ import annotations

import json
import pathlib
import shlex
import shutil
import subprocess
import tempfile
import time
from typing import Any, Callable

from .counters import PROBE_SYSCALLS, PerfCounter, StraceCounter, Tools
from .errors import HarnessError, MismatchError, ServerStartError
from .hosts import LOCAL
from .points import SHARDED_BACKENDS, Point, RunSettings
from .processes import LoadInstance, Server, load_command, merge_loads
from .procfs import fmt_cpu_list
from .units import fmt_count

# A load run may overrun warmup+duration by this much (connecting 1024 sockets, writing JSON)
# before it is killed.
LOAD_SLACK_S = 30.0
# How often peak thread count is sampled while a load runs.
SAMPLE_PERIOD_S = 0.05
# With several load hosts, every instance gets the same --start-at this far ahead, time enough to
# start over ssh and connect before the common start.
START_AHEAD_S = 3.0


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


def load_shares(point: Point, settings: RunSettings) -> list[tuple[Any, int, float]]:
    """(host, connections, rate) per load host: the point's connections and rate split evenly;
    with fewer connections than hosts, only the first hosts take part."""
    hosts = list(settings.load_hosts) or [LOCAL]
    hosts = hosts[:max(1, min(len(hosts), point.connections))]
    out = []
    for i, host in enumerate(hosts):
        conns = point.connections // len(hosts) + (1 if i < point.connections % len(hosts) else 0)
        out.append((host, conns, point.rate * conns / point.connections))
    return out


class PointRun:
    """One run of a point: its server, counters, load instances and the record they make."""

    def __init__(self, point: Point, settings: RunSettings, tools: Tools,
                 workroot: pathlib.Path):
        self.point, self.settings = point, settings
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=workroot))
        self.host: Any = settings.server_host or LOCAL
        # What the server's host can count.
        self.tools = self.host.tools if self.host.remote else tools
        self.server = Server(point, settings, self.workdir, self.host)
        self.counter: Any = None
        self.loads: list[LoadInstance] = []
        self.sampled: dict[int, tuple[Any, set]] = {}
        self.record: dict = {}

    def run(self) -> dict:
        """Runs the point and returns its record; raises HarnessError when it could not run."""
        self.server.start()
        self.record = {"point": self.point.record(),
                       "settings": {"duration_s": self.settings.duration,
                                    "warmup_s": self.settings.warmup,
                                    "arrival": self.settings.arrival if self.point.rate
                                    else None},
                       "placement": placement(self.point, self.settings),
                       "server_ready": self.server.ready_line, "ok": False}
        try:
            self._body()
        finally:
            for load in self.loads:
                load.kill()
            if self.counter:
                try:
                    self.counter.finish()
                except HarnessError:
                    pass
            self._release()
            rc, stats = self.server.stop()
        self._server_stats(rc, stats)
        self._conclude(stats)
        self.record["ok"] = True
        return self.record

    # Hooks of a run with more around the measurement (idle_experiment.IdlePointRun).
    def _body(self) -> None:
        """Everything between the server's start and the teardown: here, the measurement."""
        self._measure()

    def _release(self) -> None:
        """Whatever _body holds besides the loads and the counter, freed before the server
        stops."""

    def _conclude(self, stats: dict | None) -> None:
        """What the run concludes from the server's final counters (may raise HarnessError)."""

    def _start_counter(self) -> None:
        """perf on the server's PID (context switches; syscalls in a probe), else strace for a
        local probe, else nothing."""
        point, host, tools = self.point, self.host, self.tools
        events = []
        if tools.perf_cs:
            events.append("context-switches")
        if point.probe and tools.perf_syscalls:
            events.append("raw_syscalls:sys_enter")
            if self.settings.syscall_names:
                events += [f"syscalls:sys_enter_{s}" for s in PROBE_SYSCALLS
                           if host.tracepoint_exists(s)]
        if events:
            self.counter = (host.perf_counter(self.server.pid, events) if host.remote
                            else PerfCounter(self.server.pid, events, self.workdir))
            self.counter.enable()
        elif point.probe and tools.strace and not host.remote:
            self.counter = StraceCounter(self.server.pid, self.workdir)

    def _busy_s(self) -> float:
        return sum(h.cpu_busy_s(c) for h, c in self.sampled.values())

    def _sample_cpus(self, shares: list[tuple[Any, int, float]]) -> None:
        """Every CPU in use, per host, for the "other processes" figure."""
        for h, cpus in [(self.host, self.settings.server_cpu_list())] + [
                (h, self.settings.load_cpu_list()) for h, _, _ in shares]:
            if cpus is not None:
                self.sampled.setdefault(id(h), (h, set()))[1].update(cpus)

    def _start_loads(self, shares: list[tuple[Any, int, float]]) -> float | None:
        """Starts one upcase-load per load host; the common --start-at when several."""
        start_at = time.time() + START_AHEAD_S if len(shares) > 1 else None
        for i, (h, conns, rate) in enumerate(shares):
            json_path = (h.work_path(f"load-{self.workdir.name}-{i}.json") if h.remote
                         else self.workdir / ("load.json" if i == 0 else f"load-{i}.json"))
            assert self.server.port is not None
            cmd = load_command(self.point, self.server.port, self.settings, json_path, h, conns,
                               rate, start_at, self.server.pid if h is self.host else None)
            self.loads.append(LoadInstance(h, cmd, json_path, self.workdir / f"load-{i}.err"))
            self.loads[-1].start()
        commands: dict[str, Any] = {"server": shlex.join(self.server.command),
                                    "load": shlex.join(self.loads[0].command)}
        if self.host.remote:
            commands["server_host"] = self.host.name
        if len(self.loads) > 1:
            commands["loads"] = [{"host": x.host.name, "command": shlex.join(x.command)}
                                 for x in self.loads]
        self.record["commands"] = commands
        return start_at

    def _wait_loads(self, deadline: float, started: float, threads: int) -> tuple[int, dict]:
        """Waits for every load to finish, sampling the server's peak thread count; (peak,
        thread names at the peak)."""
        host, pid = self.host, self.server.pid
        peak, names = threads, host.thread_names(pid)
        while True:
            running = [x for x in self.loads if x.proc and x.proc.poll() is None]
            if not running:
                return peak, names
            try:
                running[0].proc.wait(timeout=SAMPLE_PERIOD_S)  # type: ignore[union-attr]
                continue
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise HarnessError(f"upcase-load did not finish within "
                                   f"{deadline - started:.0f}s; killed")
            now = host.proc_stat(pid)["threads"]
            if now > peak:
                peak, names = now, host.thread_names(pid)

    def _measure(self) -> None:
        host, pid, settings = self.host, self.server.pid, self.settings
        self._start_counter()
        ctx_before = host.ctx_switches(pid)
        before = host.tree_stat(pid)
        shares = load_shares(self.point, settings)
        self._sample_cpus(shares)
        busy_before = self._busy_s()
        start_at = self._start_loads(shares)
        started = time.monotonic()
        ahead = max(0.0, start_at - time.time()) if start_at else 0.0
        deadline = started + ahead + settings.warmup + settings.duration + LOAD_SLACK_S
        peak, names = self._wait_loads(deadline, started, before["threads"])
        wall = time.monotonic() - started - ahead
        after = host.tree_stat(pid)
        busy = self._busy_s() - busy_before
        ctx_after = host.ctx_switches(pid)
        # Read late: a shard pins itself when its thread starts, which may follow "ready".
        thread_cpus = host.thread_cpus(pid)
        counts = self.counter.finish() if self.counter else {}
        self.counter = None
        docs = self._load_results()
        info = {"pid": pid, "utime_s": after["utime_s"] - before["utime_s"],
                "stime_s": after["stime_s"] - before["stime_s"], "wall_s": wall,
                "threads_peak": peak, "thread_names": names,
                "thread_cpus": sorted({fmt_cpu_list(c) for c in thread_cpus})}
        server_cpus = settings.server_cpu_list()
        if server_cpus is not None and any(set(c) - set(server_cpus) for c in thread_cpus):
            self.record["placement"]["outside_server_cpus"] = True
        if "context-switches" in counts:
            info["ctx_switches"] = {"total": counts["context-switches"], "source": "perf"}
        else:
            total = sum(ctx_after.values()) - sum(ctx_before.values())
            info["ctx_switches"] = {"total": total, "source": "proc-live-threads"}
        if self.point.probe:
            info.update(self._syscalls(counts))
        self.record["server"] = info
        self._cpus_record(busy, wall, docs)

    def _load_results(self) -> list[dict]:
        """Every instance's --json; record["load"] is the one, or their merge."""
        docs = [x.result() for x in self.loads]
        self.record["load"] = docs[0] if len(docs) == 1 else merge_loads(docs, self.workdir)
        if len(docs) > 1:
            self.record["load_instances"] = [
                {"host": x.host.name, "connections": d.get("connections"),
                 "requests": d.get("requests"), "throughput_rps": d.get("throughput_rps"),
                 "client_cpu_s": d.get("client_cpu_s"), "start_unix_s": d.get("start_unix_s")}
                for x, d in zip(self.loads, docs)]
        return docs

    def _syscalls(self, counts: dict[str, int]) -> dict:
        """A probe's syscall counts, by perf's tracepoints or strace."""
        if "raw_syscalls:sys_enter" in counts:
            by_name = {k.removeprefix("syscalls:sys_enter_"): v for k, v in counts.items()
                       if k.startswith("syscalls:") and v}
            return {"syscalls": {"total": counts["raw_syscalls:sys_enter"],
                                 "by_name": by_name, "source": "perf"}}
        if counts:
            return {"syscalls": {"total": sum(counts.values()), "by_name": counts,
                                 "source": "strace"}}
        if self.host.remote:
            return {"syscalls_skipped": f"perf unusable on {self.host.name}"}
        return {}

    def _cpus_record(self, busy: float, wall: float, docs: list[dict]) -> None:
        """What every process used on the CPUs in use: minus server and load, the noise."""
        self.record["cpus"] = {
            "cpus": sorted(c for _, cs in self.sampled.values() for c in cs),
            "busy_s": busy, "wall_s": wall,
            "client_cpu_s": sum(d.get("client_cpu_total_s", d.get("client_cpu_s", 0.0))
                                for d in docs)}
        if len(self.sampled) > 1:
            self.record["cpus"]["hosts"] = {h.name: sorted(c) for h, c in self.sampled.values()}

    def _server_stats(self, rc: int, stats: dict | None) -> None:
        # A run that measured nothing (idle connections it could not hold) still reports them.
        server = self.record.setdefault("server", {"pid": self.server.pid})
        server["exit_status"] = rc
        server["stats"] = stats
        if stats:
            total = stats.get("total", {})
            served = (total.get("bytes_in", 0) / self.point.size if self.point.proto == "tcp"
                      else total.get("datagrams_in", 0))
            server["requests_served"] = served
            server["requests_source"] = "server --stats-json"


def run_point(point: Point, settings: RunSettings, tools: Tools, workroot: pathlib.Path) -> dict:
    """Runs one point and returns its record; raises HarnessError when it could not run."""
    return PointRun(point, settings, tools, workroot).run()


# ---------------------------------------------------------------------------------------------
# A sequence of runs with progress lines, each saved as DIR/runs/NNN-....json.

class Runner:
    # What runs one point (the idle experiment's runner swaps in its own).
    point_run: type[PointRun] = PointRun

    def __init__(self, out: pathlib.Path, settings: RunSettings, tools: Tools, total: int,
                 log: Callable[[str], None] = print):
        self.out, self.settings, self.tools, self.total, self.log = out, settings, tools, total, log
        self.done = 0
        self.dead: dict[str, str] = {}  # backend -> why its server would not start
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="upcase-harness-"))
        (out / "runs").mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
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
                rec = self.point_run(point, settings or self.settings, self.tools,
                                     self.work).run()
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
                rec = {"point": point.record(), "ok": False, "error": str(e)}
                self.log(f"{tag}: FAILED: {e}")
            break
        if retried:
            rec["retried_after"] = retried
        if rec["ok"]:
            self.log(f"{tag}: {self._progress(point, rec)}")
        rec["repeat"] = repeat
        shards = f"-s{point.shards}" if point.shards else ""
        name = f"{self.done:03d}-{point.backend}{shards}-{point.key}" + (
            "-probe" if point.probe else f"-r{repeat}")
        (self.out / "runs" / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
        return rec

    @staticmethod
    def _progress(point: Point, rec: dict) -> str:
        load, srv = rec["load"], rec["server"]
        served = srv.get("requests_served") or load.get("requests") or 0
        cpu = srv["utime_s"] + srv["stime_s"]
        extra = ""
        if point.probe and "syscalls" in srv and served:
            extra = f", {srv['syscalls']['total'] / served:.2f} syscalls/req"
        return (f"{fmt_count(load.get('throughput_rps'))} req/s, "
                f"p99 {load.get('latency_us', {}).get('p99', 0):.0f} µs, "
                f"server {cpu * 1e6 / served if served else 0:.1f} µs CPU/req{extra}")
