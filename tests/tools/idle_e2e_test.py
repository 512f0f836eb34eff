"""tools/compare's idle-connection experiment end to end: `tools/compare --idle=0,200,1100
--backends=select,epoll --quick --no-build` (short runs) on loopback with build/release's binaries
into a temporary --out folder. Then epoll held every count (the holder's records say all were
opened and none closed by the end) with figures and a fitted slope, select held 0 and 200 and
"cannot hold 1100" (past FD_SETSIZE: reported, not a failure, exit 0), report.md has the table
rows and the plot exists. Exits 77 (skipped) when build/release has no binaries.

    /usr/bin/python3 tests/tools/idle_e2e_test.py
"""
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / "build" / "release" / "bin"
TIMEOUT_S = 240
COUNTS = (0, 200, 1100)


def fail(msg: str) -> None:
    print(f"idle_e2e_test: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check_runs(out: pathlib.Path) -> None:
    """Every held run's holder opened N and saw none closed at the end."""
    seen = 0
    for path in sorted((out / "runs").glob("*.json")):
        rec = json.loads(path.read_text())
        idle = rec.get("idle") or {}
        if not idle.get("held") or not idle.get("requested"):
            continue
        seen += 1
        if idle.get("opened") != idle["requested"] or idle.get("closed_end") != 0:
            fail(f"{path.name}: held, yet opened {idle.get('opened')} of "
                 f"{idle['requested']}, {idle.get('closed_end')} closed at the end")
    if seen < 2:
        fail(f"{seen} runs held idle connections, expected at least 2")


def check_summary(out: pathlib.Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    res = summary.get("results") or {}
    if sorted(res) != ["epoll", "select"]:
        fail(f"results for {sorted(res)}")
    held = {b: {p["idle"]: p["held"] for p in r["points"]} for b, r in res.items()}
    if held["epoll"] != {n: True for n in COUNTS}:
        fail(f"epoll held {held['epoll']}")
    if held["select"] != {0: True, 200: True, 1100: False}:
        fail(f"select held {held['select']}, expected 0 and 200 and not 1100")
    for b in res:
        for p in res[b]["points"]:
            if p["held"] and not (p.get("cpu_us_per_req") and p.get("p99") and p.get("rss_kib")):
                fail(f"{b} at {p['idle']}: missing figures {p}")
        if res[b]["fit"].get("b_ns") is None:
            fail(f"{b}: no fitted slope: {res[b]['fit']}")
    why = next(p["reason"] for p in res["select"]["points"] if not p["held"])
    if "1100" not in why:
        fail(f"select's reason does not say what it could not hold: {why}")


def main() -> int:
    if not (BIN / "upcase-server").exists() or not (BIN / "upcase-load").exists():
        print(f"idle_e2e_test: skipped: no binaries in {BIN} (build the release preset)")
        return 77
    with tempfile.TemporaryDirectory(prefix="idle-e2e-") as tmp:
        out = pathlib.Path(tmp) / "out"
        cmd = [str(ROOT / "tools" / "compare"), f"--idle={','.join(map(str, COUNTS))}",
               "--backends=select,epoll", "--quick", "--no-build", "--duration=0.5s",
               "--warmup=0.2s", f"--out={out}"]
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            fail(f"tools/compare did not finish within {TIMEOUT_S} s")
        if r.returncode != 0:
            fail(f"tools/compare exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
        if "cannot hold 1100 idle connections" not in r.stdout:
            fail(f"no 'cannot hold' progress line:\n{r.stdout[-3000:]}")
        check_runs(out)
        check_summary(out)
        png = out / "cpu_vs_idle_connections.png"
        if not png.exists() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            fail(f"{png.name} missing or not a PNG")
        report = (out / "report.md").read_text()
        for text in ("| epoll | 200 |", "| select | 0 |", "| select | 1.1k | cannot hold 1100",
                     "cpu_vs_idle_connections.png", "b: ns CPU/req per idle conn"):
            if text not in report:
                fail(f"report.md lacks '{text}'")
    print("idle_e2e_test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
