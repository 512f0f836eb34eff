"""The A/B check's verdicts: each metric judged from its paired rounds (stats.judge), and the
report.md table and regress.json rows they make."""
from __future__ import annotations

import dataclasses
import math
import statistics

from ..units import fmt_count
from . import stats as st
from .ab import FAMILIES, Metric


@dataclasses.dataclass
class Row:
    metric: Metric
    better: str
    tolerance: float
    base_median: float | None
    candidate_median: float | None
    j: st.Judgement
    noise_floor: float | None = None  # the rounds' spread (robust SD of candidate/base - 1)
    host_noise: bool = False          # rounds stayed host.noisy and the floor > tolerance


HOST_NOISE = "inconclusive: host noise"


def noise_floor(d: list[float]) -> float | None:
    """The noise floor measured in the run: the robust spread of the rounds' paired ratios, as
    a fraction (0.03 = rounds scatter by about 3 %); None under two rounds."""
    sd = st.robust_sd(d)
    return math.expm1(sd) if math.isfinite(sd) else None


def host_noise(m: Metric, floor: float | None, tolerance: float) -> bool:
    """True when some rounds of m stayed host.noisy after being measured again and the noise
    floor is above the tolerance: then no verdict, "inconclusive: host noise"."""
    return any(m.noisy) and floor is not None and floor > tolerance


def judge(metrics: list[Metric], tolerances: dict[str, float], alpha: float
          ) -> tuple[list[Row], float]:
    """Rows in the metrics' order, and the one-sided tail each interval was computed at."""
    judged = [m for m in metrics if st.log_ratios(m.base, m.candidate)]
    alpha_side = st.bonferroni_alpha_side(alpha, len(judged))
    rows = []
    for m in metrics:
        fam = FAMILIES[m.family]
        tol = tolerances.get(m.family, fam["tolerance"])
        d = st.log_ratios(m.base, m.candidate)
        j = st.judge(d, fam["better"], tol, alpha_side)
        floor = noise_floor(d)
        noisy = bool(j.n) and host_noise(m, floor, tol)
        if noisy:
            j = dataclasses.replace(j, verdict=st.INCONCLUSIVE, more_rounds=None)
        rows.append(Row(m, fam["better"], tol, _median(m.base), _median(m.candidate), j,
                        floor, noisy))
    return rows, alpha_side


def _median(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def fmt_value(family: str, x: float | None) -> str:
    if x is None:
        return "-"
    if family in ("rps", "knee_rps", "capacity_rps"):
        return fmt_count(x)
    if family == "gbps":
        return f"{x:.3g} GB/s"
    if family == "cpu_us_per_req":
        return f"{x:.3g} µs"
    return f"{x:.3g}"


def fmt_pct(x: float) -> str:
    if x == math.inf:
        return "+inf"
    if x == -math.inf:
        return "-inf"
    return f"{x * 100:+.1f}%"


def verdict_text(row: Row, alpha_side: float) -> str:
    j = row.j
    if j.n == 0:
        return "not measured"
    if j.verdict in (st.REGRESSED, st.IMPROVED):
        return f"**{j.verdict}**"
    if j.verdict != st.INCONCLUSIVE:
        return j.verdict
    if row.host_noise:
        return HOST_NOISE
    if j.n < st.min_rounds(alpha_side):
        return f"inconclusive (needs >= {st.min_rounds(alpha_side)} rounds)"
    if j.more_rounds is None:
        return "inconclusive (the change is about the tolerance)"
    if j.more_rounds > 1000:
        return "inconclusive (> 1000 more rounds)"
    return f"inconclusive (~{j.more_rounds} more round{'s' if j.more_rounds > 1 else ''})"


TABLE_COLUMNS = ("metric", "base", "candidate", "change", "interval", "verdict")


def table_rows(rows: list[Row], alpha_side: float) -> list[list[str]]:
    out = []
    for row in rows:
        m, j = row.metric, row.j
        interval = "-" if j.n == 0 else f"[{fmt_pct(j.low)}, {fmt_pct(j.high)}]"
        out.append([m.label, fmt_value(m.family, row.base_median),
                    fmt_value(m.family, row.candidate_median),
                    fmt_pct(j.change) if j.n else "-", interval, verdict_text(row, alpha_side)])
    return out


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header) - 1))
             + "|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def counts(rows: list[Row]) -> dict[str, int]:
    c = {v: 0 for v in (st.REGRESSED, st.IMPROVED, st.SAME, st.INCONCLUSIVE)}
    for r in rows:
        if r.j.n:
            c[r.j.verdict] += 1
    return c


def markdown(rows: list[Row], alpha_side: float, info: dict) -> str:
    c = counts(rows)
    base, cand = info["base"], info["candidate"]
    lines = ["## tools/regress: candidate vs base", ""]
    lines.append(f"Base **{base['short']}** ({base['how']}); candidate **{cand['label']}**. "
                 f"{info['settings']['rounds']} interleaved rounds on {info['machine_line']}; "
                 f"measuring took {info['measure_s'] / 60:.1f} min.")
    lines.append("")
    bad = [r for r in rows if r.j.n and r.j.verdict == st.REGRESSED]
    if info.get("failures"):
        lines.append(f"**Could not measure everything** ({len(info['failures'])} problem(s)): "
                     + "; ".join(info["failures"][:5]))
        lines.append("")
    lines.append(", ".join(f"{n} {v}" for v, n in c.items()) + ".")
    if bad:
        lines.append("")
        lines.append("Regressed: " + "; ".join(
            f"{r.metric.label} {fmt_pct(r.j.change)} [{fmt_pct(r.j.low)}, {fmt_pct(r.j.high)}]"
            for r in bad) + ".")
    lines += ["", md_table(TABLE_COLUMNS, table_rows(rows, alpha_side)), ""]
    tols = ", ".join(f"{FAMILIES[f]['label']} ±{info['tolerances'][f] * 100:g}%"
                     for f in FAMILIES)
    k = sum(1 for r in rows if r.j.n)
    lines.append(
        f"change: Hodges-Lehmann estimate of candidate/base - 1 over the rounds' paired ratios; "
        f"interval: Wilcoxon signed-rank, {(1 - 2 * alpha_side) * 100:.2f}% each "
        f"(family-wise {(1 - info['alpha']) * 100:g}% over {k} metrics, Bonferroni). "
        f"regressed/improved: the whole interval beyond the tolerance ({tols}); same: "
        "inside it; else inconclusive. Every sample: regress.json.")
    for n in info.get("notes", []):
        lines.append(f"\nNote: {n}")
    return "\n".join(lines) + "\n"


def rows_json(rows: list[Row]) -> list[dict]:
    out = []
    for r in rows:
        m, j = r.metric, r.j
        out.append({
            "name": m.name, "label": m.label, "family": m.family, "better": r.better,
            "tolerance": r.tolerance, "base": m.base, "candidate": m.candidate,
            "first": m.first, "base_median": r.base_median,
            "candidate_median": r.candidate_median, "rounds": j.n,
            "change": _finite(j.change), "interval": [_finite(j.low), _finite(j.high)],
            "verdict": (HOST_NOISE if r.host_noise else j.verdict) if j.n else "not measured",
            "more_rounds": j.more_rounds, "noise_floor": r.noise_floor,
            "host_noisy_rounds": sum(m.noisy)})
    return out


def _finite(x: float):
    return x if math.isfinite(x) else None


def metrics_from_json(data: dict) -> list[Metric]:
    """Metrics as regress.json (or a test's fake samples file) stores them."""
    return [Metric(m["name"], m["family"], m.get("label", m["name"]), list(m["base"]),
                   list(m["candidate"]), list(m.get("first", [None] * len(m["base"]))),
                   [bool(x) for x in m.get("noisy", [False] * len(m["base"]))])
            for m in data["metrics"]]
