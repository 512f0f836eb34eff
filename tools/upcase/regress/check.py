"""tools/regress's A/B check from start to exit status: choose the base, build both sides,
measure them interleaved (ab.Measurement), judge (verdicts) and write report.md and regress.json.

The exit status: 0 every verdict same, improved or inconclusive; 1 any metric regressed; 2 could
not run (no such base, a build failed, a run or a server failed). docs/regress.md describes the
flags and the files.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys
import time

from .. import fingerprint, procfs
from ..build import BIN_DIR, ROOT, binary, build_release, discover_backends
from ..counters import Tools
from ..errors import HarnessError, ToolExit
from ..processes import install_cleanup
from . import ab, curve_ab
from . import base as rb
from . import verdicts

DEFAULT_AREA = ROOT / "build" / "regress-base"
# Tests only: judge the samples in this JSON file ({"metrics": [{"name", "family", "base": [...],
# "candidate": [...], "noisy": [...]}], "failures": [...], "env": {"base", "candidate"}}) instead
# of building and measuring.
FAKE_SAMPLES_ENV = "UPCASE_REGRESS_FAKE_SAMPLES"


def parse_tolerance(text: str) -> tuple[str, float]:
    """--tolerance FAMILY=X: X a fraction (0.02) or a percentage (2%); ValueError (one line) for
    an unknown family, a value that is not a number, or a negative one."""
    fam, sep, val = text.partition("=")
    if not sep or fam not in ab.FAMILIES:
        raise ValueError(f"--tolerance {text}: expected FAMILY=X with FAMILY one of "
                         f"{', '.join(ab.FAMILIES)}, e.g. cpu_us_per_req=0.03 or =3%")
    number = val.strip()
    percent = number.endswith("%")
    try:
        x = float(number[:-1] if percent else number)
    except ValueError:
        x = float("nan")
    if not x == x or x in (float("inf"), float("-inf")) or x < 0:
        raise ValueError(f"--tolerance {text}: '{val}' is not a tolerance: give a fraction "
                         "(0.02) or a percentage (2%), >= 0")
    return fam, x / 100 if percent else x


def candidate_info() -> dict:
    head = rb.rev_parse(ROOT, "HEAD")
    assert head is not None
    changed = rb.git(ROOT, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    label = head[:10] + (f" + {len(changed)} uncommitted change(s)" if changed else "")
    return {"rev": head, "short": head[:10], "uncommitted": changed, "label": label,
            "bin_dir": str(BIN_DIR)}


def machine_line(m: dict) -> str:
    return f"{m.get('cpu_model', '?')}, {m.get('online_cpus', '?')} CPUs, Linux {m.get('kernel')}"


def common_backends(bins: dict, requested: str | None, notes: list[str]) -> list[str]:
    """Backends both sides' servers list as available (and --backends asked for)."""
    usable: dict[str, list[str]] = {}
    for side, d in bins.items():
        found = discover_backends(d)
        usable[side] = [b.name for b in found if not b.unavailable]
        for b in found:
            if b.unavailable:
                notes.append(f"{side}: backend {b.name} unavailable: {b.unavailable}")
    both = [b for b in usable["candidate"] if b in usable["base"]]
    for side, other in (("base", "candidate"), ("candidate", "base")):
        for name in usable[side]:
            if name not in usable[other]:
                notes.append(f"backend {name} only in the {side}: not compared")
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        for n in names:
            if n not in both:
                raise ToolExit(f"--backends: {n} is not available on both sides "
                               f"(both have: {', '.join(both) or 'none'})")
        both = [b for b in both if b in names]
    if not both:
        raise ToolExit("no backend is available on both sides")
    return both


def side_envs(bins: dict, notes: list[str]) -> dict:
    """Each side's fingerprint: `upcase-load env` of the upcase-load that measures it (None,
    with a note, from one that predates the fingerprint)."""
    envs: dict[str, dict | None] = {}
    for side in ab.SIDES:
        try:
            envs[side] = fingerprint.load_env(bins[side])
        except HarnessError as e:
            envs[side] = None
            notes.append(f"{side}: no environment fingerprint, so none compared: {e}")
    return envs


def _utc(fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime(fmt)


def _start(args: argparse.Namespace, argv: list[str]) -> tuple[rb.Base, dict, list[str]]:
    """The base, the run's info (what regress.json records) and its notes."""
    command = "tools/regress" + (" " + shlex.join(argv) if argv else "")
    try:
        base = rb.choose_base(ROOT, args.base)
        cand = candidate_info()
    except rb.BaseError as e:
        raise ToolExit(str(e))
    print(f"tools/regress: base {base.short} ({base.how}); candidate {cand['label']}")
    notes: list[str] = []
    if base.rev == cand["rev"]:
        notes.append("base and candidate are the same commit" + (
            ": only the uncommitted changes differ" if cand["uncommitted"]
            else " with no uncommitted change: an A/A check (expect no regressed)"))
        print(f"  note: {notes[-1]}")
    info = {"tool": "tools/regress", "command": command, "cwd": os.getcwd(), "date": _utc(),
            "base": {"rev": base.rev, "short": base.short, "spec": base.spec, "how": base.how},
            "candidate": cand, "machine": procfs.machine_info(), "alpha": args.alpha,
            "tolerances": args.tolerances, "notes": notes}
    info["machine_line"] = machine_line(info["machine"])
    return base, info, notes


def ab_main(args: argparse.Namespace, argv: list[str]) -> int:
    out = pathlib.Path(args.out or "results/latest/regress")
    base, info, notes = _start(args, argv)
    fake = os.environ.get(FAKE_SAMPLES_ENV)
    if fake:
        data = json.loads(pathlib.Path(fake).read_text())
        info["env"] = data.get("env", {side: None for side in ab.SIDES})
        refused = fingerprint.refusal(info["env"]["base"], info["env"]["candidate"])
        if refused:
            raise ToolExit(refused)
        metrics = verdicts.metrics_from_json(data)
        failures = list(data.get("failures", []))
        info["settings"] = {"rounds": max((len(m.base) for m in metrics), default=0),
                            "fake_samples": fake}
        info["measure_s"] = 0.0
        return finish(out, metrics, failures, info, {})

    install_cleanup()
    tree = rb.BaseTree(ROOT, pathlib.Path(args.base_dir).resolve())
    try:
        tree.lock()
        info["base"]["src"], info["base"]["build_dir"] = str(tree.src), str(tree.build_dir)
        build_cmds = _build_sides(args, base, tree)
        if args.build_only:
            print(f"tools/regress: built base {base.short} ({tree.bin_dir}) and the candidate "
                  f"({BIN_DIR})")
            return 0
        return measure_ab(args, out, tree, info, notes, build_cmds)
    except rb.BaseError as e:
        raise ToolExit(str(e))
    finally:
        tree.unlock()


def _build_sides(args: argparse.Namespace, base: rb.Base, tree: rb.BaseTree) -> dict:
    """Builds the candidate (build/release) and the base (its worktree); the commands run."""
    build_cmds: dict[str, list[str]] = {}
    if args.no_build:
        if tree.built_rev() != base.rev:
            raise ToolExit(f"--no-build: {tree.build_dir} holds a build of "
                           f"{(tree.built_rev() or 'nothing')[:10]}, not of base {base.short}; "
                           "run without --no-build")
        return build_cmds
    print(f"tools/regress: building the candidate (working tree) in {BIN_DIR.parent}")

    def log(line: str) -> None:
        print(line)
        build_cmds.setdefault("candidate", []).append(line.removeprefix("$ "))
    try:
        build_release(log=log)
    except HarnessError as e:
        raise ToolExit(f"the candidate does not build: {e}")
    print(f"tools/regress: checking out base {base.short} in {tree.src}")
    tree.checkout(base.rev)
    print(f"tools/regress: building base {base.short} in {tree.build_dir}")
    t0 = time.monotonic()
    build_cmds["base"] = [shlex.join(c) for c in tree.build(base.rev)]
    print(f"tools/regress: base built in {time.monotonic() - t0:.0f} s")
    return build_cmds


def _settings_info(args: argparse.Namespace, backends: list[str], plan: ab.Plan,
                   settings: ab.Settings, tools: Tools) -> dict:
    return {
        "rounds": args.rounds, "matrix": args.matrix, "backends": backends,
        "points": [p.key for p in plan.points], "probes": [p.key for p in plan.probes],
        "duration_s": settings.duration, "warmup_s": settings.warmup,
        "probe_duration_s": settings.probe_duration, "probe_warmup_s": settings.probe_warmup,
        "server_cpu": settings.server_cpu, "load_cpu": settings.load_cpu,
        "server_args": args.server_arg,
        "base_server_args": getattr(args, "base_server_arg", []), "load_from": args.load_from,
        "micro_filter": ab.MICRO_FILTER, "micro_repetitions": ab.MICRO_REPETITIONS,
        "micro_min_time_s": ab.MICRO_MIN_TIME_S, "tools": vars(tools),
        "curve": {"point": args.curve, "slos": [s.record() for s in args.slos],
                  "backends": [p.backend for p in plan.curves],
                  "fractions": list(curve_ab.CURVE_FRACTIONS),
                  "knee_refinements": curve_ab.KNEE_REFINEMENTS,
                  "slo_steps": curve_ab.SLO_STEPS} if plan.curves else None}


def measure_ab(args: argparse.Namespace, out: pathlib.Path, tree: rb.BaseTree, info: dict,
               notes: list[str], build_cmds: dict) -> int:
    for name in ("upcase-server", "upcase-load", "uppercase_bench"):
        binary(name)
        binary(name, tree.bin_dir)
    load_dir = BIN_DIR if args.load_from == "candidate" else tree.bin_dir
    bins = {"base": ab.compose_bin_dir(tree.area / "bin-ab", tree.bin_dir, load_dir),
            "candidate": BIN_DIR}
    benches = {"base": tree.bin_dir / "uppercase_bench", "candidate": BIN_DIR / "uppercase_bench"}
    info["env"] = side_envs(bins, notes)
    refused = fingerprint.refusal(info["env"]["base"], info["env"]["candidate"])
    if refused:
        raise ToolExit(refused)
    backends = common_backends(bins, args.backends, notes)
    tools = Tools.probe()
    if not (tools.perf_syscalls or tools.strace):
        notes.append("neither perf nor strace works here: no syscalls/request")
    elif not tools.perf_syscalls:
        notes.append("syscalls counted with strace -c (perf tracepoints unusable)")
    server_cpu, load_cpu, cpu_note = procfs.cpus_for_runs()
    if cpu_note:
        notes.append(cpu_note)
    curve_point = getattr(args, "curve_point", None)
    plan = ab.make_plan(args.matrix, backends, probes=bool(tools.perf_syscalls or tools.strace),
                        curve=curve_point)
    # An upcase-load that prints a fingerprint also takes --server-pid/--server-cpus.
    settings = ab.Settings(rounds=args.rounds, server_cpu=server_cpu, load_cpu=load_cpu,
                           server_args=tuple(args.server_arg),
                           base_server_args=tuple(getattr(args, "base_server_arg", ())),
                           server_placement=None not in info["env"].values(),
                           curve=curve_point, slos=tuple(getattr(args, "slos", ())))
    info["settings"] = _settings_info(args, backends, plan, settings, tools)
    for n in notes:
        if n not in info["notes"]:
            info["notes"].append(n)
    for n in info["notes"]:
        print(f"  note: {n}")
    m = ab.Measurement(plan, bins, benches, settings, tools, out)
    print(f"tools/regress: backends {', '.join(backends)}; {args.rounds} rounds, {m.total} "
          f"runs (both sides; probes and micro-benchmarks every {ab.SPARSE_EVERY}nd round), about "
          f"{settings.estimate_s(plan) / 60:.1f} min; results in {out}/")
    t0 = time.monotonic()
    try:
        metrics = m.run()
    except KeyboardInterrupt:
        raise ToolExit("interrupted; nothing judged", 2)
    info["measure_s"] = time.monotonic() - t0
    info["remeasured"], info["excluded"] = m.remeasured, m.excluded
    if m.remeasured:
        info["notes"].append(
            f"{len(m.remeasured)} pair(s) measured again: the machine's speed changed during "
            f"them (the load generator's CPU/request moved by over {ab.DISTURBED * 100:g} %); "
            f"{len(m.excluded)} still disturbed and left out")
    commands = {"base_build": build_cmds.get("base"),
                "candidate_build": build_cmds.get("candidate"), **m.commands}
    return finish(out, list(metrics.values()), m.failures, info, commands)


def finish(out: pathlib.Path, metrics: list, failures: list[str], info: dict,
           commands: dict) -> int:
    """Judges, writes report.md and regress.json, prints the table; returns the exit status."""
    rows, alpha_side = verdicts.judge(metrics, info["tolerances"], info["alpha"])
    info["failures"] = failures
    md = verdicts.markdown(rows, alpha_side, info)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(md)
    c = verdicts.counts(rows)
    judged = sum(c.values())
    status = 1 if c["regressed"] else 2 if failures or not judged else 0
    (out / "regress.json").write_text(json.dumps(
        info | {"commands": commands, "alpha_side": alpha_side,
                "interval_level": 1 - 2 * alpha_side, "verdicts": c, "exit_status": status,
                "metrics": verdicts.rows_json(rows)}, indent=1) + "\n")
    print("\n" + md)
    for f in failures:
        print(f"tools/regress: {f}", file=sys.stderr)
    where = f"{out}/report.md, {out}/regress.json"
    if status == 1:
        print(f"tools/regress: REGRESSED: {c['regressed']} metric(s); {where}")
    elif status == 2:
        print(f"tools/regress: could not measure: {len(failures)} problem(s)"
              + ("" if judged else ", no metric judged") + f"; {where}", file=sys.stderr)
    else:
        print(f"tools/regress: PASS (no metric regressed: {c['same']} same, {c['improved']} "
              f"improved, {c['inconclusive']} inconclusive); {where}")
    return status
