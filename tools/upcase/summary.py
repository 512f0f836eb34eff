"""From a results folder's runs to its summary: per-run figures (run_metrics), medians per
(backend, point) with ratios against `threads` (summarize), and shard scaling.

With a shard sweep, summary.json's `points` hold each sharded backend at its largest shard count
(the configuration the other backends are compared with) and `scaling` holds every shard count.
"""
from __future__ import annotations

import json
import pathlib
import statistics

from .curve import summarize_curves
from .points import SHARDED_BACKENDS

BASELINE = "threads"  # the blocking, thread-per-connection server every ratio is taken against
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99))
# The point whose figures headline the report and whose load the latency spectrum shows.
HEADLINE_KEY = "tcp-64B-c64-closed"
SPECTRUM_KEY = "tcp-64B-c64-open50"
BACKEND_ORDER = ("iterative", "threads", "fork", "select", "poll", "sigio", "epoll", "uring")

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
    if point["rate"]:  # open loop: how late upcase-load sent, and what was never answered
        m["send_lag_p50"] = load.get("send_lag_us", {}).get("p50")
        m["send_lag_p99"] = load.get("send_lag_us", {}).get("p99")
        m["unanswered"] = load.get("unanswered")
        m["failed"] = load.get("failed", 0)  # lost with their connection (absent before it existed)
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
    groups: dict = {}
    probes: dict = {}
    failures: list = []
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
    main: dict = {}
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
            "curves": summarize_curves(meta, runs, run_metrics),
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
    out: dict = {}
    by: dict = {}
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
