"""The tree and its binaries: where they are, what the server offers, building the release preset.

ROOT is the repository (tools/upcase/ is two levels below it); BIN_DIR is build/release/bin, what
tools/compare builds and every tool runs by default.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
from typing import Callable

from .errors import HarnessError

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = ROOT / "build" / "release" / "bin"


def binary(name: str, bin_dir: pathlib.Path | None = None) -> pathlib.Path:
    """An executable from `bin_dir` (default: build/release/bin, what tools/compare builds)."""
    path = (bin_dir or BIN_DIR) / name
    if not os.access(path, os.X_OK):
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        raise HarnessError(f"{shown} not found: build Release first "
                           "(cmake --preset release && cmake --build --preset release)")
    return path


@dataclasses.dataclass
class BackendInfo:
    name: str
    summary: str
    unavailable: str | None  # the reason, or None when usable


def discover_backends(bin_dir: pathlib.Path | None = None) -> list[BackendInfo]:
    """Parses the "Backends" section of `upcase-server --help`."""
    out = subprocess.run([str(binary("upcase-server", bin_dir)), "--help"], capture_output=True,
                         text=True, timeout=10)
    text = out.stdout + out.stderr
    backends, inside = [], False
    for line in text.splitlines():
        if line.startswith("Backends"):
            inside = True
            continue
        if inside:
            m = re.match(r"^\s+([a-z0-9_]+)\s+(.*?)\s*(?:\[unavailable: (.*)\])?\s*$", line)
            if not m or not line.startswith(" "):
                break
            backends.append(BackendInfo(m.group(1), m.group(2), m.group(3)))
    if not backends:
        raise HarnessError("cannot find the Backends section in `upcase-server --help`")
    return backends


def build_release(log: Callable[[str], None] = print) -> None:
    """tools/install-deps, then the release preset, as tools/compare does before measuring
    (docs/compare.md)."""
    steps = [[str(ROOT / "tools" / "install-deps")],
             ["cmake", "--preset", "release", "-G", "Ninja"] if not
             (ROOT / "build" / "release" / "CMakeCache.txt").exists()
             else ["cmake", "--preset", "release"],
             ["cmake", "--build", "--preset", "release", "-j", str(os.cpu_count() or 1)]]
    for cmd in steps:
        log(f"$ {shlex.join(cmd)}")
        # Output goes straight to the terminal: a first build takes minutes and shows progress.
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL if "--preset" in cmd
                           and "--build" not in cmd else None)
        if r.returncode != 0:
            raise HarnessError(f"`{shlex.join(cmd)}` failed (exit {r.returncode})")


def git_describe() -> str:
    """The tree's short commit, with +dirty when tracked files changed."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"
