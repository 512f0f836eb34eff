"""tools/regress's A/B mode: the same matrix measured for the base build (A) and the candidate
build (B), interleaved, then judged metric by metric (statistics in stats.py, verdicts and
report.md in verdicts.py).

A round runs the items of the plan once per side, the two sides back to back: the k-th pair of
item i runs A then B when k + i is even, else B then A, so every item alternates which side goes
first (drift over a round and the effect of going second hit both sides equally), and consecutive
items alternate too. An item is a closed-loop run (server CPU µs per request, requests/s; every
round), a syscall probe (syscalls per request, perf counting the total only) or one invocation of
uppercase_bench (GB/s of each kernel benchmark: the median of its repetitions), both every other
round. Runs are the harness's: server on one CPU with --shards=1, upcase-load on the other,
loopback, bounded. Pairs the machine's speed changed in are measured again (Measurement).

Both sides are driven by the same upcase-load, the candidate's by default: the load generator is
the instrument, and a change to it would otherwise show up as a change of the server.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shlex
import statistics
import subprocess
import time
from typing import Any, Callable

from .. import curve as curves
from ..counters import Tools
from ..points import Point, RunSettings
from ..processes import Children
from ..runner import Runner
from ..summary import BACKEND_ORDER, run_metrics
from . import curve_ab

SIDES = ("base", "candidate")

# Per metric family: the good direction and the tolerance. A change within the tolerance is not
# worth a verdict: it is the size of the differences between two builds of the same source measured
# side by side here (see results/regress-power/), and below what a CI check should fail on.
FAMILIES: dict[str, dict[str, Any]] = {
    "cpu_us_per_req": {"label": "CPU µs/req", "better": "lower", "tolerance": 0.02},
    "rps": {"label": "req/s", "better": "higher", "tolerance": 0.05},
    "syscalls_per_req": {"label": "syscalls/req", "better": "lower", "tolerance": 0.10},
    "gbps": {"label": "GB/s", "better": "higher", "tolerance": 0.05},
    # --curve only: the knee and the capacity are bisected to a few per cent of the rate, so a
    # smaller tolerance would judge the bisection's step, not the change.
    "knee_rps": {"label": "knee req/s", "better": "higher", "tolerance": 0.05},
    "capacity_rps": {"label": "capacity req/s", "better": "higher", "tolerance": 0.05},
}

# (backend, proto, size, connections). iterative serves one TCP connection at a time, so at 64
# connections it runs UDP only. The default keeps the points whose base/candidate pairs agree
# within 1-2 % on the 2-CPU VM (TCP and UDP 64 B at 64 connections); "wide" adds TCP at 1
# connection (a ping-pong: ~8 % between pairs) and 16 KiB (3-12 %).
_REACTORS = ("threads", "epoll", "uring")
MATRICES: dict[str, dict[str, Any]] = {
    "default": {
        "points": [("iterative", "udp", 64, 64)]
        + [(b, p, 64, 64) for b in _REACTORS for p in ("tcp", "udp")],
        "probes": [("iterative", "tcp", 64, 1)] + [(b, "tcp", 64, 64) for b in _REACTORS],
    },
    "wide": {
        "points": [(b, "tcp", 64, 1) for b in ("iterative",) + _REACTORS]
        + [("iterative", "udp", 64, 64)]
        + [(b, p, s, 64) for b in _REACTORS for p, s in (("tcp", 64), ("tcp", 16384), ("udp", 64))],
        "probes": [("iterative", "tcp", 64, 1), ("iterative", "udp", 64, 64)]
        + [(b, p, s, 64) for b in _REACTORS for p, s in (("tcp", 64), ("tcp", 16384), ("udp", 64))],
    },
}
# The uppercase kernels at 1 KiB (the loop dominates and the buffers sit in L1: at 16 KiB the avx2
# kernel flips between two speeds 30 % apart within one process) and the in-place call the servers
# make at 64 B and 1 KiB.
MICRO_FILTER = "^BM_UppercaseInPlace/(64|1024)$|^BM_Uppercase/[a-z0-9_]+/1024$"
MICRO_REPETITIONS, MICRO_MIN_TIME_S, MICRO_TIMEOUT_S = 7, 0.02, 120
# Syscall probes and micro-benchmarks run every other round: their metrics need no more samples
# than the signed-rank level asks for (10), while the closed-loop runs gain from every round.
SPARSE_EVERY = 2
# A pair is disturbed when ln(candidate/base) of the load generator's CPU per request is this far
# from the item's median over the rounds: unchanged pairs stay within ~5 %, while a machine-wide
# slow-down between the two runs moves it by 8-20 % (and the server's figures by 8-16 %).
DISTURBED = 0.07
MIN_ROUNDS_FOR_GAUGE = 4
# Disturbed pairs are measured again up to this many times, at most this share of all pairs.
REMEASURE_ATTEMPTS, REMEASURE_SHARE = 2, 0.15


@dataclasses.dataclass
class Settings:
    rounds: int = 24
    duration: float = 0.5
    warmup: float = 0.1
    probe_duration: float = 0.4
    probe_warmup: float = 0.1
    server_cpu: int | None = 0
    load_cpu: int | None = 1
    server_args: tuple[str, ...] = ()
    base_server_args: tuple[str, ...] = ()  # after server_args, the base side's runs only
    # upcase-load gets --server-pid/--server-cpus (both sides' upcase-load know them), so
    # host.noisy also watches the server's CPU
    server_placement: bool = False
    # --curve: the curve's point (proto, size, connections) and the objectives
    curve: tuple[str, int, int] | None = None
    slos: tuple[curves.Slo, ...] = ()

    def estimate_s(self, plan: "Plan") -> float:
        """Seconds the measuring takes: run lengths plus what a run costs beyond them here."""
        run_s = self.duration + self.warmup + 0.08
        per_round = (len(plan.points) * run_s
                     + len(plan.probes) * (self.probe_duration + self.probe_warmup + 0.15)
                     / SPARSE_EVERY + (1.1 / SPARSE_EVERY if plan.micro else 0.0)
                     + len(plan.curves) * curve_ab.runs_estimate(len(self.slos)) * run_s
                     / SPARSE_EVERY)
        return 2 * self.rounds * per_round


@dataclasses.dataclass
class Item:
    kind: str                    # run | probe | micro | curve (point: the curve's closed loop)
    point: Point | None = None
    every: int = 1               # runs in rounds 0, every, 2 x every, ...

    def describe(self) -> str:
        if self.kind == "micro" or self.point is None:
            return "uppercase_bench"
        return self.point.describe()


@dataclasses.dataclass
class Plan:
    points: list[Point]
    probes: list[Point]
    micro: bool
    curves: list[Point] = dataclasses.field(default_factory=list)  # --curve: closed-loop points

    @property
    def items(self) -> list[Item]:
        return ([Item("run", p) for p in self.points]
                + [Item("probe", p, SPARSE_EVERY) for p in self.probes]
                + [Item("curve", p, SPARSE_EVERY) for p in self.curves]
                + ([Item("micro", None, SPARSE_EVERY)] if self.micro else []))


def make_plan(matrix: str, backends: list[str], micro: bool = True, probes: bool = True,
              curve: tuple[str, int, int] | None = None) -> Plan:
    m = MATRICES[matrix]
    order = {b: i for i, b in enumerate(BACKEND_ORDER)}

    def pick(rows, probe):
        chosen = [Point(b, p, s, c, probe=probe) for b, p, s, c in rows if b in backends]
        # Backend by backend (stable within a backend), as tools/compare runs them.
        return sorted(chosen, key=lambda pt: order.get(pt.backend, len(order)))
    curve_rows = [(b, *curve) for b in curve_ab.curve_backends(backends)] if curve else []
    return Plan(pick(m["points"], False), pick(m["probes"], True) if probes else [], micro,
                pick(curve_rows, False))


@dataclasses.dataclass
class Metric:
    name: str                       # e.g. cpu_us_per_req/epoll/tcp-64B-c64
    family: str
    label: str                      # e.g. "epoll tcp-64B-c64 CPU µs/req"
    base: list[float | None]
    candidate: list[float | None]
    first: list[str | None]         # which side ran first in each round
    # per round: a run of the pair reported host.noisy (steal, foreign CPU or hiccups) even after
    # it was measured again
    noisy: list[bool] = dataclasses.field(default_factory=list)

    @classmethod
    def new(cls, name: str, family: str, label: str, rounds: int) -> "Metric":
        return cls(name, family, label, [None] * rounds, [None] * rounds, [None] * rounds,
                   [False] * rounds)


def point_name(p: Point) -> str:
    return p.key.removesuffix("-closed")


# ---------------------------------------------------------------------------------------------
# Measuring.


class Measurement:
    """Runs the plan for both sides, interleaved, and collects one sample per metric, side and
    round. `bins[side]` is the folder with that side's upcase-server and upcase-load, `benches`
    the sides' uppercase_bench.

    A pair of runs during which the machine's speed changed is measured again at the end: on this
    VM the whole machine now and then slows down by 10-20 % for some seconds (both CPUs: the load
    generator slows as much as the server), and when that falls between the two runs of a pair, that
    round's ratio is off by as much, which widens the interval more than any other noise. The load
    generator is the same program on both sides, so its CPU per request is the machine's speed
    gauge: a pair whose load generators differ by more than DISTURBED from the item's usual
    difference (the median over the rounds, which absorbs a change the candidate causes) is
    measured again, up to REMEASURE_ATTEMPTS times; one still disturbed then is left out.
    A pair in which upcase-load reported `host.noisy` (the host stole CPU, ran foreign work on
    an involved CPU or stalled) is measured again the same way; one still noisy is kept, marked
    (Metric.noisy), and verdicts.judge says "inconclusive: host noise" when the metric's noise
    floor then exceeds its tolerance."""

    def __init__(self, plan: Plan, bins: dict[str, pathlib.Path],
                 benches: dict[str, pathlib.Path], settings: Settings, tools: Tools,
                 out: pathlib.Path, log=print):
        self.plan, self.bins, self.benches, self.s = plan, bins, benches, settings
        self.tools, self.out, self.log = tools, out, log
        self.metrics: dict[str, Metric] = {}
        self.failures: list[str] = []
        self.commands: dict[str, dict] = {s: {} for s in SIDES}
        self.items = plan.items
        self.total = 2 * sum(self.slots(i) * self.runs_per_slot(i) for i in range(len(self.items)))
        self.done = 0
        self.runners: dict[str, Runner] = {}
        # (item index, round) -> side -> upcase-load's CPU µs per request
        self.client: dict[tuple[int, int], dict[str, float]] = {}
        self.item_metrics: dict[int, set[str]] = {}
        self.remeasured: list[dict] = []   # every pair measured again, with its first values
        self.excluded: list[dict] = []     # pairs left out, still disturbed
        self.noisy: set[tuple[int, int]] = set()  # (item, round) pairs with a host.noisy run

    def slots(self, i: int) -> int:
        """How many samples item i gets per side: one per round it runs in."""
        return -(-self.s.rounds // self.items[i].every)

    def runs_per_slot(self, i: int) -> int:
        """Runs one sample of item i takes (a curve's is an estimate: its bisections stop
        early)."""
        return curve_ab.runs_estimate(len(self.s.slos)) if self.items[i].kind == "curve" else 1

    def _settings(self, side: str, probe: bool) -> RunSettings:
        s = self.s
        return RunSettings(
            duration=s.probe_duration if probe else s.duration,
            warmup=s.probe_warmup if probe else s.warmup,
            server_cpu=s.server_cpu, load_cpu=s.load_cpu,
            server_args=s.server_args + (s.base_server_args if side == "base" else ()),
            bin_dir=self.bins[side], syscall_names=False,
            server_placement=s.server_placement)

    def run(self) -> dict[str, Metric]:
        started = time.monotonic()
        for side in SIDES:
            (self.out / side).mkdir(parents=True, exist_ok=True)
            for old in (self.out / side / "runs").glob("*.json") \
                    if (self.out / side / "runs").is_dir() else ():
                old.unlink()
            self.runners[side] = Runner(
                self.out / side, self._settings(side, False), self.tools, self.total,
                log=self._side_log(side))
        try:
            for r in range(self.s.rounds):
                for i, item in enumerate(self.items):
                    if r % item.every == 0:
                        self._pair(i, r // item.every)
                elapsed = time.monotonic() - started
                left = elapsed / (r + 1) * (self.s.rounds - r - 1)
                self.log(f"tools/regress: round {r + 1}/{self.s.rounds} done, "
                         f"{elapsed / 60:.1f} min so far, about {left / 60:.1f} min left")
            self._remeasure()
        finally:
            Children.kill_all()
            for runner in self.runners.values():
                runner.close()
        return self.metrics

    def _side_log(self, side: str) -> Callable[[str], None]:
        """The runner's progress lines with the side after the counter."""
        def log(line: str) -> None:
            self.log(line.replace("] ", f"] {side:9} ", 1))
        return log

    def _pair(self, i: int, k: int):
        """Item i's k-th pair of runs, in the order that alternates with k and with i."""
        order = SIDES if (k + i) % 2 == 0 else SIDES[::-1]
        self.noisy.discard((i, k))
        for side in order:
            self._one(i, side, k, first=order[0])

    def disturbed(self) -> list[tuple[int, int]]:
        """(item, sample) pairs of closed-loop runs whose load generators' CPU/request ratio is
        off the item's median ratio by more than DISTURBED. (Probes count syscalls, which need no
        such precision; iterative's 1-connection probe is a ping-pong whose gauge is noisy.)"""
        out = []
        for i in range(len(self.items)):
            if self.items[i].kind != "run":
                continue
            ratios = {r: math.log(c["candidate"] / c["base"])
                      for (j, r), c in self.client.items()
                      if j == i and c.get("base") and c.get("candidate")}
            if len(ratios) < MIN_ROUNDS_FOR_GAUGE:
                continue
            med = statistics.median(ratios.values())
            out += [(i, r) for r, e in sorted(ratios.items()) if abs(e - med) > DISTURBED]
        return sorted(out, key=lambda ir: (ir[1], ir[0]))

    def again(self) -> list[tuple[int, int]]:
        """The pairs to measure again: the disturbed ones and those of closed-loop runs in
        which upcase-load reported host noise, by round."""
        noisy = {(i, r) for i, r in self.noisy if self.items[i].kind == "run"}
        return sorted(set(self.disturbed()) | noisy, key=lambda ir: (ir[1], ir[0]))

    def _remeasure(self) -> None:
        seen: dict[tuple[int, int], int] = {}
        for attempt in range(1, REMEASURE_ATTEMPTS + 1):
            todo = [ir for ir in self.again() if seen.get(ir, 0) < attempt]
            runs = sum(self.slots(i) for i, it in enumerate(self.items) if it.kind == "run")
            budget = max(1, round(REMEASURE_SHARE * runs))
            todo = todo[:max(0, budget - len(self.remeasured))]
            if not todo:
                break
            self.log(f"tools/regress: {len(todo)} pair(s) ran while the machine's speed changed "
                     "(the load generator's CPU/request moved) or the host was noisy "
                     "(host.noisy); measuring them again")
            self.total += 2 * len(todo)
            for runner in self.runners.values():
                runner.total = self.total
            for i, r in todo:
                seen[(i, r)] = attempt
                self.remeasured.append({
                    "item": self.items[i].describe(), "sample": r + 1, "attempt": attempt,
                    "host_noisy": (i, r) in self.noisy,
                    "client_us_per_req": dict(self.client.get((i, r), {})),
                    "values": {n: {"base": self.metrics[n].base[r],
                                   "candidate": self.metrics[n].candidate[r]}
                               for n in sorted(self.item_metrics.get(i, ()))}})
                self._pair(i, r)
        for i, r in self.disturbed():
            self.excluded.append({"item": self.items[i].describe(), "sample": r + 1,
                                  "client_us_per_req": dict(self.client.get((i, r), {}))})
            for n in self.item_metrics.get(i, ()):
                self.metrics[n].base[r] = self.metrics[n].candidate[r] = None
            self.client.pop((i, r), None)
        for i, r in self.noisy:
            for n in self.item_metrics.get(i, ()):
                self.metrics[n].noisy[r] = True

    def _record(self, i, name, family, label, side, r, value, first):
        m = self.metrics.setdefault(name, Metric.new(name, family, label, self.slots(i)))
        getattr(m, side)[r] = value
        m.first[r] = first
        self.item_metrics.setdefault(i, set()).add(name)

    def _one(self, i: int, side: str, r: int, first: str):
        item = self.items[i]
        if item.kind == "micro":
            self.done += 1
            self._micro(i, side, r, first)
            return
        if item.kind == "curve":
            self._curve(i, side, r, first)
            return
        p = item.point
        assert p is not None
        runner = self.runners[side]
        runner.done = self.done
        rec = runner.run(p, r, self._settings(side, item.kind == "probe"))
        self.done = runner.done
        if p.backend in runner.dead:
            why = runner.dead[p.backend]
            for other in self.runners.values():  # the pair is lost: skip it on both sides
                other.dead.setdefault(p.backend, f"the {side}'s server did not start")
            msg = f"{side}: backend {p.backend} did not start: {why}"
            if msg not in self.failures:
                self.failures.append(msg)
            return
        if rec is None:
            return
        if not rec["ok"]:
            self.failures.append(f"{side}: {p.describe()} round {r + 1}: {rec['error']}")
            return
        self.commands[side].setdefault("probe" if p.probe else "run", rec.get("commands"))
        load = rec["load"]
        if (load.get("host") or {}).get("noisy"):
            self.noisy.add((i, r))
        if load.get("client_cpu_s") and load.get("requests"):
            self.client.setdefault((i, r), {})[side] = load["client_cpu_s"] * 1e6 / load["requests"]
        m = run_metrics(rec)
        where = f"{p.backend} {point_name(p)}"
        if item.kind == "probe":
            if m.get("syscalls_per_req") is not None:
                self._record(i, f"syscalls_per_req/{p.backend}/{point_name(p)}",
                             "syscalls_per_req", f"{where} syscalls/req", side, r,
                             m["syscalls_per_req"], first)
            return
        for family in ("cpu_us_per_req", "rps"):
            self._record(i, f"{family}/{p.backend}/{point_name(p)}", family,
                         f"{where} {FAMILIES[family]['label']}", side, r, m.get(family), first)

    def _run_point(self, side: str, p: Point, r: int) -> dict | None:
        """One run of a curve's point on one side: its record, or None (a failure recorded)."""
        runner = self.runners[side]
        runner.done = self.done
        rec = runner.run(p, r, self._settings(side, False))
        self.done = runner.done
        if p.backend in runner.dead:
            for other in self.runners.values():  # the pair is lost: skip it on both sides
                other.dead.setdefault(p.backend, f"the {side}'s server did not start")
            msg = f"{side}: backend {p.backend} did not start: {runner.dead[p.backend]}"
            if msg not in self.failures:
                self.failures.append(msg)
            return None
        if rec is not None and not rec["ok"]:
            self.failures.append(f"{side}: {p.describe()} round {r + 1}: {rec['error']}")
            return None
        if rec is not None:
            self.commands[side].setdefault("curve", rec.get("commands"))
        return rec

    def _curve(self, i: int, side: str, r: int, first: str):
        """Item i's curve on one side: its knee and capacities as this round's samples."""
        p = self.items[i].point
        assert p is not None and self.s.curve is not None
        if p.backend in self.runners[side].dead:
            return
        res = curve_ab.measure_curve(lambda q: self._run_point(side, q, r), p.backend,
                                     self.s.curve, self.s.slos)
        if res.noisy:
            self.noisy.add((i, r))
        if res.error:
            self.log(f"tools/regress: {side} {p.backend} curve round {r + 1}: {res.error}")
            return
        for name, family, label, get in curve_ab.metric_names(p.backend, point_name(p),
                                                              self.s.slos):
            self._record(i, name, family, label, side, r, get(res), first)

    def micro_command(self, side: str, path: pathlib.Path) -> list[str]:
        cmd = [str(self.benches[side]), f"--benchmark_filter={MICRO_FILTER}",
               f"--benchmark_repetitions={MICRO_REPETITIONS}",
               f"--benchmark_min_time={MICRO_MIN_TIME_S}", f"--benchmark_out={path}",
               "--benchmark_out_format=json"]
        cpu = self.s.load_cpu
        return (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd

    def _micro(self, i: int, side: str, r: int, first: str):
        folder = self.out / side / "micro"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"round{r + 1:02d}.json"
        cmd = self.micro_command(side, path)
        self.commands[side].setdefault("micro", shlex.join(cmd))
        tag = f"[{self.done}/{self.total}] {side:9} uppercase_bench"
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, timeout=MICRO_TIMEOUT_S, stdin=subprocess.DEVNULL)
            error = None if res.returncode == 0 else (
                f"exited {res.returncode}: " + (res.stderr.strip().splitlines() or ["?"])[-1])
        except subprocess.TimeoutExpired:
            error = f"did not finish within {MICRO_TIMEOUT_S} s"
        if error is None:
            try:
                gbps = micro_gbps(json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                error = f"wrote no readable JSON: {e}"
        if error:
            self.failures.append(f"{side}: uppercase_bench round {r + 1}: {error}")
            self.log(f"{tag}: FAILED: {error}")
            return
        for name, v in gbps.items():
            self._record(i, f"gbps/{name}", "gbps", f"{name} GB/s", side, r, v, first)
        self.log(f"{tag}: {len(gbps)} benchmarks in {time.monotonic() - t0:.1f} s")


def micro_gbps(bench_json: dict) -> dict[str, float]:
    """Per benchmark, the median GB/s of its repetitions (aggregates are ignored)."""
    runs: dict[str, list[float]] = {}
    for bm in bench_json.get("benchmarks", []):
        if bm.get("run_type", "iteration") != "iteration" or "bytes_per_second" not in bm:
            continue
        runs.setdefault(bm.get("run_name", bm["name"]), []).append(bm["bytes_per_second"] / 1e9)
    return {name: statistics.median(v) for name, v in runs.items()}


def compose_bin_dir(folder: pathlib.Path, server_from: pathlib.Path,
                    load_from: pathlib.Path) -> pathlib.Path:
    """A folder whose upcase-server is `server_from`'s and upcase-load is `load_from`'s."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in (("upcase-server", server_from), ("upcase-load", load_from)):
        link = folder / name
        tmp = folder / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink((src / name).resolve(), tmp)
        os.replace(tmp, link)
    return folder
