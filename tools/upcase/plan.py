"""tools/compare's plan: the matrices (quick, default, full), the matrix flags (--sizes,
--connections, --protos, --shards) and the placement flags resolved against the allowed CPUs,
and the points each backend runs. docs/compare.md describes the flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from .curve import CURVE_SHAPES, Slo, parse_curve, parse_slo
from .errors import ToolExit
from .points import SHARDED_BACKENDS, Point
from .procfs import parse_cpu_list, split_cpus
from .units import parse_seconds

# The latency-vs-load curve runs here by default (--curve); its rates are fractions of each
# backend's own closed-loop maximum here (curve.CURVE_SHAPES: how many, from where to where).
OPEN_BASE = ("tcp", 64, 64)
KIB = 1024

MATRICES: dict[str, dict[str, Any]] = {
    "quick": {
        "closed": [("tcp", 64, 1), ("tcp", 64, 64), ("tcp", 16 * KIB, 64), ("udp", 64, 64)],
        "probes": [("tcp", 64, 64)],
        "repeat": 1, "duration": 1.0, "warmup": 0.3,
    },
    "default": {
        "closed": [("tcp", s, c) for s in (64, 16 * KIB) for c in (1, 64, 512)]
        + [("udp", 64, 64)],
        "probes": [("tcp", 64, 64), ("tcp", 16 * KIB, 64), ("udp", 64, 64)],
        "repeat": 3, "duration": 1.5, "warmup": 0.5,
    },
    "full": {
        "closed": [("tcp", s, c) for s in (64, KIB, 16 * KIB, 64 * KIB)
                   for c in (1, 4, 16, 64, 256, 512, 1024)]
        + [("udp", s, 64) for s in (64, KIB, 8 * KIB)],
        "probes": [("tcp", 64, 1), ("tcp", 64, 64), ("tcp", 64, 512), ("tcp", 16 * KIB, 64),
                   ("udp", 64, 64)],
        "repeat": 3, "duration": 2.0, "warmup": 0.5,
    },
}
# upcase-load's request sizes: TCP any up to 16 MiB, UDP a datagram with its 8-byte sequence.
SIZE_RANGE = {"tcp": (1, 16 << 20), "udp": (8, 65507)}


def parse_list(text: str, flag: str, convert) -> list:
    """A comma-separated list, de-duplicated in order; ValueError with a one-line reason."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{flag}: empty list")
    out = []
    for t in items:
        try:
            v = convert(t)
        except ValueError as e:
            raise ValueError(f"{flag}={text}: {e}") from None
        if v not in out:
            out.append(v)
    return out


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KkMm]?)", text)
    if not m:
        raise ValueError(f"'{text}' is not a byte count such as 64, 1K or 16K")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20}[m.group(2).lower()]


def positive(what: str):
    def convert(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"'{text}': {what} must be a whole number >= 1")
        return int(text)
    return convert


def proto(text: str) -> str:
    if text not in ("tcp", "udp"):
        raise ValueError(f"'{text}' is not tcp or udp")
    return text


def matrix_points(points, sizes=None, connections=None, protos=None) -> list[tuple]:
    """The matrix's (proto, size, connections) with each given list replacing its dimension:
    --sizes=64 turns every point's size into 64 (duplicates merge)."""
    out: list[tuple] = []
    for p, s, c in points:
        if protos and p not in protos:
            continue
        for size in sizes or [s]:
            for conns in connections or [c]:
                if (p, size, conns) not in out:
                    out.append((p, size, conns))
    return out


def check_sizes(sizes, protos):
    for p in protos:
        lo, hi = SIZE_RANGE[p]
        for s in sizes:
            if not lo <= s <= hi:
                raise ValueError(f"--sizes: {s} bytes is out of range for {p} "
                                 f"({lo} to {hi})")


def resolve_placement(server_allowed, load_allowed, same_host: bool, server_cpus=None,
                      load_cpus=None, shards=None, load_threads=None) -> dict:
    """CPU sets, shard counts and load threads from the flags' text (None: default) and the
    allowed CPU sets (sched_getaffinity here, /proc/self/status there); ValueError with a
    one-line reason. `load_allowed` is the CPUs every load host allows."""
    notes = []
    s: list[int] | None
    ld: list[int] | None
    s = parse_cpu_list(server_cpus, server_allowed, "--server-cpus") if server_cpus else None
    ld = parse_cpu_list(load_cpus, load_allowed, "--load-cpus") if load_cpus else None
    if same_host:
        if s is None and ld is None:
            s, ld, note = split_cpus(server_allowed)
            if note:
                notes.append(note)
        elif s is None and ld is not None:
            s = [c for c in server_allowed if c not in ld] or list(server_allowed)
        elif ld is None and s is not None:
            ld = [c for c in load_allowed if c not in s] or list(load_allowed)
    else:
        s = s if s is not None else list(server_allowed)
        ld = ld if ld is not None else list(load_allowed)
        if not ld:
            raise ValueError("the load hosts share no allowed CPU: give --load-cpus")
    assert s is not None and ld is not None
    sweep = parse_list(shards, "--shards", positive("a shard count")) if shards else [len(s)]
    if shards and len(sweep) > 1:
        sweep.sort()
    if max(sweep) > len(s):
        notes.append(f"--shards up to {max(sweep)} on {len(s)} server CPU"
                     f"{'s' if len(s) > 1 else ''}: shards above that share CPUs")
    threads = len(ld) if load_threads is None else load_threads
    if threads < 1:
        raise ValueError("--load-threads must be >= 1")
    overlap = sorted(set(s) & set(ld)) if same_host else []
    return {"server_cpus": s, "load_cpus": ld, "shards": sweep, "load_threads": threads,
            "overlap_cpus": overlap, "notes": notes}


def plan_for(backend: str, matrix: dict, closed_tuples, probe_tuples,
             shards: list[int] | None) -> tuple[list[Point], list[Point]]:
    """Closed-loop points (at every shard count) and syscall probes (at the largest) of one
    backend; shards None: the backend takes no --shards sweep."""
    def allowed(proto, size, conns):
        # iterative serves one TCP connection at a time: the others would wait the whole run.
        return not (backend == "iterative" and proto == "tcp" and conns > 1)
    counts: list[int | None] = list(shards) if backend in SHARDED_BACKENDS and shards else [None]
    closed = [Point(backend, c[0], c[1], c[2], shards=n) for n in counts for c in closed_tuples
              if allowed(*c)]
    probes = []
    for proto, size, conns in probe_tuples:
        conns = conns if allowed(proto, size, conns) else 1
        p = Point(backend, proto, size, conns, probe=True, shards=counts[-1])
        if p not in probes:
            probes.append(p)
    return closed, probes


def open_base(closed_tuples) -> tuple | None:
    """The point the open loop offers fractions of: TCP 64 B x 64, else the many-connection TCP
    point with the smallest requests."""
    if OPEN_BASE in closed_tuples:
        return OPEN_BASE
    tcp = [t for t in closed_tuples if t[0] == "tcp" and t[2] > 1]
    return min(tcp, key=lambda t: (-t[2], t[1])) if tcp else None


@dataclasses.dataclass
class MatrixChoice:
    """The matrix, run lengths and repeats the flags chose."""
    name: str                 # quick | default | full
    matrix: dict
    duration: float
    warmup: float
    repeat: int
    closed: list[tuple]       # (proto, size, connections) of the closed-loop points
    probes: list[tuple]       # ... of the syscall probes
    curve: tuple | None = None  # the open-loop curve's (proto, size, connections), --curve
    slos: list[Slo] = dataclasses.field(default_factory=list)  # --slo objectives
    shape: tuple = CURVE_SHAPES["default"]  # curve.CURVE_SHAPES: sweep points, range, refines


def choose_matrix(args: argparse.Namespace) -> MatrixChoice:
    """The matrix of --quick/--full with --sizes, --connections, --protos applied, and the run
    lengths; ToolExit (one line) for a malformed flag or an empty matrix."""
    name = "quick" if args.quick else "full" if args.full else "default"
    matrix = MATRICES[name]
    try:
        duration = parse_seconds(args.duration) if args.duration else matrix["duration"]
        warmup = parse_seconds(args.warmup) if args.warmup is not None else matrix["warmup"]
        sizes = parse_list(args.sizes, "--sizes", parse_size) if args.sizes else None
        conns = (parse_list(args.connections, "--connections", positive("a connection count"))
                 if args.connections else None)
        protos = parse_list(args.protos, "--protos", proto) if args.protos else None
        if sizes:
            check_sizes(sizes, protos or ["tcp", "udp"])
        if args.shards:
            parse_list(args.shards, "--shards", positive("a shard count"))
    except ValueError as e:
        raise ToolExit(str(e))
    repeat = args.repeat if args.repeat is not None else matrix["repeat"]
    if repeat < 1 or duration <= 0:
        raise ToolExit("--repeat must be >= 1 and --duration > 0")
    if args.copy_bins and args.remote_bin:
        raise ToolExit("--copy-bins and --remote-bin exclude each other")
    closed = matrix_points(matrix["closed"], sizes, conns, protos)
    probes = [t for t in matrix_points(matrix["probes"], sizes, conns, protos)
              if t in closed] or closed[:1]
    if not closed:
        raise ToolExit("the matrix is empty with these --sizes/--connections/--protos")
    curve, slos = curve_flags(args)
    if curve is None:
        curve = open_base(closed)
    elif curve not in closed:  # the curve's loads are fractions of this point's maximum
        closed.append(curve)
    return MatrixChoice(name, matrix, duration, warmup, repeat, closed, probes, curve, slos,
                        CURVE_SHAPES[name])


def curve_flags(args: argparse.Namespace) -> tuple[tuple | None, list[Slo]]:
    """--curve (None: the default family) and the --slo objectives; ToolExit when malformed."""
    try:
        curve = parse_curve(args.curve) if getattr(args, "curve", None) else None
        slos = [parse_slo(t) for t in getattr(args, "slo", None) or []]
        if curve:
            check_sizes([curve[1]], [curve[0]])
    except ValueError as e:
        raise ToolExit(str(e).replace("--sizes:", f"--curve={args.curve}:"))
    return curve, list({s.text: s for s in slos}.values())
