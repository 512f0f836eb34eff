"""tools/compare's latency-vs-load curves end to end: `tools/compare --quick --no-build
--backends=threads,epoll --slo=p99:20ms --slo=p99:1us` on loopback with build/release's binaries
(what tools/compare always runs) into a temporary --out folder, then summary.json has a curve per
backend with a valid flag on every point, a capacity at the loose objective (or null with its
reason) and "none at this SLO" at the impossible one, and the figure exists. Exits 77 (skipped)
when build/release has no binaries.

    /usr/bin/python3 tests/tools/curve_e2e_test.py
"""
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / "build" / "release" / "bin"
TIMEOUT_S = 240
BACKENDS = ("threads", "epoll")


def fail(msg: str) -> None:
    print(f"curve_e2e_test: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check_curve(b: str, c: dict) -> None:
    pts = c.get("points") or []
    if len(pts) < 3:
        fail(f"{b}: {len(pts)} curve points, expected at least 3")
    for p in pts:
        if not isinstance(p.get("valid"), bool) or not isinstance(p.get("reasons"), list):
            fail(f"{b}: point without a valid flag and reasons: {p}")
        if not p["valid"] and not p["reasons"]:
            fail(f"{b}: an invalid point without a reason: {p}")
    if not c.get("own_max_rps") or "knee" not in c:
        fail(f"{b}: no own maximum or knee: {c.get('own_max_rps')}")
    caps = {cap["slo"]: cap for cap in c.get("capacities", [])}
    if set(caps) != {"p99:20ms", "p99:1us"}:
        fail(f"{b}: capacities {sorted(caps)}")
    loose, impossible = caps["p99:20ms"], caps["p99:1us"]
    if loose["rps"] is not None:
        if not loose["rps"] > 0 or not loose.get("achieved_rps_range"):
            fail(f"{b}: capacity {loose}")
    elif "none at this SLO" not in loose.get("reason", ""):
        fail(f"{b}: a null capacity without its reason: {loose}")
    if impossible["rps"] is not None or "none at this SLO" not in impossible.get("reason", ""):
        fail(f"{b}: p99 <= 1 us met on loopback? {impossible}")


def main() -> int:
    if not (BIN / "upcase-server").exists() or not (BIN / "upcase-load").exists():
        print(f"curve_e2e_test: skipped: no binaries in {BIN} (build the release preset)")
        return 77
    with tempfile.TemporaryDirectory(prefix="curve-e2e-") as tmp:
        out = pathlib.Path(tmp) / "out"
        cmd = [str(ROOT / "tools" / "compare"), "--quick", "--no-build",
               f"--backends={','.join(BACKENDS)}", "--slo=p99:20ms", "--slo=p99:1us",
               "--duration=0.5s", "--warmup=0.2s", f"--out={out}"]
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            fail(f"tools/compare did not finish within {TIMEOUT_S} s")
        if r.returncode != 0:
            fail(f"tools/compare exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        curves = summary.get("curves") or {}
        if sorted(curves) != sorted(BACKENDS):
            fail(f"curves for {sorted(curves)}, expected {sorted(BACKENDS)}")
        for b in BACKENDS:
            check_curve(b, curves[b])
        png = out / "latency_curve.png"
        if not png.exists() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            fail(f"{png.name} missing or not a PNG")
        report = (out / "report.md").read_text()
        for text in ("capacity p99:20ms", "none at this SLO", "latency_curve.png"):
            if text not in report:
                fail(f"report.md lacks '{text}'")
    print("curve_e2e_test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
