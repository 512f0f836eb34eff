"""Sizes, counts and durations as the tools print and parse them (64B, 16KiB, 1.5M, 500ms)."""
from __future__ import annotations

import re


def fmt_size(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}KiB" if n < 1 << 20 else f"{n >> 20}MiB"
    return f"{n}B"


def fmt_count(x: float | None) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{x:.3g}"


def fmt_duration(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def parse_seconds(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|)\s*", text)
    if not m:
        raise ValueError(f"not a duration: '{text}' (e.g. 2s, 1.5, 500ms)")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "ms" else v
