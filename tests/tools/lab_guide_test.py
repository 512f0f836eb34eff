#!/usr/bin/env python3
"""Keeps docs/lab.md true: its commands run, and the code it points at exists.

  lab_guide_test.py walkthrough [GUIDE]   run every ```bash block of the guide, in order, in one
                                          bash (as a student's terminal would), with short
                                          durations (LAB_DURATION=1s) on a free PORT; fails on the
                                          first command that fails, or after a time limit
  lab_guide_test.py references [GUIDE]    every `path` → `Symbol` reference names a file that
                                          defines that symbol, and every line of a ```cpp quote
                                          occurs in the file referenced last before it

A block whose first line is "# needs root" is skipped, with the reason printed, when not root.
```text blocks are example output and are never run: the walkthrough compares the first ```text
block after each bash block with what that block printed in this run (check_figures below):

  - counter lines ("shard N: name=value ...") and ready lines name the same fields, in order;
  - upcase-load's report rows ("requests", "unanswered", ...) exist in the fresh output;
  - tools/lab-cost's figures: its table row names the same backend, shards, protocol and
    connections; syscalls/request and every call of a "per request:" line that the guide or the
    fresh run puts at FIGURE_MIN (0.5) or more must agree within FIGURE_TOLERANCE (35 %) of each
    other, and a call at FIGURE_MIN or more on one side must be named on the other. Context
    switches per request, the calls that wait or batch (BATCHING: epoll_wait, io_uring_enter,
    accept4, ...) and the syscalls/request total of a run that makes such calls need only agree
    within a factor of BATCHING_FACTOR (6): how many requests one
    wait serves depends on how busy the machine is (epoll_wait per request in the one-shot
    exercise: 1.35 on a quiet machine, 0.48 while four builds ran; uring's io_uring_enter at 32
    connections: 0.19 in the guide, 0.77 in a 1 s run on a busy machine). Smaller figures depend
    on batching too and are not compared. A call added or removed per request is still caught:
    it is compared by name, within 35 %.

A block skipped (not root) has no fresh output and is not compared. The walkthrough uses the build in
$UPCASE_BIN (CTest sets it; default build/release/bin) and writes only to a temporary $LAB_OUT.
Exit status: 0 pass, 1 fail, 77 skipped (a tool the guide uses is not installed, or CPUs 0 and 1
are not both available).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_GUIDE = os.path.join(ROOT, "docs", "lab.md")
ROOT_MARK = "# needs root"
SKIP = 77  # CTest's SKIP_RETURN_CODE
WALKTHROUGH_TIMEOUT_S = int(os.environ.get("LAB_TIMEOUT_S", "170"))
TERM_GRACE_S = 15  # after SIGTERM on timeout: tools/two-hosts removes its namespaces meanwhile

FENCE = re.compile(r"^```(\S*)\s*$")
REFERENCE = re.compile(r"`([\w./-]+/[\w.-]+)`\s*→\s*`([A-Za-z_][\w:]*)`")


def blocks(guide):
    """Yields (language, first line number, text) for every fenced block."""
    lang, start, body = None, 0, []
    with open(guide) as f:
        for number, line in enumerate(f, 1):
            m = FENCE.match(line.rstrip("\n"))
            if lang is None:
                if m and m.group(1):
                    lang, start, body = m.group(1), number + 1, []
                elif m:
                    lang, start, body = "", number + 1, []
            elif m and not m.group(1):
                yield lang, start, "".join(body)
                lang = None
            else:
                body.append(line)
    if lang is not None:
        raise SystemExit(f"{guide}:{start}: unterminated code block")


def free_port():
    """A port free for both TCP and UDP on every address."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("0.0.0.0", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port found")


def walkthrough(guide):
    is_root = os.geteuid() == 0
    needed = ["ss", "taskset", "awk"] + (["perf", "strace", "ip"] if is_root else [])
    missing = [c for c in needed if shutil.which(c) is None]
    if missing:
        print(f"SKIP: the guide's commands need {', '.join(missing)} (tools/install-deps installs "
              f"them)")
        return SKIP
    if not {0, 1} <= os.sched_getaffinity(0):
        print("SKIP: the guide pins the server to CPU 0 and the load to CPU 1; this process may "
              f"not use both (allowed: {sorted(os.sched_getaffinity(0))})")
        return SKIP
    script = ["set -euo pipefail",
              'trap \'cat "$__out" 2>/dev/null; echo "lab walkthrough: FAILED: block $__block '
              '($__where): $BASH_COMMAND"\' ERR']
    ran = skipped = 0
    name = os.path.relpath(guide, ROOT)
    for lang, line, text in blocks(guide):
        if lang != "bash":
            continue
        label = f"{name}:{line}"
        if text.startswith(ROOT_MARK) and not is_root:
            print(f"SKIP block at {label}: needs root (network namespaces, perf or strace on "
                  f"the server); run the test as root to cover it")
            skipped += 1
            continue
        ran += 1
        # The block runs in this shell (a { } group, not a subshell: its variables persist), its
        # output into a file that is then shown and later compared with the guide's text block.
        out_file = f'"$LAB_OUT/.block-{line}.out"'
        script += [f"__block={ran}; __where={label}; __out={out_file}",
                   f"echo; echo '--- block {ran} ({label})'",
                   "{", text.rstrip("\n"), f"}} >{out_file} 2>&1", f"cat {out_file}"]
    script.append(f"echo; echo 'lab walkthrough: {ran} blocks ran, {skipped} skipped'")

    with tempfile.TemporaryDirectory(prefix="lab-walkthrough-") as out:
        env = dict(os.environ)
        env.update(PORT=os.environ.get("LAB_PORT") or str(free_port()), LAB_DURATION=env.get("LAB_DURATION", "1s"),
                   LAB_OUT=out)
        env.setdefault("UPCASE_BIN", os.path.join(ROOT, "build", "release", "bin"))
        print(f"lab walkthrough: PORT={env['PORT']} LAB_DURATION={env['LAB_DURATION']} "
              f"UPCASE_BIN={env['UPCASE_BIN']}", flush=True)
        started = time.monotonic()
        # Its own session, so that a timeout can stop everything the guide started, and only that.
        proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            status = proc.wait(timeout=WALKTHROUGH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"lab walkthrough: FAILED: still running after {WALKTHROUGH_TIMEOUT_S} s")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            status = 1
        finally:
            # A server the guide left running (a failed block skipped its stop) is stopped here.
            subprocess.run([os.path.join(ROOT, "tools", "lab-server"), "stop"], env=env,
                           stdout=subprocess.DEVNULL)
        if status == 0:
            fresh = {}
            for lang, line, _ in blocks(guide):
                path = os.path.join(out, f".block-{line}.out")
                if lang == "bash" and os.path.isfile(path):
                    with open(path, errors="replace") as f:
                        fresh[line] = f.read()
            status = check_figures(guide, fresh, numbers=not sanitized(env["UPCASE_BIN"]))
        print(f"lab walkthrough: {time.monotonic() - started:.0f} s, "
              f"{'PASS' if status == 0 else 'FAIL'}")
        return 0 if status == 0 else 1


FIGURE_MIN = 0.5         # per-request figures below this are not compared (batching)
FIGURE_TOLERANCE = 0.35  # relative: |guide - fresh| <= 35 % of the larger
BATCHING = {"epoll_wait", "epoll_pwait", "io_uring_enter", "accept4", "futex", "recvmmsg",
            "sendmmsg"}
BATCHING_FACTOR = 6.0
COUNTERS = re.compile(r"^shard \d+: ((?:\w+=\S+ ?)+)$")
READY = re.compile(r"^ready ((?:\w+=\S+ ?)+)$")
LOAD_ROW = re.compile(r"^(window|requests|rate|errors|mismatches|unanswered|unfinished|unsent|"
                      r"client cpu|latency \(us\)|udp)\s")
COST_ROW = re.compile(r"^([a-z]+)\s+(\d+)\s+(tcp|udp)\s+(\d+)\s+\d+\s+\d+\s+"
                      r"([\d.]+|-)\s+([\d.]+|-)\s+")
PER_REQUEST = re.compile(r"^\s*per request:(.*)$")
CALL = re.compile(r"([a-z_0-9]+) ([\d.]+)")


def text_after_bash(guide):
    """{line of a bash block: the text of the first ```text block after it, before the next bash}"""
    result, last_bash = {}, None
    for lang, line, text in blocks(guide):
        if lang == "bash":
            last_bash = line
        elif lang == "text" and last_bash is not None:
            result[last_bash] = text
            last_bash = None
    return result


def close(a, b):
    return abs(a - b) <= FIGURE_TOLERANCE * max(a, b)


def sanitized(bin_dir):
    """Whether the binaries are a sanitizer build (asan, tsan): the guide's figures are a Release
    build's, and a sanitizer's runtime makes calls of its own (mmap, madvise per thread)."""
    r = subprocess.run(["ldd", os.path.join(bin_dir, "upcase-server")], capture_output=True,
                       text=True, check=False)
    return any(lib in r.stdout for lib in ("libasan", "libtsan"))


def compare_block(where, shown, fresh, numbers=True):
    """Problems found comparing a guide's example output with a fresh run's output."""
    problems = []
    shown_lines, fresh_lines = shown.splitlines(), fresh.splitlines()

    def fields(pattern, lines):
        return [[kv.split("=")[0] for kv in m.group(1).split()]
                for m in map(pattern.match, lines) if m]

    fresh_counters = fields(COUNTERS, fresh_lines)
    for names in fields(COUNTERS, shown_lines):
        if fresh_counters and names != fresh_counters[0]:
            problems.append(f"{where}: counter line names {' '.join(names)}; the server prints "
                            f"{' '.join(fresh_counters[0])}")
    fresh_ready = fields(READY, fresh_lines)
    for names in fields(READY, shown_lines):
        if fresh_ready and names != fresh_ready[0]:
            problems.append(f"{where}: ready line fields {names}; fresh: {fresh_ready[0]}")
    fresh_rows = {m.group(1) for m in map(LOAD_ROW.match, fresh_lines) if m}
    if fresh_rows:
        for m in filter(None, map(LOAD_ROW.match, shown_lines)):
            if m.group(1) not in fresh_rows:
                problems.append(f"{where}: upcase-load row '{m.group(1)}' is not in its output "
                                f"(it printed: {', '.join(sorted(fresh_rows))})")
    if not numbers:
        return problems

    shown_cost = [m for m in map(COST_ROW.match, shown_lines) if m]
    fresh_cost = [m for m in map(COST_ROW.match, fresh_lines) if m]
    shown_pr = [dict(CALL.findall(m.group(1))) for m in map(PER_REQUEST.match, shown_lines) if m]
    fresh_pr = [dict(CALL.findall(m.group(1))) for m in map(PER_REQUEST.match, fresh_lines) if m]
    if len(shown_cost) != len(fresh_cost):
        problems.append(f"{where}: {len(shown_cost)} tools/lab-cost rows shown, "
                        f"{len(fresh_cost)} in the fresh run")
    for n, (s, f) in enumerate(zip(shown_cost, fresh_cost)):
        # A total that includes calls that wait or batch moves with them (each call by name is
        # still compared below, the others within FIGURE_TOLERANCE).
        calls = set().union(*(pr[n] for pr in (shown_pr, fresh_pr) if n < len(pr)))
        batching_total = bool(calls & BATCHING)
        if s.group(1, 2, 3, 4) != f.group(1, 2, 3, 4):
            problems.append(f"{where}: lab-cost row {' '.join(s.group(1, 2, 3, 4))}; fresh: "
                            f"{' '.join(f.group(1, 2, 3, 4))}")
        for i, what in ((5, "syscalls/req"), (6, "ctxsw/req")):
            if "-" in (s.group(i), f.group(i)):
                continue
            a, b = float(s.group(i)), float(f.group(i))
            if max(a, b) < FIGURE_MIN:
                continue
            # A context switch is a wait: like the calls that wait, it depends on the load.
            if what == "ctxsw/req" or batching_total:
                if min(a, b) * BATCHING_FACTOR < max(a, b):
                    problems.append(f"{where}: {s.group(1)} c={s.group(4)} {what} {a:g} in the "
                                    f"guide, {b:g} in a fresh run (tolerance a factor of "
                                    f"{BATCHING_FACTOR:g})")
            elif not close(a, b):
                problems.append(f"{where}: {s.group(1)} c={s.group(4)} {what} {a:g} in the "
                                f"guide, {b:g} in a fresh run (tolerance "
                                f"{FIGURE_TOLERANCE:.0%})")

    if len(shown_pr) != len(fresh_pr):
        problems.append(f"{where}: {len(shown_pr)} 'per request:' lines shown, {len(fresh_pr)} "
                        f"in the fresh run")
    for n, (s, f) in enumerate(zip(shown_pr, fresh_pr), 1):
        for call in sorted(set(s) | set(f)):
            a, b = float(s.get(call, 0)), float(f.get(call, 0))
            if max(a, b) < FIGURE_MIN:
                continue
            if call in BATCHING:
                if min(a, b) * BATCHING_FACTOR < max(a, b):
                    problems.append(f"{where}: per request line {n}: {call} {a:g} in the guide, "
                                    f"{b:g} in a fresh run (a call that batches: tolerance a "
                                    f"factor of {BATCHING_FACTOR:g})")
            elif not close(a, b):
                problems.append(f"{where}: per request line {n}: {call} {a:g} in the guide, "
                                f"{b:g} in a fresh run (tolerance {FIGURE_TOLERANCE:.0%})")
    return problems


def check_figures(guide, fresh, numbers=True):
    """Compares every example output that follows a bash block with that block's fresh output
    (with `numbers` false, only its shape: counter and ready-line fields)."""
    name = os.path.relpath(guide, ROOT)
    shown = text_after_bash(guide)
    problems, compared = [], 0
    for line, output in fresh.items():
        if line in shown:
            compared += 1
            problems += compare_block(f"{name}:{line}", shown[line], output, numbers)
    for p in problems:
        print(p)
    if not numbers:
        print("lab figures: a sanitizer build: shapes compared, not the figures (the guide's "
              "are a Release build's)")
    print(f"lab figures: {compared} example outputs compared with this run, {len(problems)} "
          f"differ: {'FAIL' if problems else 'PASS'}")
    return 1 if problems else 0


def defines(text, symbol):
    """Whether `text` (a source file) defines every component of Class::member."""
    *scopes, name = symbol.split("::")
    for scope in scopes:
        if not re.search(rf"\b(class|struct|namespace)\s+{re.escape(scope)}\b", text):
            return False
    n = re.escape(name)
    return bool(re.search(rf"\b{n}\s*(\(|=|\{{)", text) or
                re.search(rf"\b(class|struct|enum(\s+class)?|def)\s+{n}\b", text))


def references(guide):
    name = os.path.relpath(guide, ROOT)
    errors, seen = [], 0
    current = None  # the file of the last reference, which a ```cpp quote is checked against
    sources = {}

    def source(path):
        if path not in sources:
            with open(os.path.join(ROOT, path)) as f:
                sources[path] = f.read()
        return sources[path]

    def check_prose(first_line, lines):
        """References in prose may wrap across lines: scan the text joined."""
        nonlocal current, seen
        for path, symbol in REFERENCE.findall(" ".join(l.strip() for l in lines)):
            seen += 1
            where = f"{name}:{first_line}"
            if not os.path.isfile(os.path.join(ROOT, path)):
                errors.append(f"{where}: no file {path}")
                continue
            current = path
            if not defines(source(path), symbol):
                errors.append(f"{where}: {path} does not define {symbol}")

    fence, prose, prose_start = None, [], 1
    with open(guide) as f:
        for number, line in enumerate(f, 1):
            m = FENCE.match(line.rstrip("\n"))
            if fence is None and m:
                check_prose(prose_start, prose)
                fence, prose = m.group(1) or "plain", []
                continue
            if fence is not None and m and not m.group(1):
                fence, prose_start = None, number + 1
                continue
            if fence is None:
                prose.append(line)
                continue
            if fence != "cpp":
                continue
            quoted = line.strip()
            if not quoted or quoted in ("...", "// ..."):
                continue
            if current is None:
                errors.append(f"{name}:{number}: a ```cpp quote before any reference")
                continue
            flat = re.sub(r"\s+", " ", quoted)
            if not any(flat in re.sub(r"\s+", " ", l) for l in source(current).splitlines()):
                errors.append(f"{name}:{number}: quote not found in {current}: {quoted}")
    check_prose(prose_start, prose)
    if seen == 0:
        errors.append(f"{name}: no `path` → `symbol` reference found")
    for e in errors:
        print(e)
    print(f"lab references: {seen} checked, {len(errors)} broken: "
          f"{'FAIL' if errors else 'PASS'}")
    return 1 if errors else 0


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("walkthrough", "references"):
        print(__doc__)
        return 2
    guide = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_GUIDE
    return walkthrough(guide) if sys.argv[1] == "walkthrough" else references(guide)


if __name__ == "__main__":
    sys.exit(main())
