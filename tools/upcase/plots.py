"""The comparison's plots (matplotlib, Agg): throughput vs connections, the latency spectrum,
latency vs offered load, with a --shards sweep scaling, and the idle experiment's CPU per request
against idle connections."""
from __future__ import annotations

import pathlib
from typing import Sequence

from .errors import HarnessError
from .hdr import merged_spectrum
from .procfs import fmt_cpu_list
from .summary import (HEADLINE_KEY, PERCENTILES, SPECTRUM_KEY, backend_order, scaling_key,
                      scaling_reference)
from .units import fmt_count, fmt_size

PLOTS = ("throughput_vs_connections.png", "latency_spectrum.png", "latency_vs_load.png")
SCALING_PLOT = "scaling.png"  # only with a --shards sweep
# Fixed colours so a backend looks the same in every plot and every report.
COLORS = {"iterative": "#7f7f7f", "threads": "#1f77b4", "fork": "#17becf", "select": "#9467bd",
          "poll": "#ff7f0e", "sigio": "#bcbd22", "epoll": "#2ca02c", "uring": "#d62728"}


def plot_scaling(summary: dict, path: pathlib.Path) -> bool:
    key = scaling_key(summary)
    if not key:
        return False
    plt = _plt()
    fig, (ax_rps, ax_cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    shards_seen = set()
    for b in backend_order(summary["scaling"]):
        rows = summary["scaling"][b].get(key)
        if not rows:
            continue
        xs = [r["shards"] for r in rows]
        shards_seen.update(xs)
        ys = [r["rps"] for r in rows]
        lo = [y - r["rps_range"][0] if r["rps_range"] else 0 for r, y in zip(rows, ys)]
        hi = [r["rps_range"][1] - y if r["rps_range"] else 0 for r, y in zip(rows, ys)]
        ax_rps.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, color=_color(b), label=b)
        ax_rps.plot(xs, [r["ideal_rps"] for r in rows], ls=":", color=_color(b), alpha=0.8,
                    label=f"{b} ideal (linear)")
        cpu = [(r["shards"], r["cpu_us_per_req"]) for r in rows if r["cpu_us_per_req"]]
        ax_cpu.plot([x for x, _ in cpu], [y for _, y in cpu], marker="o", color=_color(b),
                    label=b)
    for b, p in scaling_reference(summary, key).items():
        note = "" if p["key"] == key else f", c={p['connections']}"
        if p["metrics"]["rps"]:
            ax_rps.axhline(p["metrics"]["rps"], ls="--", lw=1, color=_color(b),
                           label=f"{b} (one configuration{note})")
        if p["metrics"]["cpu_us_per_req"]:
            ax_cpu.axhline(p["metrics"]["cpu_us_per_req"], ls="--", lw=1, color=_color(b),
                           label=f"{b} (one configuration{note})")
    ticks = sorted(shards_seen)
    for ax in (ax_rps, ax_cpu):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("shards (reactor threads, one pinned per server CPU)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    _count_axis(ax_rps.yaxis)
    ax_rps.set_ylabel("requests/s")
    ax_rps.set_title("Throughput vs shards (dotted: linear from the fewest shards)", fontsize=10)
    ax_cpu.set_ylabel("server CPU µs per request")
    ax_cpu.set_title("Server CPU per request vs shards", fontsize=10)
    p0 = next((p for p in summary["points"] if p["key"] == key), None)
    if p0:
        fig.suptitle(f"Shard scaling: {p0['proto'].upper()} {fmt_size(p0['size'])}, "
                     f"{p0['connections']} connections, closed loop (median of repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise HarnessError("python3-matplotlib is missing: run tools/install-deps "
                           "(and run the tools with /usr/bin/python3)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _color(b):
    return COLORS.get(b)


def _count_axis(axis):
    """Plain numbers (1k, 20k, 1.5M) instead of 2x10^5 on linear and log axes."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v) if v else "0"))
    axis.set_minor_formatter(NullFormatter())


def plot_throughput(summary: dict, path: pathlib.Path) -> bool:
    closed = [p for p in summary["points"] if p["proto"] == "tcp" and p["mode"] == "closed"]
    sizes = sorted({p["size"] for p in closed})
    if not closed:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        small = size < 4096  # small requests: count them; large: count bytes
        for b in summary["backends"]:
            pts = sorted((p for p in closed if p["backend"] == b and p["size"] == size),
                         key=lambda p: p["connections"])
            if not pts:
                continue
            xs = [p["connections"] for p in pts]
            scale = (lambda p, v: v) if small else (lambda p, v: v * p["size"] / 1e6)
            ys = [scale(p, p["metrics"]["rps"]) for p in pts]
            lo = [y - scale(p, p["rps_range"][0]) for p, y in zip(pts, ys)]
            hi = [scale(p, p["rps_range"][1]) - y for p, y in zip(pts, ys)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=b, color=_color(b))
        ax.set_xscale("log", base=2)
        conns = sorted({p["connections"] for p in closed if p["size"] == size})
        ax.set_xticks(conns, [str(c) for c in conns])
        ax.minorticks_off()
        _count_axis(ax.yaxis)
        ax.set_xlabel("connections (closed loop, 1 request outstanding each)")
        ax.set_ylabel("requests/s" if small else "MB/s (replies)")
        ax.set_title(f"TCP {fmt_size(size)} requests")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    cpus = summary["meta"].get("settings", {}).get("server_cpus")
    where = f"server CPUs {fmt_cpu_list(cpus)}" if cpus and len(cpus) > 1 else "server on 1 CPU"
    fig.suptitle(f"Throughput vs connections ({where}; median of repeats, bars: min..max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def spectrum_points(summary: dict) -> tuple[list[dict], str]:
    """The runs the latency spectrum compares: one load offered to every backend."""
    for key, what in ((SPECTRUM_KEY, "open loop, same offered load for every backend"),
                      (HEADLINE_KEY, "closed loop")):
        pts = [p for p in summary["points"] if p["key"] == key]
        if pts:
            return pts, what
    return [], ""


def plot_spectrum(summary: dict, path: pathlib.Path, runs: Sequence[dict] = ()) -> bool:
    pts, what = spectrum_points(summary)
    if not pts:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [1 / (1 - q / 100) for _, q in PERCENTILES]
    order = backend_order(summary["backends"])
    for p in sorted(pts, key=lambda p: order.index(p["backend"])):
        recs = [r for r in runs if r.get("ok") and not r["point"].get("probe")
                and r["point"]["backend"] == p["backend"] and r["point"]["key"] == p["key"]]
        curve = merged_spectrum(recs) if recs else None
        ys = [p["metrics"].get(n) for n, _ in PERCENTILES]
        if curve:
            top = 100 * (1 - 1 / (10 * xs[-1]))  # stop one decade past p99.99
            c = [(1 / (1 - q / 100), v) for q, v in curve if q < 100 and q <= top]
            ax.plot([x for x, _ in c], [v for _, v in c], color=_color(p["backend"]),
                    label=p["backend"], lw=1.6)
            ax.plot([x for x, y in zip(xs, ys) if y], [y for y in ys if y], "o", ms=4,
                    color=_color(p["backend"]))
        else:
            ax.plot([x for x, y in zip(xs, ys) if y], [y for y in ys if y], marker="o",
                    label=p["backend"], color=_color(p["backend"]))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([1] + xs + [xs[-1] * 10],
                  ["0%"] + [f"{q:g}%" for _, q in PERCENTILES] + ["99.999%"])
    ax.minorticks_off()
    _count_axis(ax.yaxis)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency µs (from intended send time)")
    p0 = pts[0]
    ax.set_title(f"Latency spectrum: {p0['proto'].upper()} {fmt_size(p0['size'])}, "
                 f"{p0['connections']} conns, "
                 + (f"{fmt_count(p0['rate'])} req/s offered" if p0["rate"] else "closed loop")
                 + " (repeats merged)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, what, fontsize=7, alpha=0.7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def load_curve(summary: dict, backend: str) -> list[tuple[float, dict, str]]:
    """(offered or achieved req/s, metrics, kind) along the open-loop base configuration."""
    opens = [p for p in summary["points"] if p["backend"] == backend and p["mode"] == "open"]
    if not opens:
        return []
    base = (opens[0]["proto"], opens[0]["size"], opens[0]["connections"])
    curve = [(p["rate"], p["metrics"], "open") for p in opens
             if (p["proto"], p["size"], p["connections"]) == base]
    sat = next((p for p in summary["points"] if p["backend"] == backend and p["mode"] == "closed"
                and (p["proto"], p["size"], p["connections"]) == base), None)
    if sat and sat["metrics"]["rps"]:
        curve.append((sat["metrics"]["rps"], sat["metrics"], "closed"))
    return sorted(curve, key=lambda c: c[0])


def plot_latency_vs_load(summary: dict, path: pathlib.Path) -> bool:
    curves = {b: load_curve(summary, b) for b in summary["backends"]}
    curves = {b: c for b, c in curves.items() if c}
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for b, c in curves.items():
        opens = [(x, m) for x, m, kind in c if kind == "open" and m.get("p99")]
        ax.plot([x for x, _ in opens], [m["p99"] for _, m in opens], marker="o",
                color=_color(b), label=f"{b} p99")
        ax.plot([x for x, _ in opens], [m["p50"] for _, m in opens], ls="--", lw=1,
                color=_color(b), alpha=0.7, label=f"{b} p50")
        sat = [(x, m) for x, m, kind in c if kind == "closed" and m.get("p99")]
        if sat:
            ax.plot([x for x, _ in sat], [m["p99"] for _, m in sat], marker="*", ms=12, ls="",
                    color=_color(b))
    ax.set_yscale("log")
    _count_axis(ax.yaxis)
    _count_axis(ax.xaxis)
    # Open loop may exceed the closed-loop maximum: with no cap on requests in flight, a busy
    # connection carries several, and the server reads them in one go.
    ax.set_xlabel("offered load, requests/s (★ = closed-loop p99 at its maximum, 1 in flight "
                  "per connection)")
    ax.set_ylabel("latency µs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Latency vs offered load (open loop, corrected for coordinated omission)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


CURVE_PLOT = "latency_curve.png"
CURVE_MARKERS = {"p50": "o", "p99": "s", "p999": "^"}


def _curve_panel(ax, b: str, c: dict, percentiles: Sequence[str]) -> None:
    """One backend's percentiles against achieved req/s; invalid points hollow."""
    pts = [p for p in c["points"] if p.get("achieved_rps")]
    for name in percentiles:
        xy = [(p["achieved_rps"], p[name], p["valid"]) for p in pts if p.get(name)]
        if not xy:
            continue
        ax.plot([x for x, _, _ in xy], [y for _, y, _ in xy], color=_color(b), lw=1,
                ls="-" if name == "p99" else "--" if name == "p50" else ":", alpha=0.8,
                label=f"{b} {name}")
        for x, y, ok in xy:
            ax.plot([x], [y], marker=CURVE_MARKERS[name], ls="", ms=5, color=_color(b),
                    markerfacecolor=_color(b) if ok else "none")
    knee = c.get("knee") or {}
    if knee.get("achieved_rps") and knee.get("p99_us"):
        ax.plot([knee["achieved_rps"]], [knee["p99_us"]], marker="X", ms=11, ls="",
                color=_color(b), markeredgecolor="black")
    for cap in c.get("capacities", []):
        rng = cap.get("achieved_rps_range")
        if cap.get("rps") and rng:
            ax.plot([sum(rng) / 2], [cap["limit_us"]], marker="D", ms=8, ls="",
                    color=_color(b), markeredgecolor="black")


def plot_curves(summary: dict, path: pathlib.Path) -> bool:
    """Latency (p50, p99; p99.9 with --full) and server CPU µs/request against achieved req/s,
    one colour per backend: hollow = not valid, X = knee, ◆ = capacity at an objective (dotted
    line)."""
    curves = {b: summary["curves"][b] for b in backend_order(summary.get("curves") or {})}
    if not any(c["points"] for c in curves.values()):
        return False
    full = summary.get("meta", {}).get("settings", {}).get("matrix") == "full"
    percentiles = ("p50", "p99", "p999") if full else ("p50", "p99")
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    limits = set()
    for b, c in curves.items():
        _curve_panel(ax, b, c, percentiles)
        limits |= {(cap["slo"], cap["limit_us"]) for cap in c.get("capacities", [])}
        pts = [p for p in c["points"] if p.get("achieved_rps") and p.get("cpu_us_per_req")]
        ax2.plot([p["achieved_rps"] for p in pts], [p["cpu_us_per_req"] for p in pts],
                 color=_color(b), lw=1, label=b)
        for p in pts:
            ax2.plot([p["achieved_rps"]], [p["cpu_us_per_req"]], marker="o", ls="", ms=5,
                     color=_color(b), markerfacecolor=_color(b) if p["valid"] else "none")
    for text, limit in sorted(limits, key=lambda t: t[1]):
        ax.axhline(limit, color="black", ls=":", lw=1)
        ax.annotate(f"SLO {text}", (0, limit), xycoords=("axes fraction", "data"),
                    fontsize=7, va="bottom")
    ax.set_yscale("log")
    _count_axis(ax.yaxis)
    ax.set_ylabel("latency µs (log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    point = next(iter(curves.values()))["point"] or ""
    ax.set_title(f"Latency vs achieved load ({point.rsplit('-', 1)[0]}, open loop): "
                 "X knee, ◆ capacity, hollow = not valid", fontsize=9)
    _count_axis(ax2.xaxis)
    ax2.set_xlabel("achieved requests/s")
    ax2.set_ylabel("server CPU µs/request")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


IDLE_PLOT = "cpu_vs_idle_connections.png"  # tools/compare --idle


def plot_idle(summary: dict, path: pathlib.Path) -> bool:
    """The idle experiment: server CPU per request (every run a dot, the medians joined, the
    least-squares line dashed) and p99 against the idle connections held, one line per backend."""
    res = summary.get("results") or {}
    if not any(p["held"] for r in res.values() for p in r["points"]):
        return False
    plt = _plt()
    fig, (ax_cpu, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for b in backend_order(res):
        held = [p for p in res[b]["points"] if p["held"]]
        if not held:
            continue
        xs = [p["idle"] for p in held]
        fit = res[b]["fit"]
        label = b if fit.get("b_ns") is None else f"{b} (b = {fit['b_ns']:.3g} ns)"
        ax_cpu.plot(xs, [p["cpu_us_per_req"] for p in held], marker="o", color=_color(b),
                    label=label)
        for p in held:
            ax_cpu.scatter([p["idle"]] * len(p["cpu_us_per_req_runs"]), p["cpu_us_per_req_runs"],
                           s=9, alpha=0.5, color=_color(b))
        if fit.get("b_ns") is not None:
            ax_cpu.plot([min(xs), max(xs)], [fit["a_us"] + fit["b_ns"] / 1e3 * x
                                             for x in (min(xs), max(xs))],
                        ls="--", lw=1, color=_color(b))
        ax_p99.plot(xs, [p["p99"] for p in held], marker="s", color=_color(b), label=b)
    idle = summary.get("idle") or {}
    for ax in (ax_cpu, ax_p99):
        ax.set_xlabel("idle TCP connections held open")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        _count_axis(ax.xaxis)
    ax_cpu.set_ylim(bottom=0)
    ax_cpu.set_ylabel("server CPU µs per request")
    ax_cpu.set_title("Server CPU per request (dots: runs; dashed: a + b·N)", fontsize=10)
    ax_p99.set_yscale("log")
    _count_axis(ax_p99.yaxis)
    ax_p99.set_ylabel("p99 latency µs")
    ax_p99.set_title("p99 latency (median of runs)", fontsize=10)
    fig.suptitle(f"Idle connections beside a fixed load: TCP {idle.get('size', 64)} B on "
                 f"{idle.get('connections', 64)} connections, "
                 f"{fmt_count(idle.get('rate_rps'))} req/s open loop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
