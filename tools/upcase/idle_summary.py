"""The idle-connection experiment's figures (tools/compare --idle): per backend and idle count N
the medians of its runs, and the fit of server CPU per request against N.

The fit is ordinary least squares of cost = a + b*N over every run (each repeat one point, so
the interval reflects the run-to-run spread) of the counts the backend held; b, the CPU one idle
connection adds to each request, is reported in ns with its 95 % t-interval
(b +- t(0.975, n-2) * se(b)). A backend whose interval excludes 0 grows with N; one whose interval
contains 0 is flat within the noise of the measurement.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Sequence

from .summary import backend_order, run_metrics

# Student's t at 0.975 (two-sided 95 %) for 1..30 degrees of freedom; beyond, an expansion.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with df degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError("t975: df must be >= 1")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975  # Cornish-Fisher: within 1e-3 of the exact quantile from df 30 on
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclasses.dataclass
class Fit:
    """cost = a + b*x by least squares; b's 95 % interval (None with fewer than 3 points)."""
    a: float
    b: float
    n: int
    se_b: float | None
    ci: tuple[float, float] | None

    def grows(self) -> bool | None:
        """True when b's interval lies above 0, False when it contains 0, None without one."""
        if self.ci is None:
            return None
        return self.ci[0] > 0


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """Least squares of ys on xs; None unless there are two distinct xs."""
    n = len(xs)
    if n != len(ys) or n < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    if n < 3:
        return Fit(a, b, n, None, None)
    sse = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    se_b = math.sqrt(sse / (n - 2) / sxx)
    half = t975(n - 2) * se_b
    return Fit(a, b, n, se_b, (b - half, b + half))


# ---------------------------------------------------------------------------------------------
# From runs to summary.json.

def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def idle_metrics(rec: dict) -> dict:
    """One held run's figures: run_metrics plus memory and kernel sockets."""
    m = run_metrics(rec)
    idle = rec["idle"]
    mem = idle.get("server_memory_end") or {}
    before, held = idle.get("kernel_before") or {}, idle.get("kernel_held") or {}
    sock = held.get("sockstat") or {}
    slab = (held["slab_kib"] - before["slab_kib"]
            if held.get("slab_kib") is not None and before.get("slab_kib") is not None else None)
    m.update({"rss_kib": mem.get("rss_kib"), "pss_kib": mem.get("pss_kib"),
              "processes": mem.get("processes"), "tcp_mem_pages": sock.get("tcp_mem"),
              "tcp_inuse": sock.get("tcp_inuse"), "slab_delta_kib": slab})
    return m


POINT_KEYS = ("rps", "offered_rps", "cpu_us_per_req", "p50", "p99", "p999", "ctx_per_req",
              "server_util", "load_util", "rss_kib", "pss_kib", "processes", "tcp_mem_pages",
              "tcp_inuse", "slab_delta_kib")


def point_entry(n: int, recs: list[dict], probe: dict | None) -> dict:
    """One backend at one idle count: medians of its held runs, or why it could not hold."""
    held = [r for r in recs if r["idle"]["held"]]
    out: dict = {"idle": n, "repeats": len(recs), "held": bool(held) and len(held) == len(recs),
                 "reason": next((r["idle"]["reason"] for r in recs if not r["idle"]["held"]),
                                None),
                 "runs": [r["file"] for r in recs if "file" in r]}
    if not out["held"]:
        return out
    per_run = [idle_metrics(r) for r in held]
    for k in POINT_KEYS:
        out[k] = _median([m.get(k) for m in per_run])
    cpu = [m["cpu_us_per_req"] for m in per_run if m.get("cpu_us_per_req") is not None]
    out["cpu_us_per_req_runs"] = cpu
    out["connect_s"] = _median([r["idle"].get("connect_s") for r in held])
    pm = run_metrics(probe) if probe and probe["idle"]["held"] else {}
    out["syscalls_per_req"] = pm.get("syscalls_per_req")
    out["syscalls_counted"] = probe["idle"].get("syscalls_counted") if probe else None
    out["syscalls_by_name_per_req"] = dict(list(
        (pm.get("syscalls_by_name_per_req") or {}).items())[:6])
    return out


def backend_fit(points: list[dict]) -> dict:
    """summary.json's `fit` of one backend from its held points' runs."""
    xs, ys = [], []
    for p in points:
        if p["held"]:
            for y in p["cpu_us_per_req_runs"]:
                xs.append(float(p["idle"]))
                ys.append(y)
    f = fit_line(xs, ys)
    held = [p["idle"] for p in points if p["held"]]
    out: dict = {"runs": len(xs), "counts": sorted(set(int(x) for x in xs)),
                 "held_max": max(held) if held else None}
    if f is None:
        out.update(a_us=None, b_ns=None, b_ci95_ns=None, grows=None,
                   reason="needs runs at two idle counts or more")
        return out
    out.update(a_us=f.a, b_ns=f.b * 1e3, b_se_ns=f.se_b * 1e3 if f.se_b is not None else None,
               b_ci95_ns=[f.ci[0] * 1e3, f.ci[1] * 1e3] if f.ci else None, grows=f.grows(),
               reason=None if f.ci else "needs 3 runs or more for an interval")
    return out


def summarize_idle(meta: dict, runs: list[dict]) -> dict:
    """summary.json of an idle experiment."""
    by: dict = {}
    probes: dict = {}
    failures = []
    for rec in runs:
        if not rec.get("ok"):
            failures.append(rec)
            continue
        p = rec["point"]
        target = probes if p.get("probe") else by
        target.setdefault(p["backend"], {}).setdefault(p["idle"], []).append(rec)
    backends: dict = {}
    for b in backend_order(by):
        points = [point_entry(n, recs, (probes.get(b, {}).get(n) or [None])[0])
                  for n, recs in sorted(by[b].items())]
        backends[b] = {"points": points, "fit": backend_fit(points)}
    foreign = _median([run_metrics(r).get("foreign_cpu_share") for r in runs
                       if r.get("ok") and r["idle"]["held"] and "load" in r])
    return {"meta": meta, "experiment": "idle", "idle": meta.get("idle", {}),
            "foreign_cpu_share": foreign, "backends": list(backends), "results": backends,
            "failed_runs": [{"point": f["point"], "error": f.get("error"), "file": f.get("file")}
                            for f in failures]}
