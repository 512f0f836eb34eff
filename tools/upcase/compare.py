"""tools/compare's steps: the plan (plan.py's matrix; here the backends, runs and estimate), the
environment (build, hosts, placement, what perf can count, notes), the run (closed loop, then
each backend's latency-vs-load curve at fractions of its own maximum with curve.py's knee and
capacity searches, then syscall probes) and the report (report.py).
docs/compare.md describes the flags and the files.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import shlex
import sys
from typing import Any, Callable

from . import curve as curves
from . import fingerprint, report
from .build import binary, build_release, discover_backends, git_describe
from .counters import Tools
from .errors import HarnessError, ToolExit
from .hosts import LOCAL, SshHost, split_destination
from .plan import MatrixChoice, choose_matrix, parse_list, plan_for, resolve_placement
from .points import SHARDED_BACKENDS, Point, RunSettings
from .processes import Children, install_cleanup
from .procfs import machine_info
from .runner import START_AHEAD_S, Runner
from .summary import run_metrics
from .units import fmt_count

# Seconds a run costs beyond warmup+duration (server start, connects, JSON): for the estimate.
RUN_OVERHEAD_S = 0.3
# ...and what each ssh session adds (connection, authentication, the control-shell samples).
REMOTE_OVERHEAD_S = 0.7
PROBE_DURATION_S = 1.0
# Bisection measurements assumed per objective and backend, for the estimate.
SLO_STEPS_ESTIMATE = 5
GENERATED = (("summary.json", "report.md", "meta.json", report.SCALING_PLOT, report.CURVE_PLOT,
              report.IDLE_PLOT) + report.PLOTS)


# ---------------------------------------------------------------------------------------------
# Environment: backends, hosts, placement, counting tools.

def choose_backends(requested: str | None, notes: list[str]) -> list[str]:
    found = discover_backends()
    usable = [b.name for b in found if not b.unavailable]
    for b in found:
        if b.unavailable:
            notes.append(f"backend {b.name} skipped: unavailable ({b.unavailable})")
    if not requested:
        return usable
    names = [n.strip() for n in requested.split(",") if n.strip()]
    for n in names:
        if n not in [b.name for b in found]:
            raise ToolExit(f"unknown backend '{n}' (this build has: "
                           f"{', '.join(b.name for b in found)})")
    chosen = [n for n in names if n in usable]
    if not chosen:
        raise ToolExit(f"none of --backends={requested} is available here; see the notes from "
                       "`build/release/bin/upcase-server --help`", 1)
    return chosen


def connect_hosts(args: argparse.Namespace, log: Callable[[str], None] = print
                  ) -> tuple[Any, list[Any]]:
    """The server host and load hosts (LOCAL or SshHost; one object per destination)."""
    loads = (parse_list(args.load_hosts, "--load-hosts", str) if args.load_hosts
             else ["local"])
    needs: dict[str, set[str]] = {}
    if args.server_host:
        needs.setdefault(args.server_host, set()).add("upcase-server")
    for d in loads:
        if d != "local":
            needs.setdefault(d, set()).add("upcase-load")
    hosts: dict[str, Any] = {"local": LOCAL}
    for d in needs:
        try:
            split_destination(d)
        except ValueError as e:
            raise ToolExit(str(e))
    for d, names in needs.items():
        log(f"tools/compare: connecting to {d} over ssh")
        hosts[d] = SshHost(d, args.ssh_option, args.remote_bin, args.copy_bins,
                           needs=sorted(names), log=log)
    return hosts[args.server_host or "local"], [hosts[d] for d in loads]


@dataclasses.dataclass
class Environment:
    backends: list[str]
    server_host: Any
    load_hosts: list[Any]
    place: dict           # plan.resolve_placement's
    server_addr: str
    tools: Tools
    notes: list[str]


def probe_tools(server_host: Any, notes: list[str]) -> Tools:
    """What perf (or strace) can count on the server's host, with notes on what is missing."""
    if server_host.remote:
        tools = server_host.probe_tools()
        if not tools.perf_cs:
            notes.append(f"perf cannot count on {server_host.name}: cs/req sums "
                         "/proc/PID/task/*/status there, and the syscall probes are skipped")
        elif not tools.perf_syscalls:
            notes.append(f"perf cannot count syscalls on {server_host.name}: probes skipped")
        return tools
    tools = Tools.probe()
    if not tools.perf_cs:
        notes.append("perf cannot count context switches here: cs/req sums "
                     "/proc/PID/task/*/status of the threads alive at the end of each run")
    if not tools.perf_syscalls:
        notes.append("syscalls counted with strace -c (perf tracepoints unusable)"
                     if tools.strace else "neither perf nor strace works: no syscall counts")
    return tools


def environment(args: argparse.Namespace) -> Environment:
    """Builds (unless --no-build), finds the backends, connects the hosts, resolves the
    placement and probes the counting tools."""
    if not args.no_build:
        build_release()
    binary("upcase-server")
    try:
        binary("upcase-load")
    except HarnessError as e:
        raise ToolExit(f"{e}; the load generator (loadgen/) has not been built", 1)
    notes: list[str] = []
    backends = choose_backends(args.backends, notes)
    server_host, load_hosts = connect_hosts(args)
    load_allowed = set(load_hosts[0].allowed_cpus())
    for host in load_hosts[1:]:
        load_allowed &= set(host.allowed_cpus())
    same_host = any(x is server_host for x in load_hosts)
    try:
        place = resolve_placement(server_host.allowed_cpus(), sorted(load_allowed), same_host,
                                  args.server_cpus, args.load_cpus, args.shards,
                                  args.load_threads)
    except ValueError as e:
        raise ToolExit(str(e))
    notes += place["notes"]
    server_addr = args.server_addr or (server_host.address if server_host.remote
                                       else "127.0.0.1")
    if any(x.remote for x in load_hosts) and server_addr.startswith("127."):
        raise ToolExit("--load-hosts with another host needs --server-addr: the server's "
                       "address as those hosts reach it")
    tools = probe_tools(server_host, notes)
    if "iterative" in backends:
        notes.append("iterative serves one TCP connection at a time, so it runs only the "
                     "1-connection TCP points and no open-loop points")
    if len(load_hosts) > 1:
        notes.append(f"upcase-load ran on {len(load_hosts)} hosts at once ("
                     + ", ".join(x.name for x in load_hosts) + "), started together with "
                     "--start-at (their clocks must agree), merged with `upcase-load merge`; "
                     "each takes an even share of the connections and of the offered rate")
    return Environment(backends, server_host, load_hosts, place, server_addr, tools, notes)


# ---------------------------------------------------------------------------------------------
# Plan: the runs of every backend, their count and the time they take.

@dataclasses.dataclass
class RunPlan:
    settings: RunSettings
    probe_settings: RunSettings
    base: dict                # the settings every run shares (meta.json records them)
    shards: list[int] | None  # the --shards sweep, None when every server has one shard
    plans: dict[str, tuple[list[Point], list[Point]]]
    open_backends: list[str]
    base_point: tuple | None  # the curve's point: open-loop loads are fractions of its maximum
    n_open: int
    n_probe: int
    total: int
    estimate_s: float


def run_plan(choice: MatrixChoice, env: Environment, server_args: tuple[str, ...]) -> RunPlan:
    place, server_host, load_hosts = env.place, env.server_host, env.load_hosts
    # One server CPU keeps today's exact commands (taskset already pins; no --pin needed).
    base = dict(warmup=choice.warmup, server_cpu=place["server_cpus"][0],
                load_cpu=place["load_cpus"][0], server_args=server_args,
                server_cpus=tuple(place["server_cpus"]), load_cpus=tuple(place["load_cpus"]),
                load_threads=place["load_threads"], pin=len(place["server_cpus"]) > 1,
                server_host=server_host if server_host.remote else None,
                load_hosts=tuple(load_hosts) if load_hosts != [LOCAL] else (),
                server_addr=env.server_addr if env.server_addr != "127.0.0.1" else None,
                server_placement=True)
    settings = RunSettings(duration=choice.duration, **base)  # type: ignore[arg-type]
    probe_settings = RunSettings(duration=min(choice.duration, PROBE_DURATION_S),
                                 **base)  # type: ignore[arg-type]
    shards = place["shards"] if place["shards"] != [1] else None
    plans = {b: plan_for(b, choice.matrix, choice.closed, choice.probes, shards)
             for b in env.backends}
    open_backends = [b for b in env.backends if b != "iterative"]
    base_point = choice.curve
    n_sweep, _, _, n_refine = choice.shape
    opens = (n_sweep + n_refine + SLO_STEPS_ESTIMATE * len(choice.slos)) if base_point else 0
    n_closed = sum(len(c) for c, _ in plans.values()) * choice.repeat
    n_open = len(open_backends) * opens * choice.repeat
    tools = env.tools
    n_probe = (sum(len(p) for _, p in plans.values())
               if (tools.perf_syscalls or (tools.strace and not server_host.remote)) else 0)
    overhead = (RUN_OVERHEAD_S
                + REMOTE_OVERHEAD_S * sum(x.remote for x in {server_host, *load_hosts})
                + (START_AHEAD_S if len(load_hosts) > 1 else 0))
    estimate = ((n_closed + n_open) * (choice.duration + choice.warmup + overhead)
                + n_probe * (probe_settings.duration + choice.warmup + overhead))
    return RunPlan(settings, probe_settings, base, shards, plans, open_backends, base_point,
                   n_open, n_probe, n_closed + n_open + n_probe, estimate)


def prepare_out(out: pathlib.Path) -> None:
    """The results folder, emptied of what an earlier comparison generated."""
    out.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:
        (out / name).unlink(missing_ok=True)
    for old in (out / "runs").glob("*.json") if (out / "runs").is_dir() else ():
        old.unlink()


def make_meta(args: argparse.Namespace, argv: list[str], choice: MatrixChoice,
              env: Environment, rp: RunPlan) -> dict:
    """meta.json: the command, date, revision, machine, settings and notes."""
    place = env.place
    placement = {"server_host": env.server_host.name, "server_cpus": place["server_cpus"],
                 "shards": place["shards"], "pin": rp.base["pin"],
                 "load_hosts": [x.name for x in env.load_hosts],
                 "load_cpus": place["load_cpus"], "load_threads": place["load_threads"],
                 "server_addr": env.server_addr, "overlap_cpus": place["overlap_cpus"]}
    meta: dict = {
        "command": "tools/compare" + (" " + shlex.join(argv) if argv else ""),
        "out": str(args.out),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git_describe(), "machine": machine_info(),
        "settings": {"matrix": choice.name, "duration_s": choice.duration,
                     "warmup_s": choice.warmup, "repeat": choice.repeat,
                     "server_cpu": rp.base["server_cpu"], "load_cpu": rp.base["load_cpu"],
                     **placement, "server_args": list(rp.base["server_args"]),
                     "arrival": rp.settings.arrival, "backends": env.backends},
        "tools": vars(env.tools), "notes": env.notes}
    for x in {env.server_host, *env.load_hosts}:
        if x.remote:
            meta.setdefault("hosts", {})[x.name] = x.machine_info()
    try:
        meta["env"] = fingerprint.load_env()  # build/release/bin's upcase-load, the one run
    except HarnessError as e:
        meta["env"] = None
        env.notes.append(f"no environment fingerprint: {e}")
    return meta


def check_env() -> int:
    """--check-env: `upcase-load env --check`'s lines (what lowers the precision here and the
    command that fixes each); 0 whatever they say."""
    for line in fingerprint.check_env(fingerprint.default_bin_dir()):
        print(line)
    return 0


def announce(out: pathlib.Path, env: Environment, rp: RunPlan, meta: dict) -> None:
    print(f"tools/compare: backends {', '.join(env.backends)}; {rp.total} runs, about "
          f"{rp.estimate_s / 60:.1f} min; results in {out}/")
    print(f"tools/compare: {report.placement_text(meta['settings'])}")
    if report.overlap_text(meta["settings"]):
        print(f"tools/compare: NOTE: {report.overlap_text(meta['settings'])}")
    for n in env.notes:
        print(f"  note: {n}")


# ---------------------------------------------------------------------------------------------
# Run: closed loop, open loop, probes.

def run_closed(runner: Runner, rp: RunPlan, backends: list[str], repeat: int,
               records: list) -> list[dict]:
    """Every closed-loop point, interleaved so slow drift spreads over every backend; the
    records that succeeded."""
    closed_recs = []
    for r in range(repeat):
        for b in backends:
            for p in rp.plans[b][0]:
                rec = runner.run(p, r)
                if rec:
                    records.append(rec)
                if rec and rec["ok"]:
                    closed_recs.append(rec)
    return closed_recs


def own_maxima(rp: RunPlan, closed_recs: list[dict]) -> dict[str, float]:
    """Each backend's median closed-loop req/s at the curve's point (sharded backends at their
    largest shard count)."""
    main_shards = rp.shards[-1] if rp.shards else None
    assert rp.base_point is not None
    key = Point("", *rp.base_point).key
    got: dict[str, list[float]] = {}
    for rec in closed_recs:
        p = rec["point"]
        if p["key"] == key and p.get("shards") in (None, main_shards):
            got.setdefault(p["backend"], []).append(rec["load"]["throughput_rps"])
    return {b: sorted(v)[len(v) // 2] for b, v in got.items() if v}


def curve_measure(runner: Runner, rp: RunPlan, backend: str, own: float, repeat: int,
                  records: list) -> Callable[[float, str], curves.Sample]:
    """measure(rate, role): `repeat` open-loop runs of the curve's point at that rate, as a
    Sample."""
    main_shards = rp.shards[-1] if rp.shards else None
    assert rp.base_point is not None
    proto, size, conns = rp.base_point

    def measure(rate: float, role: str) -> curves.Sample:
        rate = round(rate)
        n = main_shards if backend in SHARDED_BACKENDS else None
        point = Point(backend, proto, size, conns, rate=rate,
                      label=curves.fraction_label(rate / own), shards=n, role=role)
        runs = []
        for r in range(repeat):
            rec = runner.run(point, r)
            records.append(rec)
            if rec and rec["ok"]:
                m = run_metrics(rec)
                m["valid"], m["reasons"] = curves.run_validity(rec, m)
                runs.append(m)
        return curves.Sample(rate, runs, role)
    return measure


def run_curve(runner: Runner, rp: RunPlan, choice: MatrixChoice, backend: str, own: float,
              records: list) -> None:
    """One backend's curve: the log-spaced sweep, the knee's refinement, each objective's
    bisection."""
    measure = curve_measure(runner, rp, backend, own, choice.repeat, records)
    n_sweep, lo, hi, n_refine = choice.shape
    curves.trace(measure, [own * f for f in curves.sweep_fractions(n_sweep, lo, hi)], n_refine,
                 choice.slos)


def run_open(runner: Runner, rp: RunPlan, choice: MatrixChoice, closed_recs: list[dict],
             meta: dict, records: list) -> None:
    """Each backend's latency-vs-load curve at offered loads relative to its own maximum."""
    maxima = own_maxima(rp, closed_recs) if rp.base_point else {}
    if rp.base_point:
        meta["curve"] = {"point": Point("", *rp.base_point).key, "own_max_rps": maxima,
                         "slos": [s.record() for s in choice.slos], "shape": choice.shape}
    if maxima and rp.open_backends:
        print("tools/compare: curves at fractions of each backend's own maximum ("
              + ", ".join(f"{b} {fmt_count(v)} req/s" for b, v in maxima.items()) + ")")
        for b in rp.open_backends:
            if b in maxima:
                run_curve(runner, rp, choice, b, maxima[b], records)
            else:
                meta["notes"].append(f"{b}: no closed-loop result at the curve's point, so no "
                                     "latency-vs-load curve")
    elif rp.open_backends:
        meta["notes"].append("no closed-loop TCP result with several connections: open-loop "
                             "points skipped")
        runner.done += rp.n_open


def run_all(out: pathlib.Path, choice: MatrixChoice, env: Environment, rp: RunPlan,
            meta: dict) -> tuple[Runner, int]:
    """Runs the plan (an interruption reports what was measured); writes meta.json."""
    runner = Runner(out, rp.settings, env.tools, rp.total)
    status = 0
    records: list = []
    notes = meta["notes"]
    try:
        closed_recs = run_closed(runner, rp, env.backends, choice.repeat, records)
        run_open(runner, rp, choice, closed_recs, meta, records)
        if rp.n_probe:
            for b in env.backends:
                for p in rp.plans[b][1]:
                    records.append(runner.run(p, 0, rp.probe_settings))
    except KeyboardInterrupt:
        print("\ntools/compare: interrupted; reporting what was measured", file=sys.stderr)
        notes.append("interrupted: the matrix is incomplete")
        status = 130
    finally:
        Children.kill_all()
        runner.close()
        for b, why in runner.dead.items():
            notes.append(f"backend {b} skipped: {why}")
        if any(rec and rec.get("placement", {}).get("outside_server_cpus") for rec in records):
            notes.append("upcase-server pinned a thread outside the server CPUs (a server "
                         "that pins shard i to CPU i rather than to the i-th allowed CPU): "
                         "runs/*.json `server.thread_cpus` shows where each ran")
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return runner, status


# ---------------------------------------------------------------------------------------------
# Report, and the whole.

def write_report(out: pathlib.Path, runner: Runner, status: int) -> int:
    if not any((out / "runs").glob("*.json")):
        raise ToolExit("no run finished; nothing to report", 1)
    summary = report.build(out)
    plots = [n for n in (*report.PLOTS, report.CURVE_PLOT, report.SCALING_PLOT, report.IDLE_PLOT)
             if (out / n).exists()]
    print(f"\ntools/compare: {out}/report.md, {', '.join(plots)}, summary.json, runs/")
    if summary["failed_runs"] or runner.dead:
        print(f"tools/compare: {len(summary['failed_runs'])} run(s) failed, "
              f"{len(runner.dead)} backend(s) did not start; see the report's notes",
              file=sys.stderr)
        status = status or 1
    return status


def replot(folder: str) -> int:
    """--replot DIR: summary, report.md and plots again from DIR's saved JSON."""
    d = pathlib.Path(folder)
    if not (d / "runs").is_dir():
        raise ToolExit(f"--replot {d}: no runs/ folder with saved JSON there")
    report.build(d)
    print(f"\ntools/compare: rewrote {d}/report.md, summary.json and plots")
    return 0


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """tools/compare after its flags are parsed: plan, environment, run, report."""
    if args.replot:
        return replot(args.replot)
    if args.check_env:
        return check_env()
    if getattr(args, "idle", None) or getattr(args, "idle_rate", None):
        from . import idle_experiment  # imports this module
        if not args.idle:
            raise ToolExit("--idle-rate needs --idle=LIST")
        install_cleanup()
        return idle_experiment.run(args, argv)
    choice = choose_matrix(args)
    install_cleanup()
    env = environment(args)
    rp = run_plan(choice, env, tuple(args.server_arg))
    out = pathlib.Path(args.out)
    prepare_out(out)
    meta = make_meta(args, argv, choice, env, rp)
    announce(out, env, rp, meta)
    runner, status = run_all(out, choice, env, rp, meta)
    return write_report(out, runner, status)
