"""Turns a results folder written by tools/compare into summary.json, report.md, plots and the
terminal tables. Reads only saved JSON, so `tools/compare --replot DIR` can redo it all:

    DIR/meta.json        command line, machine, settings, notes        (written by tools/compare)
    DIR/runs/*.json      one record per run (tools/upcase/runner.py)      (written by tools/compare)
    DIR/bench/*.json     Google Benchmark output, when tools/bench wrote it there (optional)
 -> DIR/summary.json     medians per (backend, point) with ratios against `threads`
    DIR/report.md        tables, plots, "where its cost goes" per backend, machine, command
    DIR/*.png            throughput_vs_connections, latency_spectrum, latency_vs_load, and
                         scaling (with a --shards sweep)

A folder of the idle-connection experiment (meta.json's `experiment` is "idle", tools/compare
--idle) gets idle_summary.py's summary, its own report.md and cpu_vs_idle_connections.png.

With a shard sweep, summary.json's `points` hold each sharded backend at its largest shard count
(the configuration the other backends are compared with) and `scaling` holds every shard count.
The summary is summary.py's, the plots plots.py's; this module writes report.md and the terminal
tables and runs the whole (build).
"""
from __future__ import annotations

import json
import pathlib

from .curve import ACHIEVED_MIN, KNEE_P99_OVER_P50, LOAD_BUSY_MAX, SLO_TOLERANCE
from .idle_summary import summarize_idle
from .plots import (CURVE_PLOT, IDLE_PLOT, PLOTS, SCALING_PLOT, plot_curves, plot_idle,
                    plot_latency_vs_load, plot_scaling, plot_spectrum, plot_throughput)
from .summary import (BASELINE, HEADLINE_KEY, SPECTRUM_KEY, backend_order, load_dir,
                      scaling_key, scaling_reference, summarize)
from .procfs import fmt_cpu_list
from .units import fmt_count, fmt_size

# Above this share of the two CPUs used by other processes, the report calls the figures noisy.
NOISY_SHARE = 0.05

MODEL_TEXT = {
    "iterative": "The lab's server: one blocking loop serves one client at a time, so each "
                 "request is a blocking `recv` plus `send`, and the thread sleeps in between.",
    "threads": "One blocking thread per connection: every request costs a `recv` and a `send` "
               "and, under load, a sleep and wake-up of that connection's thread (context "
               "switches). Threads grow with connections.",
    "epoll": "One reactor thread: `epoll_wait` returns many ready sockets at once, so its cost "
             "is shared by the requests of a batch; each request still pays a non-blocking "
             "`recv` and `send`, and a `recv` count near two per request is the extra read that "
             "finds the socket drained (EAGAIN) before going back to `epoll_wait`.",
    "uring": "One reactor thread submitting and reaping through io_uring: receives and sends "
             "are queued in shared rings and many are handed over per `io_uring_enter`, so "
             "syscalls per request can fall below one. Kernel helper threads (iou-*) may appear.",
}


SCALING_COLUMNS = ("shards", "req/s", "ideal req/s", "efficiency", "CPU µs/req", "srv/load CPU")


def scaling_rows(rows: list[dict]) -> list[list[str]]:
    return [[str(r["shards"]), fmt_count(r["rps"]), fmt_count(r["ideal_rps"]),
             _f(r["efficiency"], 2), _f(r["cpu_us_per_req"]), _util(r)] for r in rows]


def _scaling_section(summary: dict) -> list[str]:
    key = scaling_key(summary)
    if not key:
        return []
    p0 = next((p for p in summary["points"] if p["key"] == key), None)
    what = (f"{p0['proto'].upper()} {fmt_size(p0['size'])} requests, {p0['connections']} "
            "connections, closed loop" if p0 else key)
    out = ["## Shard scaling", "",
           f"{what}. *efficiency* = req/s at N shards / (N x req/s at 1 shard): 1 is linear "
           "scaling (with no 1-shard run, against the fewest shards measured). Every closed-loop "
           "point ran at each shard count (`summary.json` → `scaling`); open-loop and syscall "
           "runs use the largest count, which is also what the headline and the per-backend "
           "tables show.", ""]
    for b in backend_order(summary["scaling"]):
        rows = summary["scaling"][b].get(key)
        if rows:
            out += [f"### {b}", "", md_table(SCALING_COLUMNS, scaling_rows(rows)), ""]
    refs = scaling_reference(summary, key)
    if refs:
        out += ["For reference, at their one configuration (all the server CPUs): " + "; ".join(
            f"{b} {fmt_count(p['metrics']['rps'])} req/s, "
            f"{_f(p['metrics']['cpu_us_per_req'])} µs CPU/req"
            + ("" if p["key"] == key else f" (c={p['connections']})")
            for b, p in refs.items()) + ".", ""]
    out += [f"![scaling]({SCALING_PLOT})", ""]
    return out


# ---------------------------------------------------------------------------------------------
# Tables.


def _f(x, digits=3):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def point_label(p: dict) -> str:
    load = "closed" if p["mode"] == "closed" else f"open {p['label']} @{fmt_count(p['rate'])}/s"
    behind = " (behind)" if p["metrics"].get("kept_up") == 0.0 else ""
    return f"{p['proto']} {fmt_size(p['size'])} c={p['connections']} {load}{behind}"


def _util(m: dict) -> str:
    srv, load = m.get("server_util"), m.get("load_util")
    pct = lambda x: "-" if x is None else f"{x * 100:.0f}"
    return f"{pct(srv)}/{pct(load)}%"


TABLE_COLUMNS = ("point", "req/s", "MB/s", "p50 µs", "p99 µs", "p99.9 µs", "lag p50/p99 µs",
                 "CPU µs/req", "srv/load CPU", "sys/req", "cs/req", "req/s vs thr", "CPU vs thr")


def table_rows(summary: dict, backend: str) -> list[list[str]]:
    rows = []
    for p in summary["points"]:
        if p["backend"] != backend:
            continue
        m, vs = p["metrics"], p.get("vs_threads", {})
        lag = (f"{_f(m.get('send_lag_p50'), 2)}/{_f(m.get('send_lag_p99'), 2)}"
               if p["mode"] == "open" else "-")
        rows.append([point_label(p), fmt_count(m["rps"]), _f(m["mbps"]), _f(m["p50"]),
                     _f(m["p99"]), _f(m["p999"]), lag, _f(m["cpu_us_per_req"]),
                     _util(m),
                     _f(m.get("syscalls_per_req")), _f(m["ctx_per_req"]),
                     _f(vs.get("rps")) if backend != BASELINE else "1",
                     _f(vs.get("cpu_per_req")) if backend != BASELINE else "1"])
    return rows


def text_table(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def md_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def headline_rows(summary: dict) -> list[list[str]]:
    """One line per backend: the figures a reader compares first."""
    index = {(p["backend"], p["key"]): p for p in summary["points"]}
    rows = []
    for b in summary["backends"]:
        closed = index.get((b, HEADLINE_KEY)) or index.get((b, "tcp-64B-c1-closed"))
        big = index.get((b, "tcp-16384B-c64-closed")) or index.get((b, "tcp-16384B-c1-closed"))
        udp = next((p for p in summary["points"] if p["backend"] == b and p["proto"] == "udp"
                    and p["mode"] == "closed"), None)
        open50 = index.get((b, SPECTRUM_KEY))
        m = closed["metrics"] if closed else {}
        rows.append([
            b,
            f"{fmt_count(m.get('rps'))} (c={closed['connections']})" if closed else "-",
            _f(m.get("cpu_us_per_req")),
            _f(m.get("syscalls_per_req")), _f(m.get("ctx_per_req")),
            _f(big["metrics"]["mbps"]) if big else "-",
            fmt_count(udp["metrics"]["rps"]) if udp else "-",
            _f(open50["metrics"]["p99"]) if open50 else "-",
            _f(closed.get("vs_threads", {}).get("rps")) if closed and b != BASELINE
            else ("1" if closed else "-"),
        ])
    return rows


HEADLINE_COLUMNS = ("backend", "TCP 64 B req/s", "CPU µs/req", "syscalls/req", "cs/req",
                    "TCP 16 KiB MB/s", "UDP 64 B req/s", "p99 µs @50% load", "req/s vs thr")


def print_tables(summary: dict, out=print):
    for b in summary["backends"]:
        out(f"\n== {b}")
        out(text_table(TABLE_COLUMNS, table_rows(summary, b)))
    key = scaling_key(summary)
    for b in backend_order(summary.get("scaling", {})):
        rows = summary["scaling"][b].get(key)
        if rows:
            out(f"\n== {b} shard scaling ({key}; efficiency = req/s / (N x req/s at 1 shard))")
            out(text_table(SCALING_COLUMNS, scaling_rows(rows)))
    if summary.get("curves"):
        out("\n== latency vs load (open loop; fractions of each backend's own maximum)")
        out(text_table(*curve_rows(summary)))
    out("\n== headline (TCP 64 B, 64 connections unless noted)")
    out(text_table(HEADLINE_COLUMNS, headline_rows(summary)))
    foreign = summary.get("foreign_cpu_share")
    if foreign is not None and foreign > NOISY_SHARE:
        out(f"\nwarning: other processes used {foreign * 100:.0f} % of the CPUs in use during "
            "the runs; the figures are noisy")
    overlap = overlap_text(summary["meta"].get("settings", {}))
    if overlap:
        out(f"note: {overlap}")


# ---------------------------------------------------------------------------------------------
# report.md


def _cost_section(summary: dict, b: str) -> list[str]:
    pts = [p for p in summary["points"] if p["backend"] == b]
    out = [f"### {b}: where its cost goes", ""]
    if b in MODEL_TEXT:
        out += [MODEL_TEXT[b], ""]
    for p in pts:
        if p["mode"] != "closed":
            continue
        m = p["metrics"]
        facts = [f"{_f(m['cpu_us_per_req'])} µs server CPU/request "
                 f"({m['sys_share'] * 100:.0f}% in the kernel)" if m["cpu_us_per_req"] and
                 m["sys_share"] is not None else None,
                 f"{_f(m['ctx_per_req'])} context switches/request" if m["ctx_per_req"]
                 is not None else None,
                 f"{m['threads_peak']:.0f} threads at peak" if m["threads_peak"] else None]
        if "syscalls" in p:
            top = list(p["syscalls"]["by_name_per_req"].items())[:4]
            facts.append(f"{_f(p['syscalls']['per_req'])} syscalls/request ("
                         + ", ".join(f"{k} {_f(v, 2)}" for k, v in top) + ")")
        out.append(f"- {point_label(p)}: " + "; ".join(x for x in facts if x))
    out += ["", "See it yourself (the server pinned to CPU 0, the load to CPU 1):", "", "```sh",
            f"taskset -c 0 build/release/bin/upcase-server --backend={b} --shards=1 "
            "--bind=127.0.0.1 5050 & pid=$!",
            "taskset -c 1 build/release/bin/upcase-load --connections=64 --duration=10s "
            "--quiet 127.0.0.1 5050 &",
            "perf stat -e 'raw_syscalls:sys_enter,syscalls:sys_enter_*' -p $pid -- sleep 5  "
            "# syscalls by name",
            "perf stat -e context-switches,task-clock -p $pid -- sleep 5",
            "ps -L -o tid,comm,time -p $pid      # threads and their CPU time",
            "grep ctxt_switches /proc/$pid/task/*/status",
            "timeout -s INT 5 strace -c -f -p $pid   # without perf (slows the server a lot)",
            "wait %2; kill $pid",
            "```", ""]
    return out


def _bench_section(d: pathlib.Path) -> list[str]:
    path = d / "bench" / "uppercase_bench.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = []
    for bm in data.get("benchmarks", []):
        if bm.get("aggregate_name") not in (None, "median"):
            continue
        if "bytes_per_second" in bm:
            rows.append([bm.get("run_name", bm["name"]), f"{bm['bytes_per_second'] / 1e9:.2f}"])
    return ["## Micro-benchmarks (tools/bench)", "",
            md_table(("benchmark", "GB/s"), rows), ""] if rows else []


def placement_text(settings: dict) -> str:
    """Where the server and the load ran, from meta.json's settings (old sets: one CPU each)."""
    s = settings
    if s.get("server_cpus") is None:
        return (f"server (`--shards=1`) pinned to CPU {s.get('server_cpu', '?')}, upcase-load "
                f"(1 thread) to CPU {s.get('load_cpu', '?')}; loopback")
    shards = s.get("shards") or [1]
    sweep = (f"`--shards={','.join(map(str, shards))}`" if len(shards) > 1
             else f"`--shards={shards[0]}`")
    threads = s.get("load_threads", 1)
    hosts = s.get("load_hosts") or ["local"]
    server_host = s.get("server_host", "local")
    where = ("loopback" if s.get("server_addr", "127.0.0.1").startswith("127.")
             else f"over the network to {s.get('server_addr')}")
    return (f"server on {'this host' if server_host == 'local' else server_host}, CPUs "
            f"{fmt_cpu_list(s['server_cpus'])} (epoll/uring {sweep}"
            + (" `--pin`: shard i on the i-th of those CPUs" if s.get("pin") else "")
            + f"), upcase-load ({threads} thread{'s' if threads != 1 else ''} per host) on "
            + ", ".join("this host" if h == "local" else h for h in hosts)
            + f", CPUs {fmt_cpu_list(s.get('load_cpus') or [])}; {where}")


def overlap_text(settings: dict) -> str | None:
    cpus = settings.get("overlap_cpus")
    if not cpus:
        return None
    return (f"Server CPUs {fmt_cpu_list(settings['server_cpus'])} and load CPUs "
            f"{fmt_cpu_list(settings['load_cpus'])} overlap on CPU {fmt_cpu_list(cpus)}: there "
            "the server and upcase-load take turns, so figures that use those CPUs measure the "
            "pair sharing them, not the server alone.")


def capacity_text(cap: dict) -> str:
    """One capacity cell: req/s [range] (x own max, x threads), or none with its reason."""
    if cap.get("rps") is None:
        return "none at this SLO"
    rng = cap.get("achieved_rps_range")
    ratios = [f"{cap['vs_own_max']:.2f} of max" if cap.get("vs_own_max") else "",
              f"{cap['vs_threads']:.2f}x threads" if cap.get("vs_threads") else ""]
    return (f"{fmt_count(cap['rps'])}"
            + (f" [{fmt_count(rng[0])}-{fmt_count(rng[1])}]" if rng else "")
            + (f" ({', '.join(r for r in ratios if r)})" if any(ratios) else "")
            + (" (at least)" if cap.get("bracket", [None, None])[1] is None else ""))


def curve_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    curves = summary.get("curves") or {}
    first: dict = next(iter(curves.values()), {})
    slos = [c["slo"] for c in first.get("capacities", [])]
    header = ["backend", "max req/s", "knee req/s", "p99 µs @50% own max", "valid points"] + [
        f"capacity {s}" for s in slos]
    rows = []
    for b in backend_order(curves):
        c = curves[b]
        knee = c.get("knee") or {}
        pts = c.get("points", [])
        rows.append([b, fmt_count(c.get("own_max_rps")),
                     (f"{fmt_count(knee['rps'])} ({knee['fraction_of_max'] * 100:.0f} %)"
                      if knee.get("rps") and knee.get("fraction_of_max") else "-"),
                     _f(c.get("p99_at_half_max")),
                     f"{sum(p['valid'] for p in pts)}/{len(pts)}"]
                    + [capacity_text(cap) for cap in c.get("capacities", [])])
    return header, rows


def curve_section(summary: dict, plotted: bool) -> list[str]:
    """report.md's latency-vs-load section: the table and how to read the figure."""
    if not summary.get("curves"):
        return []
    header, rows = curve_rows(summary)
    out = ["## Latency vs load, knee and capacity", "",
           "Open loop at offered loads log-spaced as fractions of each backend's *own* "
           "closed-loop maximum (*max req/s*), refined around the knee. *knee*: the last offered "
           f"rate before achieved/offered falls below {ACHIEVED_MIN:g} or p99 exceeds "
           f"{KNEE_P99_OVER_P50:g}x the light-load p50. *capacity*: the highest offered rate "
           f"whose every repeat meets the objective with achieved >= {ACHIEVED_MIN * 100:g} % of "
           f"offered, bisected to within {SLO_TOLERANCE * 100:g} % [achieved req/s range over "
           "repeats]. A point is not valid when it achieved less than "
           f"{ACHIEVED_MIN * 100:g} % of its offer, upcase-load was over "
           f"{LOAD_BUSY_MAX * 100:g} % busy, or the host's noise (steal, foreign CPU, hiccups) "
           "explains its tail (`summary.json` → `curves`, each point's `reasons`).", "",
           md_table(header, rows), ""]
    if plotted:
        out += [f"![latency curve]({CURVE_PLOT})", ""]
    return out


def write_report(d: pathlib.Path, summary: dict, plots: list[str]):
    meta = summary["meta"]
    machine = meta.get("machine", {})
    s = meta.get("settings", {})
    lines = ["# upcase: I/O models compared", ""]
    lines += [f"Placement: {placement_text(s)}.", ""]
    if overlap_text(s):
        lines += [f"**{overlap_text(s)}**", ""]
    lines += [f"Command: `{meta.get('command', 'tools/compare')}`  ",
              f"Date: {meta.get('date', '?')}, git {meta.get('git', '?')}  ",
              f"Machine: {machine.get('cpu_model', '?')}, nproc={machine.get('nproc', '?')}, "
              f"kernel {machine.get('kernel', '?')}, {machine.get('memory', '?')}"
              + "".join(f"; {name}: {m.get('cpu_model', '?')}, nproc={m.get('nproc', '?')}, "
                        f"kernel {m.get('kernel', '?')}"
                        for name, m in meta.get("hosts", {}).items()) + "  ",
              f"Runs: {s.get('duration_s', '?')} s measured after {s.get('warmup_s', '?')} s "
              f"warm-up, {s.get('repeat', '?')} repeats per point, medians shown; "
              f"{placement_text(s)}"
              + (f"; every server also ran with `{' '.join(s['server_args'])}`"
                 if s.get("server_args") else "") + ".", ""]
    foreign = summary.get("foreign_cpu_share")
    if foreign is not None:
        lines += [f"Other processes used {foreign * 100:.1f} % of the CPUs in use during the "
                  "runs (median)" + (": **a busy machine, so these figures are noisy**."
                                     if foreign > NOISY_SHARE else "."), ""]
    lines += ["## Headline", "",
              "TCP 64 B requests, 64 connections, closed loop, unless noted; p99 at 50 % of "
              "each backend's own maximum, offered open loop.", "",
              md_table(HEADLINE_COLUMNS, headline_rows(summary)), ""]
    for name in plots:
        if name != CURVE_PLOT:
            lines += [f"![{name[:-4]}]({name})", ""]
    lines += ["## How to read the figures", "",
              "- *req/s*, *MB/s*, latency: from upcase-load's JSON (latency in open loop from the "
              "intended send time, i.e. corrected for coordinated omission). MB/s is upcase-load's "
              "`bytes_per_s`: reply bytes, which equal request bytes for this service.",
              "- *CPU µs/req*: server user+system CPU from `/proc/PID/stat` (all threads, "
              "including exited ones) over the whole run, divided by the requests the server "
              "counted (`--stats-json`). *srv/load CPU*: the server's CPU time over the run's "
              "wall time, and upcase-load's over its measured window (100 % = that side's one "
              "CPU is saturated, so it is the side that limits req/s). From 90 % load CPU on, "
              "replies also wait for upcase-load's loop, so that point's latency includes the "
              "generator's queueing (on 2 CPUs one thread is over 90 % busy already at the 50 % "
              "point): compare backends there only side by side.",
              "- *lag p50/p99*: open loop, upcase-load's send lag (actual minus intended send "
              "time), which the corrected latency includes: the generator's own lateness.",
              "- *(behind)*: in open loop upcase-load could not send on schedule (the server "
              "fell behind); the latency still counts from the intended send times. Open loop "
              "puts no cap on requests in flight per connection, so a server that falls behind "
              "reads several queued requests per `recv`: its CPU per request drops while its "
              "latency climbs.",
              "- *cs/req*: context switches of the server (perf `context-switches` on its PID "
              "and future threads) per request. *sys/req*: syscalls per request from a separate "
              "probe run counting `raw_syscalls:sys_enter` with perf (or strace -c), so the "
              "counting overhead never reaches the CPU figures.",
              f"- *vs thr*: this backend's figure over `{BASELINE}`'s at the same point "
              "(`threads` is the blocking baseline).",
              ""]
    lines += _scaling_section(summary)
    lines += curve_section(summary, CURVE_PLOT in plots)
    lines += ["## Per backend", ""]
    for b in summary["backends"]:
        lines += [f"### {b}", "", md_table(TABLE_COLUMNS, table_rows(summary, b)), ""]
        lines += _cost_section(summary, b)
    lines += _bench_section(d)
    notes = list(meta.get("notes", []))
    for f in summary["failed_runs"]:
        notes.append(f"failed run {f['point'].get('backend')} {f['point'].get('key')}: "
                     f"{f.get('error')}")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Every run's raw JSON (upcase-load's output plus the server's figures) is in "
              "`runs/`; `summary.json` holds the medians. Regenerate this report and the plots "
              f"with `tools/compare --replot {meta.get('out', 'DIR')}`.", ""]
    (d / "report.md").write_text("\n".join(lines))


def build(d: pathlib.Path, out=print) -> dict:
    """Summary, plots, report.md, and the terminal tables, all from d's saved JSON."""
    meta, runs = load_dir(d)
    if not runs:
        raise FileNotFoundError(f"no runs/*.json in {d}")
    if meta.get("experiment") == "idle":
        return build_idle(d, meta, runs, out)
    summary = summarize(meta, runs)
    (d / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plots = []
    if plot_throughput(summary, d / PLOTS[0]):
        plots.append(PLOTS[0])
    if plot_spectrum(summary, d / PLOTS[1], runs):
        plots.append(PLOTS[1])
    if plot_latency_vs_load(summary, d / PLOTS[2]):
        plots.append(PLOTS[2])
    plot_scaling(summary, d / SCALING_PLOT)  # the scaling section links it
    if plot_curves(summary, d / CURVE_PLOT):  # the curve section links it
        plots.append(CURVE_PLOT)
    write_report(d, summary, plots)
    print_tables(summary, out)
    return summary


# ---------------------------------------------------------------------------------------------
# The idle-connection experiment (tools/compare --idle).

IDLE_FIT_COLUMNS = ("backend", "b: ns CPU/req per idle conn [95 % CI]", "a: µs CPU/req at N=0",
                    "held up to", "runs", "reading")
IDLE_COLUMNS = ("backend", "idle N", "CPU µs/req [runs]", "p50 µs", "p99 µs", "req/s",
                "sys/req", "cs/req", "RSS MiB", "PSS MiB", "TCP mem pages", "slab Δ MiB")


def _mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:.3g}"


def idle_fit_rows(summary: dict) -> list[list[str]]:
    rows = []
    for b, r in summary["results"].items():
        f = r["fit"]
        ci = f.get("b_ci95_ns")
        readings = {True: "grows with N", False: "flat within noise"}
        reading = readings.get(f.get("grows"), f.get("reason") or "-")
        rows.append([b, "-" if f.get("b_ns") is None else
                     f"{f['b_ns']:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""),
                     _f(f.get("a_us")), fmt_count(f.get("held_max")), str(f.get("runs", 0)),
                     reading])
    for b, why in (summary.get("idle", {}).get("not_run") or {}).items():
        rows.append([b, "-", "-", "not run", "0", f"cannot hold idle connections: {why}"])
    return rows


def idle_rows(summary: dict) -> list[list[str]]:
    rows = []
    for b, r in summary["results"].items():
        for p in r["points"]:
            if not p["held"]:
                rows.append([b, fmt_count(p["idle"]), f"cannot hold {p['idle']}: {p['reason']}"]
                            + ["-"] * (len(IDLE_COLUMNS) - 3))
                continue
            runs = p.get("cpu_us_per_req_runs") or []
            spread = f" [{_f(min(runs))}-{_f(max(runs))}]" if len(runs) > 1 else ""
            rows.append([b, fmt_count(p["idle"]), _f(p["cpu_us_per_req"]) + spread, _f(p["p50"]),
                         _f(p["p99"]), fmt_count(p["rps"]), _f(p.get("syscalls_per_req")),
                         _f(p.get("ctx_per_req")), _mib(p.get("rss_kib")),
                         _mib(p.get("pss_kib")), _f(p.get("tcp_mem_pages")),
                         _mib(p.get("slab_delta_kib"))])
    return rows


def print_idle_tables(summary: dict, out=print) -> None:
    out("\n== idle connections: server CPU per request = a + b x N (least squares over runs)")
    out(text_table(IDLE_FIT_COLUMNS, idle_fit_rows(summary)))
    out("\n== per backend and idle count N (medians of the runs)")
    out(text_table(IDLE_COLUMNS, idle_rows(summary)))
    foreign = summary.get("foreign_cpu_share")
    if foreign is not None and foreign > NOISY_SHARE:
        out(f"\nwarning: other processes used {foreign * 100:.0f} % of the CPUs in use during "
            "the runs; the figures are noisy")


def idle_how_to_read(idle: dict) -> list[str]:
    return [
        "## How to read it", "",
        f"Every run holds N idle TCP connections open (opened from 127.0.0.2 and up before the "
        f"measurement, nothing ever sent on them) while upcase-load offers TCP "
        f"{idle.get('size', 64)} B requests on {idle.get('connections', 64)} other connections at "
        f"{fmt_count(idle.get('rate_rps'))} req/s, open loop, the same for every backend and N. "
        f"The server runs with `{idle.get('server_flags', '')}`, so no limit and no idle "
        "timeout closes them; the holder checks before and after the load that all N are "
        "still open.",
        "- *b*: the server CPU each idle connection adds to every request, in ns: the slope of "
        "CPU µs/request against N by least squares over every run, with its 95 % t-interval. "
        "A readiness call that scans every descriptor (select, poll) pays for each idle one on "
        "every call, so b is about the kernel's cost of polling one socket divided by the "
        "requests served per call; *grows with N* when the interval lies above 0, *flat within "
        "noise* when it contains 0. *a*: the fitted CPU per request with no idle connection. "
        "Once a scan takes long enough for requests to queue behind it, each call serves "
        "several (*sys/req* falls), so the cost grows less than linearly and b averages the "
        "steep start and the flatter end: read the per-count table too.",
        "- *cannot hold N*: the holder could not open N, the server closed some (select past "
        "FD_SETSIZE, a limit), its counters show refusals, or the load failed while they did; "
        "larger counts of that backend are not tried. Not a failure: that is the model's limit.",
        "- *CPU µs/req*: server user+system CPU (`/proc/PID/stat`) over the run divided by the "
        "requests it served [min-max over runs]; *sys/req* from a separate probe run with perf; "
        "*cs/req*: context switches per request.",
        "- *RSS*, *PSS*: the server and its child processes at the end of the load, all N still "
        "open (PSS splits shared pages among the processes that share them). *TCP mem pages*: "
        "`/proc/net/sockstat` TCP `mem` with the N held, before the load (buffer pages of every "
        "TCP socket on the host: idle sockets hold almost none). *slab Δ*: the kernel's slab "
        "memory with the N held minus before they were opened: the socket structures of both "
        "ends (the holder's are on this host too), and whatever else the host allocated "
        "meanwhile.", ""]


def write_idle_report(d: pathlib.Path, summary: dict, plotted: bool) -> None:
    meta = summary["meta"]
    machine, s = meta.get("machine", {}), meta.get("settings", {})
    idle = summary.get("idle") or {}
    lines = ["# upcase: the idle-connection experiment", "",
             f"Command: `{meta.get('command', 'tools/compare --idle')}`  ",
             f"Date: {meta.get('date', '?')}, git {meta.get('git', '?')}  ",
             f"Machine: {machine.get('cpu_model', '?')}, nproc={machine.get('nproc', '?')}, "
             f"kernel {machine.get('kernel', '?')}, {machine.get('memory', '?')}  ",
             f"Runs: {s.get('duration_s', '?')} s measured after {s.get('warmup_s', '?')} s "
             f"warm-up, {s.get('repeat', '?')} repeats per point; {placement_text(s)}.", ""]
    foreign = summary.get("foreign_cpu_share")
    if foreign is not None:
        lines += [f"Other processes used {foreign * 100:.1f} % of the CPUs in use during the "
                  "runs (median)" + (": **a busy machine, so these figures are noisy**."
                                     if foreign > NOISY_SHARE else "."), ""]
    lines += ["## Cost of an idle connection", "",
              md_table(IDLE_FIT_COLUMNS, idle_fit_rows(summary)), ""]
    if plotted:
        lines += [f"![CPU per request against idle connections]({IDLE_PLOT})", ""]
    lines += ["## Per backend and idle count", "", md_table(IDLE_COLUMNS, idle_rows(summary)), ""]
    lines += idle_how_to_read(idle)
    notes = list(meta.get("notes", []))
    notes += [f"failed run {f['point'].get('backend')} {f['point'].get('key')}: {f.get('error')}"
              for f in summary["failed_runs"]]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Every run's raw JSON is in `runs/` (`idle`: what the holder opened and saw, the "
              "server's memory and the kernel's sockets); `summary.json` holds the medians and "
              f"the fits. Regenerate with `tools/compare --replot {meta.get('out', 'DIR')}`.", ""]
    (d / "report.md").write_text("\n".join(lines))


def build_idle(d: pathlib.Path, meta: dict, runs: list[dict], out=print) -> dict:
    summary = summarize_idle(meta, runs)
    (d / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_idle_report(d, summary, plot_idle(summary, d / IDLE_PLOT))
    print_idle_tables(summary, out)
    return summary
