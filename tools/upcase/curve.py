"""Latency-vs-load curves: where each backend's offered loads go, the validity of each run, the
knee, and the capacity at a latency objective (--slo). Pure logic: the measuring is compare.py's
(a `measure(rate)` callable that runs one rate's repeats and returns their per-run metrics).

Offered loads are fractions of each backend's *own* closed-loop maximum at the curve's point
(--curve, default TCP 64 B x 64 connections), log-spaced from light load to past saturation (50 %
is always one of them, so the report can quote p99 at half the maximum), then refined by
bisection around the knee.

- A run is *valid* unless: open loop achieved < ACHIEVED_MIN of what it offered (the server fell
  behind); upcase-load was busy > LOAD_BUSY_MAX of its window (the generator saturated); or, when
  upcase-load's JSON has a `host` object, steal or foreign CPU on an involved CPU was above
  HOST_NOISE_PCT_MAX %, or the worst scheduling hiccup exceeded the run's p99 (the host's noise
  explains the tail).
- The *knee* is the last offered rate before the first one whose median achieved/offered falls
  below ACHIEVED_MIN or whose median p99 exceeds KNEE_P99_OVER_P50 times the light-load p50 (the
  p50 at the lowest offered rate).
- The *capacity* at an objective (e.g. p99 <= 1 ms) is the highest offered rate whose every repeat
  keeps that percentile at or under the objective with achieved >= ACHIEVED_MIN of offered, below
  the first rate that does not: bracketed by the curve, then bisected until the bracket is within
  SLO_TOLERANCE of the rate (or SLO_MAX_STEPS measurements). A backend whose lightest load already
  misses the objective has capacity None ("none at this SLO"), never zero.
"""
from __future__ import annotations

import dataclasses
import math
import re
import statistics
from typing import Callable, Sequence

ACHIEVED_MIN = 0.97        # achieved/offered below this: the server fell behind
LOAD_BUSY_MAX = 0.90       # upcase-load busier than this: the generator saturated
HOST_NOISE_PCT_MAX = 1.0   # steal or foreign CPU % on an involved CPU above this: a noisy host
KNEE_P99_OVER_P50 = 10.0   # p99 above this multiple of the light-load p50: past the knee
SLO_TOLERANCE = 0.02       # capacity bisection stops when (hi - lo) <= this x lo
SLO_MAX_STEPS = 8          # ... or after this many bisection measurements

# (sweep points, lowest and highest fraction of the own maximum, knee refinements) per matrix.
CURVE_SHAPES = {"quick": (3, 0.2, 1.2, 1), "default": (6, 0.1, 1.2, 2),
                "full": (12, 0.05, 1.3, 4)}
# upcase-load's latency percentiles (its JSON keys) and how --slo may spell them.
SLO_PERCENTILES = {"p50": "p50", "p90": "p90", "p99": "p99", "p99.9": "p999", "p999": "p999",
                   "p99.99": "p9999", "p9999": "p9999"}
DURATION_UNITS = {"us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}


# ---------------------------------------------------------------------------------------------
# Flags.

def parse_curve(text: str) -> tuple[str, int, int]:
    """--curve=tcp:64B:c64 -> ("tcp", 64, 64); ValueError with a one-line reason."""
    m = re.fullmatch(r"(tcp|udp):(\d+)([KkMm]?)i?B?:c(\d+)", text.strip())
    if not m or int(m.group(4)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--curve={text}: expected PROTO:SIZE:cCONNECTIONS, e.g. tcp:64B:c64")
    size = int(m.group(2)) << {"": 0, "k": 10, "m": 20}[m.group(3).lower()]
    return m.group(1), size, int(m.group(4))


@dataclasses.dataclass(frozen=True)
class Slo:
    """A latency objective: `percentile` (upcase-load's key, e.g. p999) at most `limit_us`."""
    text: str          # as given, e.g. p99:1ms
    percentile: str
    limit_us: float

    def record(self) -> dict:
        return {"slo": self.text, "percentile": self.percentile, "limit_us": self.limit_us}


def parse_slo(text: str) -> Slo:
    """--slo=p99:1ms, p99.9:500us, p50:0.2ms ...; ValueError with a one-line reason."""
    m = re.fullmatch(r"(p[0-9.]+):([0-9]*\.?[0-9]+)(us|µs|ms|s)", text.strip())
    if not m or m.group(1) not in SLO_PERCENTILES or float(m.group(2)) <= 0:
        raise ValueError(f"--slo={text}: expected PERCENTILE:DURATION with PERCENTILE one of "
                         "p50, p90, p99, p99.9, p99.99 and DURATION > 0 in us, ms or s, "
                         "e.g. p99:1ms")
    return Slo(text.strip(), SLO_PERCENTILES[m.group(1)],
               float(m.group(2)) * DURATION_UNITS[m.group(3)])


def sweep_fractions(n: int, lo: float, hi: float) -> list[float]:
    """n fractions of the own maximum, log-spaced from lo to hi, the one nearest 0.5 moved to
    0.5 exactly."""
    if n == 1:
        return [0.5]
    out = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    nearest = min(range(n), key=lambda i: abs(math.log(out[i] / 0.5)))
    out[nearest] = 0.5
    return [round(f, 4) for f in sorted(set(out))]


def fraction_label(fraction: float) -> str:
    """The Point label of a fraction of the own maximum: 0.5 -> "50%", 0.1234 -> "12.34%"."""
    return f"{fraction * 100:.4g}%"


# ---------------------------------------------------------------------------------------------
# Validity of one run.

def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def host_reasons(load: dict, p99_us: float | None, involved: Sequence[int] | None) -> list[str]:
    """The host-noise reasons from upcase-load's optional `host` object (absent: none)."""
    host = load.get("host")
    if not isinstance(host, dict):
        return []
    reasons = []
    cpus = host.get("cpus")
    for c in cpus if isinstance(cpus, list) else []:
        if not isinstance(c, dict) or (involved and c.get("cpu") not in involved):
            continue
        for key, what in (("steal_pct", "steal"), ("foreign_pct", "foreign CPU")):
            if key == "foreign_pct" and c.get("foreign_exact") is False:
                continue  # an unpinned own thread's time may sit on the wrong CPU: not judged
            v = _num(c.get(key))
            if v is not None and v > HOST_NOISE_PCT_MAX:
                reasons.append(f"{what} {v:.1f} % on CPU {c.get('cpu')} "
                               f"(> {HOST_NOISE_PCT_MAX:g} %)")
    hiccup = host.get("hiccup_us")
    worst = _num(hiccup.get("max")) if isinstance(hiccup, dict) else None
    if worst is not None and p99_us is not None and worst > p99_us:
        reasons.append(f"worst host hiccup {worst:.0f} us > p99 {p99_us:.0f} us")
    return reasons


def run_validity(rec: dict, metrics: dict) -> tuple[bool, list[str]]:
    """(valid, reasons) of one run record; `metrics` is summary.run_metrics(rec)."""
    load = rec.get("load", {})
    reasons = []
    offered, rps = metrics.get("offered_rps"), metrics.get("rps")
    if offered and rps is not None and rps < ACHIEVED_MIN * offered:
        reasons.append(f"achieved {rps / offered * 100:.1f} % of offered "
                       f"(< {ACHIEVED_MIN * 100:g} %)")
    busy = _num(load.get("client_busy"))
    if busy is None and metrics.get("load_util") is not None:
        threads = (rec.get("placement") or {}).get("load_threads") or 1
        busy = metrics["load_util"] / threads
    if busy is not None and busy > LOAD_BUSY_MAX:
        reasons.append(f"upcase-load {busy * 100:.0f} % busy (> {LOAD_BUSY_MAX * 100:g} %)")
    pl = rec.get("placement") or {}
    involved = (pl.get("server_cpus") or []) + (pl.get("load_cpus") or [])
    reasons += host_reasons(load, metrics.get("p99"), involved or None)
    return not reasons, reasons


# ---------------------------------------------------------------------------------------------
# One rate's repeats, the knee, the capacity.

@dataclasses.dataclass
class Sample:
    """One offered rate's repeats: per-run metrics dicts with `valid` and `reasons` added."""
    offered: float
    runs: list[dict]
    role: str = "sweep"   # sweep | knee | slo

    def median(self, key: str) -> float | None:
        vals = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def achieved_ratio(self) -> float | None:
        rps = self.median("rps")
        return rps / self.offered if rps is not None and self.offered else None

    def meets(self, slo: Slo) -> bool:
        """Every repeat keeps the percentile under the objective and achieves >= ACHIEVED_MIN."""
        return bool(self.runs) and all(
            r.get(slo.percentile) is not None and r[slo.percentile] <= slo.limit_us
            and r.get("rps") is not None and r["rps"] >= ACHIEVED_MIN * self.offered
            for r in self.runs)


def merge_samples(samples: Sequence[Sample]) -> list[Sample]:
    """One Sample per offered rate (repeats pooled), sorted by rate."""
    by: dict[float, Sample] = {}
    for s in samples:
        if s.offered in by:
            by[s.offered].runs.extend(s.runs)
        else:
            by[s.offered] = Sample(s.offered, list(s.runs), s.role)
    return [by[r] for r in sorted(by)]


def past_knee(s: Sample, light_p50: float | None) -> str | None:
    """Why this rate is past the knee, or None."""
    ratio = s.achieved_ratio()
    if ratio is not None and ratio < ACHIEVED_MIN:
        return f"achieved/offered {ratio:.3f} < {ACHIEVED_MIN}"
    p99 = s.median("p99")
    if p99 is not None and light_p50 and p99 > KNEE_P99_OVER_P50 * light_p50:
        return f"p99 {p99:.0f} us > {KNEE_P99_OVER_P50:g} x light-load p50 {light_p50:.0f} us"
    return None


def find_knee(samples: Sequence[Sample]) -> dict:
    """The knee: the last rate before the first past it, with that first rate and its reason.
    `rps` is None when the lightest load is already past it, or when no rate is."""
    ss = merge_samples(samples)
    if not ss:
        return {"rps": None, "reason": "no open-loop point"}
    light = ss[0].median("p50")
    for i, s in enumerate(ss):
        why = past_knee(s, light)
        if why:
            if i == 0:
                return {"rps": None, "achieved_rps": None, "first_past_rps": s.offered,
                        "light_p50_us": light,
                        "reason": f"already past the knee at the lightest load ({why})"}
            k = ss[i - 1]
            return {"rps": k.offered, "achieved_rps": k.median("rps"), "p99_us": k.median("p99"),
                    "first_past_rps": s.offered, "light_p50_us": light, "reason": why}
    return {"rps": None, "achieved_rps": None, "first_past_rps": None, "light_p50_us": light,
            "reason": "not reached at the highest offered rate"}


def knee_probe(samples: Sequence[Sample]) -> float | None:
    """The next rate to refine the knee with: the middle of (knee, first rate past it)."""
    k = find_knee(samples)
    if k["rps"] is None or k.get("first_past_rps") is None:
        return None
    return (k["rps"] + k["first_past_rps"]) / 2


def slo_bracket(samples: Sequence[Sample], slo: Slo) -> tuple[float | None, float | None]:
    """(lo, hi): lo the last rate meeting the objective before the first that misses it (hi;
    None when every rate meets it); lo None when the lightest rate already misses it."""
    ss = merge_samples(samples)
    lo = None
    for s in ss:
        if not s.meets(slo):
            return lo, s.offered
        lo = s.offered
    return lo, None


def bisect_done(lo: float | None, hi: float | None, steps: int,
                tolerance: float = SLO_TOLERANCE, max_steps: int = SLO_MAX_STEPS) -> bool:
    """The bisection's stopping rule: nothing to bisect, bracket within tolerance, or out of
    steps."""
    if lo is None or hi is None:
        return True
    return hi - lo <= tolerance * lo or steps >= max_steps


def capacity(samples: Sequence[Sample], slo: Slo, own_max: float | None) -> dict:
    """The capacity record of one backend at one objective from the rates measured so far."""
    lo, hi = slo_bracket(samples, slo)
    out: dict = slo.record() | {"rps": lo, "bracket": [lo, hi]}
    if lo is None:
        ss = merge_samples(samples)
        light = ss[0].median(slo.percentile) if ss else None
        out["reason"] = ("none at this SLO: the lightest offered load already misses it"
                         + (f" ({slo.percentile} {light:.0f} us)" if light is not None else "")
                         if ss else "none at this SLO: no open-loop point")
        return out
    s = next(x for x in merge_samples(samples) if x.offered == lo)
    rps = [r["rps"] for r in s.runs if r.get("rps") is not None]
    lat = [r[slo.percentile] for r in s.runs if r.get(slo.percentile) is not None]
    out |= {"achieved_rps_range": [min(rps), max(rps)] if rps else None,
            "latency_us_range": [min(lat), max(lat)] if lat else None,
            "repeats": len(s.runs),
            "vs_own_max": lo / own_max if own_max else None}
    if hi is None:
        out["reason"] = "met at every offered rate: the capacity is at least the highest one"
    return out


def search_capacity(samples: list[Sample], slo: Slo, measure: Callable[[float], Sample],
                    tolerance: float = SLO_TOLERANCE, max_steps: int = SLO_MAX_STEPS) -> int:
    """Bisects the objective's bracket with measure(rate) (appending to samples) until
    bisect_done; the number of measurements taken."""
    steps = 0
    while True:
        lo, hi = slo_bracket(samples, slo)
        if bisect_done(lo, hi, steps, tolerance, max_steps):
            return steps
        assert lo is not None and hi is not None
        samples.append(measure((lo + hi) / 2))
        steps += 1


def trace(measure: Callable[[float, str], Sample], rates: Sequence[float], refinements: int,
          slos: Sequence[Slo], max_steps: int = SLO_MAX_STEPS) -> list[Sample]:
    """One curve in the order both tools measure it: the sweep at `rates`, up to `refinements`
    bisections of the knee, then each objective's bisection. measure(rate, role) runs one offered
    rate; role is sweep, knee or slo."""
    samples = [measure(r, "sweep") for r in rates]
    for _ in range(refinements):
        rate = knee_probe(samples)
        if rate is None:
            break
        samples.append(measure(rate, "knee"))
    for slo in slos:
        search_capacity(samples, slo, lambda r: measure(r, "slo"), max_steps=max_steps)
    return samples


def add_vs_threads(capacities: dict[str, list[dict]], baseline: str = "threads") -> None:
    """Each capacity's ratio to the baseline's at the same objective (None without both)."""
    base = {c["slo"]: c["rps"] for c in capacities.get(baseline, [])}
    for caps in capacities.values():
        for c in caps:
            b = base.get(c["slo"])
            c["vs_threads"] = c["rps"] / b if c["rps"] and b else None


# ---------------------------------------------------------------------------------------------
# From saved runs to summary.json's `curves` (so --replot redoes it).

def curve_runs(meta: dict, runs: Sequence[dict]) -> dict[str, list[dict]]:
    """The curve's open-loop runs per backend (sharded backends at their largest count)."""
    cfg = meta.get("curve") or {}
    family = str(cfg.get("point", "")).rsplit("-", 1)[0]
    by: dict[str, list[dict]] = {}
    for rec in runs:
        p = rec.get("point", {})
        if (rec.get("ok") and p.get("mode") == "open" and p.get("role")
                and not p.get("probe") and p["key"].rsplit("-", 1)[0] == family):
            by.setdefault(p["backend"], []).append(rec)
    for b, recs in by.items():
        top = max((r["point"].get("shards") or 0) for r in recs)
        by[b] = [r for r in recs if (r["point"].get("shards") or 0) == top]
    return by


def point_record(s: Sample, own: float | None) -> dict:
    """One offered rate of a curve as summary.json stores it."""
    valid = sum(1 for r in s.runs if r.get("valid"))
    rps = [r["rps"] for r in s.runs if r.get("rps") is not None]
    reasons = sorted({why for r in s.runs for why in r.get("reasons", [])})
    out = {"offered_rps": s.offered, "fraction_of_max": s.offered / own if own else None,
           "role": s.role, "repeats": len(s.runs), "valid_repeats": valid,
           "valid": valid * 2 > len(s.runs), "reasons": reasons,
           "achieved_rps": s.median("rps"),
           "achieved_rps_range": [min(rps), max(rps)] if rps else None}
    for key in ("p50", "p99", "p999", "cpu_us_per_req", "load_util"):
        out[key] = s.median(key)
    return out


def summarize_curves(meta: dict, runs: Sequence[dict], metrics: Callable[[dict], dict]) -> dict:
    """{backend: {own_max_rps, points, knee, capacities, p99_at_half_max}}; metrics is
    summary.run_metrics."""
    cfg = meta.get("curve") or {}
    slos = [Slo(s["slo"], s["percentile"], s["limit_us"]) for s in cfg.get("slos", [])]
    out: dict = {}
    for b, recs in curve_runs(meta, runs).items():
        own = (cfg.get("own_max_rps") or {}).get(b)
        samples = []
        for rec in recs:
            m = metrics(rec)
            m["valid"], m["reasons"] = run_validity(rec, m)
            samples.append(Sample(float(rec["point"]["rate"]), [m], rec["point"]["role"]))
        merged = merge_samples(samples)
        half = next((s for s in merged if own and abs(s.offered / own - 0.5) < 0.005), None)
        knee = find_knee(merged)
        knee["fraction_of_max"] = knee["rps"] / own if knee.get("rps") and own else None
        out[b] = {"point": cfg.get("point"), "own_max_rps": own,
                  "points": [point_record(s, own) for s in merged], "knee": knee,
                  "capacities": [capacity(merged, slo, own) for slo in slos],
                  "p99_at_half_max": half.median("p99") if half else None}
    add_vs_threads({b: c["capacities"] for b, c in out.items()})
    return out
