"""tools/regress --curve: a short latency-vs-load curve per backend, side and round, whose summary
(the knee's rate and the capacity at each --slo) becomes metrics judged with the same paired
statistics as CPU per request. A change that moves the knee but not the closed-loop peak (a
latency cost under load, a batching change) shows here and nowhere else in the matrix.

One curve is: a closed-loop run of the curve's point (that side's own maximum in that round), an
open-loop sweep at CURVE_FRACTIONS of it, KNEE_REFINEMENTS bisections of the knee, then for each
objective up to SLO_STEPS bisections of its bracket. Each rate runs once (the rounds are the
repeats). The knee and the capacity are curve.py's: the same definitions as tools/compare's
report, so the two tools never disagree on what a knee is.

A sample is missing (None) when its figure does not exist in that round: no knee within the
highest offered rate, or no capacity because the lightest load already misses the objective.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from .. import curve as curves
from ..points import Point
from ..summary import run_metrics

# Where the knee of a small-message server lies: between half its closed-loop maximum and a little
# past it (open loop with many connections can briefly exceed the closed-loop rate). 0.5 gives the
# light-load p50 the knee's latency rule is relative to.
CURVE_FRACTIONS = (0.5, 0.8, 0.95, 1.1)
KNEE_REFINEMENTS = 2
SLO_STEPS = 5
# Runs one curve takes at most, for the progress counter: closed + sweep + knee + bisections.
CURVE_RUNS = 1 + len(CURVE_FRACTIONS) + KNEE_REFINEMENTS


def runs_estimate(n_slos: int) -> int:
    """Runs of one curve for the progress counter (the bisections usually stop early)."""
    return CURVE_RUNS + (SLO_STEPS - 2) * n_slos


@dataclasses.dataclass
class CurveResult:
    own_max: float | None
    knee_rps: float | None
    capacities: dict[str, float | None]   # by objective text, e.g. "p99:1ms"
    noisy: bool = False                    # a run of it reported host.noisy
    error: str | None = None               # why the curve could not be measured


def curve_backends(backends: Sequence[str]) -> list[str]:
    """The backends a curve at several connections applies to: iterative serves one connection
    at a time (tools/compare draws no curve for it either)."""
    return [b for b in backends if b != "iterative"]


def measure_curve(run: Callable[[Point], dict | None], backend: str,
                  point: tuple[str, int, int], slos: Sequence[curves.Slo]) -> CurveResult:
    """One side's curve in one round. `run(point)` runs one point and returns its record (None,
    or ok False, when it failed)."""
    proto, size, conns = point
    noisy = [False]

    def one(p: Point) -> dict | None:
        rec = run(p)
        if not rec or not rec.get("ok"):
            return None
        if ((rec.get("load") or {}).get("host") or {}).get("noisy"):
            noisy[0] = True
        return rec

    closed = one(Point(backend, proto, size, conns))
    own = (closed or {}).get("load", {}).get("throughput_rps")
    if not own:
        return CurveResult(None, None, {}, noisy[0], "no closed-loop maximum")

    def measure(rate: float, role: str) -> curves.Sample:
        rate = round(rate)
        rec = one(Point(backend, proto, size, conns, rate=rate,
                        label=curves.fraction_label(rate / own), role=role))
        runs = []
        if rec:
            m = run_metrics(rec)
            m["valid"], m["reasons"] = curves.run_validity(rec, m)
            runs.append(m)
        return curves.Sample(rate, runs, role)

    samples = curves.trace(measure, [own * f for f in CURVE_FRACTIONS], KNEE_REFINEMENTS, slos,
                           max_steps=SLO_STEPS)
    caps = {slo.text: curves.capacity(samples, slo, own)["rps"] for slo in slos}
    return CurveResult(own, curves.find_knee(samples)["rps"], caps, noisy[0])


def metric_names(backend: str, point_key: str, slos: Sequence[curves.Slo]) -> list[tuple]:
    """(name, family, label, getter) of the metrics one curve gives."""
    where = f"{backend} {point_key}"
    out: list[tuple] = [(f"knee_rps/{backend}/{point_key}", "knee_rps", f"{where} knee req/s",
                         lambda c: c.knee_rps)]
    for slo in slos:
        out.append((f"capacity_rps/{backend}/{point_key}/{slo.text}", "capacity_rps",
                    f"{where} capacity at {slo.text} req/s",
                    lambda c, t=slo.text: c.capacities.get(t)))
    return out
