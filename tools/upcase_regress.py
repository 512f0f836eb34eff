"""tools/regress --against-baseline: which ratios it derives from a run, and how they are
compared with the committed baseline (bench/regress-baseline.json).

Every metric is a ratio measured on one machine in one session, so the machine's speed cancels:
CPU per request of one backend over another's, syscalls per request (a count over a count), the
uppercase kernel's GB/s over memcpy's. Throughput ratios are left out on purpose: with server and
load generator on one CPU each, req/s is often limited by the load generator or by whatever else
runs on the machine, and swung by 40 % between unchanged runs; a slower server shows up in its CPU
and syscalls per request instead. A metric regresses
when it moves in its bad direction by more than its relative tolerance plus its absolute slack;
moving the good way that far is reported as "improved" (time to --update-baseline) but passes.
"""
from __future__ import annotations

import dataclasses

from upcase_harness import fmt_size

# (numerator, denominator): each backend against the simpler model it claims to beat.
PAIRS = (("threads", "iterative"), ("epoll", "threads"), ("uring", "epoll"))

# Per metric family: the good direction, and tolerances that held on a busy 2-core VM. Edit the
# baseline file to tune one metric; --update-baseline keeps a metric's tolerances.
FAMILIES = {
    "cpu_per_req": {"better": "lower", "tolerance": 0.35, "abs_tolerance": 0.0},
    "syscalls_per_req": {"better": "lower", "tolerance": 0.25, "abs_tolerance": 0.25},
    "kernel": {"better": "higher", "tolerance": 0.25, "abs_tolerance": 0.0},
}
# Every kernel against memcpy at 16 KiB, where the loop dominates; the in-place kernel the servers
# call also at 64 B, where dispatch and call overhead dominate. Per-kernel figures at 64 B swing
# 2x on a busy machine and are left out.
MICRO_SIZES = (64, 16384)
MICRO_ALL_KERNELS_SIZE = 16384
MICRO_FILTER = ("^BM_(Memcpy|UppercaseInPlace)/(64|16384)$|"
                f"^BM_Uppercase/[a-z0-9_]+/{MICRO_ALL_KERNELS_SIZE}$")


@dataclasses.dataclass
class Row:
    name: str
    baseline: float
    current: float | None
    better: str
    tolerance: float
    abs_tolerance: float
    verdict: str  # ok | REGRESSED | improved | missing

    @property
    def change(self) -> float | None:
        if self.current is None or not self.baseline:
            return None
        return self.current / self.baseline - 1


def judge(base: float, cur: float | None, better: str, tol: float, abs_tol: float) -> str:
    if cur is None:
        return "missing"
    lo = base * (1 - tol) - abs_tol
    hi = base * (1 + tol) + abs_tol
    if better == "higher":
        return "REGRESSED" if cur < lo else "improved" if cur > hi else "ok"
    return "REGRESSED" if cur > hi else "improved" if cur < lo else "ok"


def compare(baseline: dict, current: dict[str, float]) -> list[Row]:
    rows = []
    for name, spec in baseline["metrics"].items():
        tol, abs_tol = spec["tolerance"], spec.get("abs_tolerance", 0.0)
        cur = current.get(name)
        rows.append(Row(name, spec["value"], cur, spec["better"], tol, abs_tol,
                        judge(spec["value"], cur, spec["better"], tol, abs_tol)))
    return rows


def failed(rows: list[Row], strict: bool = False) -> bool:
    bad = {"REGRESSED", "missing"} if strict else {"REGRESSED"}
    return any(r.verdict in bad for r in rows)


def new_baseline(current: dict[str, float], old: dict | None, info: dict) -> dict:
    """A baseline from this run's metrics, keeping tolerances already tuned in `old`."""
    old_metrics = (old or {}).get("metrics", {})
    metrics = {}
    for name in sorted(current):
        spec = dict(FAMILIES[name.split(".", 1)[0]])
        prev = old_metrics.get(name, {})
        for k in ("tolerance", "abs_tolerance"):
            if k in prev:
                spec[k] = prev[k]
        metrics[name] = {"value": round(current[name], 4)} | spec
    return {"about": "tools/regress baseline: ratios measured on one machine in one session. "
                     "Rewrite with tools/regress --update-baseline; tune a metric's tolerance "
                     "here.", "recorded": info, "metrics": metrics}


def macro_metrics(summary: dict) -> dict[str, float]:
    """Ratios between backends at each closed-loop point, and syscalls per request."""
    index = {(p["backend"], p["key"]): p for p in summary["points"]}
    keys = sorted({p["key"] for p in summary["points"] if p["mode"] == "closed"})
    out = {}
    for key in keys:
        short = key.removesuffix("-closed")
        for a, b in PAIRS:
            pa, pb = index.get((a, key)), index.get((b, key))
            if not pa or not pb:
                continue
            ma, mb = pa["metrics"], pb["metrics"]
            if ma.get("cpu_us_per_req") and mb.get("cpu_us_per_req"):
                out[f"cpu_per_req.{short}.{a}/{b}"] = ma["cpu_us_per_req"] / mb["cpu_us_per_req"]
        for backend in {b for b, k in index if k == key}:
            spr = index[(backend, key)]["metrics"].get("syscalls_per_req")
            if spr is not None:
                out[f"syscalls_per_req.{short}.{backend}"] = spr
    return out


def micro_metrics(bench_json: dict) -> dict[str, float]:
    """Kernel throughput over memcpy's at the same size, from Google Benchmark's JSON."""
    gbps = {}
    for bm in bench_json.get("benchmarks", []):
        if "bytes_per_second" not in bm or bm.get("aggregate_name") not in (None, "median"):
            continue
        name = bm.get("run_name", bm["name"])
        # A median aggregate wins over a single repetition of the same benchmark.
        if bm.get("aggregate_name") == "median" or name not in gbps:
            gbps[name] = bm["bytes_per_second"]
    out = {}
    for size in MICRO_SIZES:
        memcpy = gbps.get(f"BM_Memcpy/{size}")
        if not memcpy:
            continue
        label = fmt_size(size)
        for name, v in gbps.items():
            parts = name.split("/")
            if parts[-1] != str(size):
                continue
            if parts[0] == "BM_Uppercase" and len(parts) == 3 and size == MICRO_ALL_KERNELS_SIZE:
                out[f"kernel.{parts[1]}/memcpy.{label}"] = v / memcpy
            elif parts[0] == "BM_UppercaseInPlace":
                out[f"kernel.inplace/memcpy.{label}"] = v / memcpy
    return out


def table(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        change = f"{r.change * 100:+.0f}%" if r.change is not None else "-"
        allowed = f"{'-' if r.better == 'higher' else '+'}{r.tolerance * 100:.0f}%" + (
            f" ±{r.abs_tolerance:g}" if r.abs_tolerance else "")
        out.append([r.name, f"{r.baseline:.3g}",
                    f"{r.current:.3g}" if r.current is not None else "-", change,
                    f"{r.better} ({allowed})", r.verdict])
    return out


TABLE_COLUMNS = ("metric", "baseline", "now", "change", "better (allowed)", "verdict")
