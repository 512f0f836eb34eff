"""The environment fingerprint of a measurement: `upcase-load env` of the binaries in use (one
implementation, in C++; nothing here reads /proc for it), `upcase-load env --check`'s advice, and
which differences between two fingerprints make two measurements incomparable.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess

from .build import BIN_DIR, binary
from .errors import HarnessError

ENV_TIMEOUT_S = 30
# The keys that change what a measurement measures. Left out: what only says where the binary was
# built (liburing's version), what differs by the moment (cpus_online of a hot-plug, irqbalance
# started), and the socket buffer and busy-poll sysctls, which tools/compare's notes report.
MEASUREMENT_KEYS = ("kernel", "cpu_model", "virtualization", "clocksource", "scaling_driver",
                    "scaling_governor", "boost", "smt", "mitigations", "isolcpus", "nohz_full",
                    "io_uring", "io_uring_ops", "io_uring_disabled", "transparent_hugepage")


def default_bin_dir() -> pathlib.Path:
    """$UPCASE_BIN when set (the tests' build folder), else build/release/bin."""
    return pathlib.Path(os.environ.get("UPCASE_BIN") or BIN_DIR)


def _run(bin_dir: pathlib.Path | None, *args: str) -> subprocess.CompletedProcess:
    exe = binary("upcase-load", bin_dir)
    try:
        res = subprocess.run([str(exe), "env", *args], capture_output=True, text=True,
                             timeout=ENV_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"{exe} env: {e}")
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        raise HarnessError(f"{exe} env exited {res.returncode}: {last} (an upcase-load built "
                           "before the fingerprint existed? rebuild it)")
    return res


def load_env(bin_dir: pathlib.Path | None = None) -> dict:
    """`upcase-load env` of bin_dir's upcase-load, parsed; HarnessError when it cannot say."""
    res = _run(bin_dir)
    try:
        env = json.loads(res.stdout)
    except ValueError as e:
        raise HarnessError(f"upcase-load env printed no JSON: {e}")
    if not isinstance(env, dict):
        raise HarnessError("upcase-load env printed no JSON object")
    return env


def check_env(bin_dir: pathlib.Path | None = None) -> list[str]:
    """`upcase-load env --check`'s lines: what lowers the precision, and the fixing commands."""
    return _run(bin_dir, "--check").stdout.rstrip("\n").splitlines()


def differences(a: dict, b: dict, keys: tuple[str, ...] = MEASUREMENT_KEYS) -> list[str]:
    """The measurement keys whose values differ between fingerprints a and b, as
    `key (A vs B)`; a key absent from both is equal."""
    out = []
    for k in keys:
        if a.get(k) != b.get(k):
            out.append(f"{k} ({_short(a.get(k))} vs {_short(b.get(k))})")
    return out


def _short(v: object) -> str:
    text = json.dumps(v, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def refusal(base: dict | None, candidate: dict | None) -> str | None:
    """One line refusing an A/B whose sides ran in different environments, or None."""
    if base is None or candidate is None:
        return None
    diff = differences(base, candidate)
    if not diff:
        return None
    return ("the base's and the candidate's environments differ, so their figures are not "
            "comparable: " + "; ".join(diff))
