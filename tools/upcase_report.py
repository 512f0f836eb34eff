"""Turns a results folder written by tools/compare into summary.json, report.md, plots and the
terminal tables. Reads only saved JSON, so `tools/compare --replot DIR` can redo it all:

    DIR/meta.json        command line, machine, settings, notes        (written by tools/compare)
    DIR/runs/*.json      one record per run (tools/upcase_harness.py)   (written by tools/compare)
    DIR/bench/*.json     Google Benchmark output, when tools/bench wrote it there (optional)
 -> DIR/summary.json     medians per (backend, point) with ratios against `threads`
    DIR/report.md        tables, plots, "where its cost goes" per backend, machine, command
    DIR/*.png            throughput_vs_connections, latency_spectrum, latency_vs_load, and
                         scaling (with a --shards sweep)

With a shard sweep, summary.json's `points` hold each sharded backend at its largest shard count
(the configuration the other backends are compared with) and `scaling` holds every shard count.
"""
from __future__ import annotations

import base64
import json
import math
import pathlib
import statistics
import struct
import zlib

from upcase_harness import SHARDED_BACKENDS, HarnessError, fmt_count, fmt_cpu_list, fmt_size

BASELINE = "threads"  # the blocking, thread-per-connection server every ratio is taken against
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99))
# The point whose figures headline the report and whose load the latency spectrum shows.
HEADLINE_KEY = "tcp-64B-c64-closed"
SPECTRUM_KEY = "tcp-64B-c64-open50"
# Above this share of the two CPUs used by other processes, the report calls the figures noisy.
NOISY_SHARE = 0.05
PLOTS = ("throughput_vs_connections.png", "latency_spectrum.png", "latency_vs_load.png")
SCALING_PLOT = "scaling.png"  # only with a --shards sweep
# Fixed colours so a backend looks the same in every plot and every report.
COLORS = {"iterative": "#7f7f7f", "threads": "#1f77b4", "epoll": "#2ca02c", "uring": "#d62728"}
BACKEND_ORDER = ("iterative", "threads", "epoll", "uring")

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



# ---------------------------------------------------------------------------------------------
# upcase-load's histograms: HdrHistogram V2, compressed and base64 ("HISTF..."), in ns.

def decode_hdr(text: str) -> list[tuple[int, int]]:
    """(value, count) per non-empty bucket, value being the bucket's highest equivalent value
    (what HdrHistogram reports as a percentile)."""
    raw = base64.b64decode(text)
    cookie, length = struct.unpack(">iI", raw[:8])
    if cookie & ~0xF0 != 0x1C849304:
        raise ValueError(f"not a compressed V2 HdrHistogram (cookie {cookie:#x})")
    body = zlib.decompress(raw[8:8 + length])
    cookie, payload_len, _offset, digits, lowest, _highest, _ratio = struct.unpack(
        ">iiiiqqd", body[:40])
    if cookie & ~0xF0 != 0x1C849303:
        raise ValueError(f"not a V2 HdrHistogram encoding (cookie {cookie:#x})")
    payload = body[40:40 + payload_len]
    half = 1 << (math.ceil(math.log2(2 * 10 ** digits)) - 1)  # sub-buckets per half bucket
    half_mag = half.bit_length() - 1
    unit_mag = int(math.floor(math.log2(lowest)))
    out, index, pos = [], 0, 0
    while pos < len(payload):
        v, shift = 0, 0
        while True:  # LEB128 of at most 9 bytes, the 9th holding 8 bits
            b = payload[pos]
            pos += 1
            if shift == 56:
                v |= b << 56
                break
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        v = (v >> 1) ^ -(v & 1)  # ZigZag; negative = a run of empty buckets
        if v < 0:
            index += -v
            continue
        if v:
            bucket, sub = (index >> half_mag) - 1, (index & (half - 1)) + half
            if bucket < 0:
                bucket, sub = 0, sub - half
            out.append((((sub + 1) << (bucket + unit_mag)) - 1, v))
        index += 1
    return out


def merged_spectrum(recs: list[dict]) -> list[tuple[float, float]] | None:
    """(percentile, latency µs) from the corrected histograms of several runs merged."""
    counts = {}
    for rec in recs:
        try:
            h = rec["load"]["histograms"]["latency"]["hdr"]
            for value, n in decode_hdr(h):
                counts[value] = counts.get(value, 0) + n
        except (KeyError, ValueError, struct.error, zlib.error):
            return None
    total = sum(counts.values())
    if not total:
        return None
    out, seen = [], 0
    for value in sorted(counts):
        out.append((100.0 * seen / total, value / 1000))
        seen += counts[value]
        out.append((100.0 * seen / total, value / 1000))
    return out


# ---------------------------------------------------------------------------------------------
# From runs to summary.

def load_dir(d: pathlib.Path) -> tuple[dict, list[dict]]:
    meta_path = d / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    runs = []
    for p in sorted((d / "runs").glob("*.json")):
        rec = json.loads(p.read_text())
        rec["file"] = f"runs/{p.name}"
        runs.append(rec)
    return meta, runs


def run_metrics(rec: dict) -> dict:
    """The per-run figures a table shows, computed from the raw record."""
    load, srv, point = rec["load"], rec["server"], rec["point"]
    served = srv.get("requests_served") or load.get("requests") or 0
    cpu = srv["utime_s"] + srv["stime_s"]
    lat = load.get("latency_us", {})
    m = {
        "rps": load.get("throughput_rps"),
        "mbps": load["bytes_per_s"] / 1e6 if load.get("bytes_per_s") is not None else None,
        "offered_rps": point["rate"] or None,
        # /proc counts CPU in clock ticks (10 ms): no tick at all means "not measurable".
        "cpu_us_per_req": cpu * 1e6 / served if served and cpu > 0 else None,
        "server_util": cpu / srv["wall_s"] if srv.get("wall_s") else None,
        "sys_share": srv["stime_s"] / cpu if cpu else None,
        "threads_peak": srv.get("threads_peak"),
        "ctx_per_req": srv["ctx_switches"]["total"] / served if served else None,
        "errors": sum(load.get("errors", {}).values())
        if isinstance(load.get("errors"), dict) else load.get("errors", 0),
        "mismatches": load.get("mismatches", 0),
    }
    for name, _ in PERCENTILES + (("max", None), ("mean", None)):
        m[name] = lat.get(name)
    m["p99_uncorrected"] = load.get("latency_uncorrected_us", {}).get("p99")
    if point["rate"]:  # open loop: how late upcase-load sent, and what the drain left unanswered
        m["send_lag_p50"] = load.get("send_lag_us", {}).get("p50")
        m["send_lag_p99"] = load.get("send_lag_us", {}).get("p99")
        m["unanswered"] = load.get("unanswered")
    if load.get("client_cpu_s") is not None and load.get("duration_s"):
        # Spinning for send times (--spin) is waiting done on the CPU, not load.
        busy = load["client_cpu_s"] - load.get("client_spin_s", 0.0)
        m["load_util"] = busy / load["duration_s"]
    if "kept_up" in load:  # open loop: did upcase-load send on schedule?
        m["kept_up"] = 1.0 if load["kept_up"] else 0.0
    cpus = rec.get("cpus")
    if cpus and cpus.get("wall_s"):
        client = cpus.get("client_cpu_s",
                          load.get("client_cpu_total_s", load.get("client_cpu_s", 0.0)))
        m["foreign_cpu_share"] = max(0.0, cpus["busy_s"] - cpu - client) / (
            len(cpus["cpus"]) * cpus["wall_s"])
    udp = load.get("udp") or {}
    if point["proto"] == "udp" and udp.get("sent"):
        m["udp_loss"] = udp.get("lost", 0) / udp["sent"]
    sc = srv.get("syscalls")
    if sc and served:
        m["syscalls_per_req"] = sc["total"] / served
        m["syscalls_by_name_per_req"] = {k: v / served for k, v in
                                         sorted(sc["by_name"].items(), key=lambda kv: -kv[1])}
        m["syscalls_source"] = sc["source"]
    return m


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _sort_key(p: dict):
    return (p["proto"] != "tcp", p["mode"] != "closed", p["size"], p["connections"],
            p["rate"], p["key"])


def backend_order(names) -> list[str]:
    names = set(names)
    return [b for b in BACKEND_ORDER if b in names] + sorted(names - set(BACKEND_ORDER))


def point_shards(p: dict) -> int | None:
    """A run's shard count: None for a backend without shards (old runs: 1)."""
    return (p.get("shards") or 1) if p["backend"] in SHARDED_BACKENDS else None


def summarize(meta: dict, runs: list[dict]) -> dict:
    groups, probes, failures = {}, {}, []
    for rec in runs:
        if not rec.get("ok"):
            failures.append(rec)
            continue
        p = rec["point"]
        (probes if p.get("probe") else groups).setdefault(
            (p["backend"], p["key"], point_shards(p)), []).append(rec)

    entries = []
    for (backend, key, shards), recs in groups.items():
        p = recs[0]["point"]
        per_run = [run_metrics(r) for r in recs]
        names = {k for m in per_run for k in m} - {"syscalls_by_name_per_req", "syscalls_source"}
        metrics = {k: _median([m.get(k) for m in per_run]) for k in sorted(names)}
        if "kept_up" in metrics:  # flag the point if any repeat fell behind its schedule
            metrics["kept_up"] = min(m.get("kept_up", 1.0) for m in per_run)
        rps = [m["rps"] for m in per_run if m["rps"] is not None]
        entry = {"backend": backend, "key": key, "shards": shards, "proto": p["proto"],
                 "size": p["size"], "connections": p["connections"], "mode": p["mode"],
                 "label": p["label"],
                 "rate": p["rate"], "repeats": len(recs), "metrics": metrics,
                 "rps_range": [min(rps), max(rps)] if rps else None,
                 "runs": [r["file"] for r in recs if "file" in r],
                 "ctx_source": recs[0]["server"]["ctx_switches"]["source"]}
        probe = probes.get((backend, key, shards))
        if probe:
            pm = run_metrics(probe[0])
            if "syscalls_per_req" in pm:
                entry["syscalls"] = {"per_req": pm["syscalls_per_req"],
                                     "by_name_per_req": pm["syscalls_by_name_per_req"],
                                     "source": pm["syscalls_source"],
                                     "run": probe[0].get("file")}
                metrics["syscalls_per_req"] = pm["syscalls_per_req"]
        entries.append(entry)
    entries.sort(key=_sort_key)
    # A sharded backend is compared with the others at its largest shard count; the others
    # feed the scaling section.
    main = {}
    for e in entries:
        if e["shards"] is not None:
            main[e["backend"]] = max(main.get(e["backend"], 0), e["shards"])
    points = [e for e in entries if e["shards"] is None or e["shards"] == main[e["backend"]]]

    index = {(p["backend"], p["key"]): p for p in points}
    for p in points:
        base = index.get((BASELINE, p["key"]))
        if base and p["backend"] != BASELINE:
            bm, m = base["metrics"], p["metrics"]
            p["vs_threads"] = {
                "rps": m["rps"] / bm["rps"] if m["rps"] and bm["rps"] else None,
                "cpu_per_req": (m["cpu_us_per_req"] / bm["cpu_us_per_req"]
                                if m["cpu_us_per_req"] and bm["cpu_us_per_req"] else None)}
    foreign = _median([run_metrics(r).get("foreign_cpu_share") for r in runs if r.get("ok")])
    return {"meta": meta,
            "foreign_cpu_share": foreign,
            "backends": backend_order({p["backend"] for p in points}),
            "points": points,
            "scaling": scaling(entries),
            "failed_runs": [{"point": f["point"], "error": f.get("error"), "file": f.get("file")}
                            for f in failures]}


# ---------------------------------------------------------------------------------------------
# Shard scaling.

def efficiency(rps_n: float | None, n: int, rps_base: float | None, base: int = 1) -> float | None:
    """req/s at n shards over n/base times req/s at `base` shards (1 = linear scaling)."""
    if not rps_n or not rps_base or not n:
        return None
    return rps_n * base / (n * rps_base)


def scaling(entries: list[dict]) -> dict:
    """{backend: {key: [row per shard count]}} for closed-loop points measured at more than one
    shard count; efficiency is against the smallest count measured (1 in a sweep from 1)."""
    out = {}
    by = {}
    for e in entries:
        if e["shards"] is not None and e["mode"] == "closed":
            by.setdefault((e["backend"], e["key"]), []).append(e)
    for (backend, key), es in by.items():
        if len(es) < 2:
            continue
        es.sort(key=lambda e: e["shards"])
        base = es[0]
        rows = []
        for e in es:
            m = e["metrics"]
            rows.append({"shards": e["shards"], "rps": m["rps"], "rps_range": e["rps_range"],
                         "cpu_us_per_req": m["cpu_us_per_req"],
                         "server_util": m.get("server_util"), "load_util": m.get("load_util"),
                         "ideal_rps": base["metrics"]["rps"] * e["shards"] / base["shards"]
                         if base["metrics"]["rps"] else None,
                         "efficiency": efficiency(m["rps"], e["shards"], base["metrics"]["rps"],
                                                  base["shards"])})
        out.setdefault(backend, {})[key] = rows
    return out


def scaling_key(summary: dict) -> str | None:
    """The point the scaling section shows: the headline one, else the many-connection TCP one
    with the smallest requests."""
    keys = {k for per in summary.get("scaling", {}).values() for k in per}
    if not keys:
        return None
    if HEADLINE_KEY in keys:
        return HEADLINE_KEY
    pts = {p["key"]: p for p in summary["points"] if p["key"] in keys}
    return min(keys, key=lambda k: (pts[k]["proto"] != "tcp", -pts[k]["connections"],
                                    pts[k]["size"], k) if k in pts else (True, 0, 0, k))


def scaling_reference(summary: dict, key: str) -> dict[str, dict]:
    """Backends without shards at the scaling point (iterative: its 1-connection point)."""
    out = {}
    p0 = next((p for p in summary["points"] if p["key"] == key), None)
    for p in summary["points"]:
        if p["shards"] is not None or p["mode"] != "closed" or not p0:
            continue
        if p["key"] == key or (p["backend"] not in out and p["proto"] == p0["proto"]
                               and p["size"] == p0["size"] and p["connections"] == 1):
            if p["backend"] not in out or p["key"] == key:
                out[p["backend"]] = p
    return out


SCALING_COLUMNS = ("shards", "req/s", "ideal req/s", "efficiency", "CPU µs/req", "srv/load CPU")


def scaling_rows(rows: list[dict]) -> list[list[str]]:
    return [[str(r["shards"]), fmt_count(r["rps"]), fmt_count(r["ideal_rps"]),
             _f(r["efficiency"], 2), _f(r["cpu_us_per_req"]), _util(r)] for r in rows]


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
           "runs use the largest count, which is also what the headline and the per-backend tables show.", ""]
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
# Plots.

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


def plot_spectrum(summary: dict, path: pathlib.Path, runs: list[dict] = ()) -> bool:
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
        facts = [x for x in facts if x]
        out.append(f"- {point_label(p)}: " + "; ".join(facts))
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
              "TCP 64 B requests, 64 connections, closed loop, unless noted; p99 at 50 % of the "
              "best backend's maximum, offered open loop.", "",
              md_table(HEADLINE_COLUMNS, headline_rows(summary)), ""]
    for name in plots:
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
    write_report(d, summary, plots)
    print_tables(summary, out)
    return summary
