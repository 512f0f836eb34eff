#!/usr/bin/env python3
"""Keeps the documentation and the code from drifting apart.

    docs_test.py links      every relative link (and its #anchor) and every repository path named
                            in README.md, docs/*.md and the results READMEs exists
    docs_test.py flags      every --flag named for upcase-server, upcase-load, upcase-client,
                            tools/compare and tools/regress is in that program's --help, and every
                            flag in its --help is in its manual
    docs_test.py keys       every JSON key and counter the manuals list is in real output (a short
                            server + load run on an ephemeral loopback port), and vice versa
    docs_test.py examples   every example-output block has the shape of a fresh run (ready and
                            counter lines, upcase-load's report rows, the client's prompts,
                            tools/compare's progress lines, the sample regress report is the
                            committed one), and the README's syscalls/request figures are within
                            FIGURE_RANGE of a fresh perf measurement (skipped without perf)
    docs_test.py paths      no committed file names a machine-local path (a home or work folder of
                            a development machine; in results/, any /tmp path)

Binaries come from $UPCASE_BIN (CTest sets it; default build/release/bin). Exit status: 0 pass,
1 fail (each problem on one line, file:line first), 77 skipped (a binary is missing).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("UPCASE_BIN", ROOT / "build" / "release" / "bin"))
SKIP = 77
RUN_TIMEOUT_S = 30

# The programs whose flags are checked, and their manuals.
PROGRAMS = {
    "upcase-server": "docs/upcase-server.md",
    "upcase-load": "docs/upcase-load.md",
    "upcase-client": "docs/upcase-client.md",
    "tools/compare": "docs/compare.md",
    "tools/regress": "docs/regress.md",
}
# The README's syscalls/request column against a fresh measurement: the fresh value must lie
# within [documented / FIGURE_RANGE[b], documented * FIGURE_RANGE[b]]. The blocking backends make
# an exact 2 calls per request and epoll about 2 at 64 connections (its epoll_wait share, up to 1 a
# request, moves with batching: 2.04 to 2.13 seen; 1.4 allows 2.86 and still fails one more call
# per request, 3.04); uring's count is all batching: 0.15 to 0.5 between runs on a quiet machine,
# 0.04 on one running four builds (more completions per io_uring_enter). A factor of 6 still fails
# one more system call per request (0.17 -> 1.17 > 0.17 x 6).
# select and poll wait like epoll (1.4); sigio's rt_sigtimedwait and sweep calls move with
# batching too (2.7 to 3.0 seen at 64 connections): 1.4; fork blocks like threads (exact 2).
FIGURE_RANGE = {"iterative": 1.15, "threads": 1.15, "fork": 1.15, "select": 1.4, "poll": 1.4,
                "sigio": 1.4, "epoll": 1.4, "uring": 6.0}
MIN_REQUESTS = 500  # fewer between the two loads, and a fresh figure says nothing


# ---------------------------------------------------------------------------------------------
# Reading the documents


def documents() -> list[pathlib.Path]:
    docs = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    docs += sorted((ROOT / "results").glob("**/README.md"))
    return [d for d in docs if d.is_file()]


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def split_blocks(text: str):
    """Yields ("prose", first line, lines) and ("code", first line, lines, language)."""
    lines = text.split("\n")
    i, prose, prose_start = 0, [], 1
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            if prose:
                yield ("prose", prose_start, prose, "")
            lang, body, start = m.group(2), [], i + 2
            i += 1
            while i < len(lines) and not FENCE.match(lines[i]):
                body.append(lines[i])
                i += 1
            yield ("code", start, body, lang)
            prose, prose_start = [], i + 2
        else:
            prose.append(lines[i])
        i += 1
    if prose:
        yield ("prose", prose_start, prose, "")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    h = heading.strip().lower().replace("`", "")
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for kind, _, lines, _ in split_blocks(path.read_text()):
        if kind != "prose":
            continue
        for line in lines:
            m = re.match(r"^#{1,6} (.*)$", line)
            if m:
                s = slug(m.group(1))
                n = seen.get(s, 0)
                seen[s] = n + 1
                result.add(s if n == 0 else f"{s}-{n}")
    return result


# ---------------------------------------------------------------------------------------------
# links

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
TOP_LEVEL = {"server", "loadgen", "common", "bench", "tests", "tools", "docs", "results"}
GENERATED = ("results/latest", "build/")


def expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]+)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",")
            for p in expand_braces(path[:m.start()] + alt + path[m.end():])]


def check_links() -> list[str]:
    problems = []
    anchor_cache: dict[pathlib.Path, set[str]] = {}

    def has_anchor(path, anchor):
        if path not in anchor_cache:
            anchor_cache[path] = anchors(path)
        return anchor in anchor_cache[path]

    for doc in documents():
        for kind, start, lines, _ in split_blocks(doc.read_text()):
            if kind != "prose":
                continue
            for n, line in enumerate(lines, start):
                where = f"{rel(doc)}:{n}"
                for target in LINK.findall(line):
                    if re.match(r"^[a-z]+:", target):
                        continue  # http:, https:, mailto:
                    file_part, _, anchor = target.partition("#")
                    path = (doc.parent / file_part).resolve() if file_part else doc
                    if not path.exists():
                        problems.append(f"{where}: link to {target}: no such file")
                    elif anchor and path.suffix == ".md" and not has_anchor(path, anchor):
                        problems.append(f"{where}: link to {target}: no heading with that anchor")
                for span in CODE_SPAN.findall(line):
                    problems += check_named_path(where, span)
    return problems


def check_named_path(where: str, span: str) -> list[str]:
    """A `code span` that names a file or folder of this repository must exist."""
    token = span.split()[0] if span.split() else ""
    if not re.fullmatch(r"[\w.{},-]+(/[\w.{},-]+)*/?", token) or "/" not in token:
        return []
    if token.split("/")[0] not in TOP_LEVEL or token.startswith(GENERATED):
        return []
    if "*" in token or "NAME" in token or "PID" in token:
        return []
    if not span.startswith(token):
        return []
    if token.startswith("results/latest") or re.search(r"\.\.\.", token):
        return []
    missing = [p for p in expand_braces(token) if not (ROOT / p).exists()]
    return [f"{where}: names {p}, which does not exist" for p in missing]


# ---------------------------------------------------------------------------------------------
# flags

def program_path(program: str) -> pathlib.Path:
    return ROOT / program if program.startswith("tools/") else BIN / program


def help_text(program: str) -> str:
    r = subprocess.run([str(program_path(program)), "--help"], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S)
    if r.returncode != 0:
        raise SystemExit(f"{program} --help: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def help_flags(text: str) -> set[str]:
    """The flags a --help defines: those that begin an option line (`  --name`, `  -h, --help`)."""
    flags = set()
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", line)
        if m:
            flags.add(m.group(1))
    flags.discard("--help")
    return flags


def accepts(flag: str, defined: set[str]) -> bool:
    """--no-NAME negates a switch NAME."""
    return flag in defined or flag == "--help" or (
        flag.startswith("--no-") and "--" + flag[5:] in defined)


PROGRAM_TOKEN = re.compile(r"(?:^|[\s/$({}])(upcase-server|upcase-load|upcase-client|"
                           r"tools/compare|tools/regress)(?=\s|$)")
FLAG_TOKEN = re.compile(r"(?<![\w=-])(--[a-z][a-z0-9-]*)")


def command_flags(line: str):
    """(program, [flags]) for every command of the five programs on a line: the flags up to the
    end of that command (a pipe, ;, &&, a redirection, a comment, or the next program)."""
    for m in PROGRAM_TOKEN.finditer(line):
        # A program named after a slash is a path only when the path ends in bin/ or is tools/.
        before = line[:m.start(1)]
        if before.endswith("/") and not re.search(r"(bin/|\$\w+/|\$\{?\w+\}?/)$", before) and \
                not m.group(1).startswith("tools/"):
            continue
        rest = line[m.end(1):]
        end = re.search(r"\||;|&&|#| >|\)|`|(?:upcase-server|upcase-load|upcase-client|"
                        r"tools/compare|tools/regress)(?=\s|$)", rest)
        if end:
            rest = rest[:end.start()]
        yield m.group(1), FLAG_TOKEN.findall(rest)


def check_flags() -> list[str]:
    problems = []
    defined = {p: help_flags(help_text(p)) for p in PROGRAMS}
    # 1. Every command line of the five, in any document, uses only that program's flags.
    for doc in documents():
        for kind, start, lines, lang in split_blocks(doc.read_text()):
            joined = []
            for n, line in enumerate(lines, start):
                if kind == "code":
                    if line.rstrip().endswith("\\"):
                        joined.append(line.rstrip()[:-1])
                        continue
                    line, joined = " ".join(joined + [line]), []
                    texts = [line]
                else:
                    texts = CODE_SPAN.findall(line)
                for text in texts:
                    for program, flags in command_flags(text.lstrip("$ ")):
                        for flag in flags:
                            if not accepts(flag, defined[program]):
                                problems.append(f"{rel(doc)}:{n}: {program} {flag}: not in "
                                                f"`{program} --help`")
    # 2. Every flag of a manual's flag table is its program's; every --help flag is documented.
    for program, manual in PROGRAMS.items():
        path = ROOT / manual
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            m = re.match(r"^\|\s*`(--[a-z][a-z0-9-]*)", line)
            if m and not accepts(m.group(1), defined[program]):
                problems.append(f"{manual}:{n}: flag table names {m.group(1)}, which "
                                f"`{program} --help` does not list")
        named = set(FLAG_TOKEN.findall(text))
        for flag in sorted(defined[program] - named):
            problems.append(f"{manual}: `{program} --help` lists {flag}; the manual does not "
                            f"mention it")
    return problems


# ---------------------------------------------------------------------------------------------
# Fresh output: one server and short loads on an ephemeral loopback port


class Fresh:
    """What the programs print now: the ready line, counter lines, --stats-json, upcase-load's
    report and JSON (closed and open loop), the client's transcript."""

    def __init__(self, tmp: pathlib.Path, server_args=("--backend=epoll", "--shards=1")):
        self.tmp = tmp
        stats = tmp / "stats.json"
        server = subprocess.Popen(
            [str(BIN / "upcase-server"), *server_args, "--bind=127.0.0.1",
             f"--stats-json={stats}", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.ready = server.stdout.readline().strip()
            m = re.search(r"tcp=127\.0\.0\.1:(\d+)", self.ready)
            if not m:
                raise SystemExit(f"upcase-server printed no ready line: {self.ready!r}")
            port = m.group(1)
            self.load_text, self.load_json = {}, {}
            for loop, extra in (("closed", []), ("open", ["--rate=2000"])):
                out = tmp / f"load-{loop}.json"
                r = subprocess.run(
                    [str(BIN / "upcase-load"), "--connections=4", "--duration=0.3s",
                     "--warmup=0.1s", "--quiet", f"--json={out}", *extra, "127.0.0.1", port],
                    capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
                if r.returncode != 0:
                    raise SystemExit(f"upcase-load ({loop} loop) failed: {r.stderr.strip()}")
                self.load_text[loop] = r.stdout
                self.load_json[loop] = json.loads(out.read_text())
            out = tmp / "load-udp.json"
            r = subprocess.run(
                [str(BIN / "upcase-load"), "--proto=udp", "--connections=2", "--duration=0.2s",
                 "--warmup=0s", "--quiet", f"--json={out}", "127.0.0.1", port],
                capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
            if r.returncode != 0:
                raise SystemExit(f"upcase-load (udp) failed: {r.stderr.strip()}")
            self.load_text["udp"] = r.stdout
            r = subprocess.run([str(BIN / "upcase-client"), "tcp", "127.0.0.1", port],
                               input="eecs563\n", capture_output=True, text=True,
                               timeout=RUN_TIMEOUT_S)
            self.client_text = r.stdout
        finally:
            server.terminate()
            try:
                _, err = server.communicate(timeout=RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                _, err = server.communicate()
        self.counter_lines = [l for l in err.splitlines() if l.startswith("shard ")]
        if not self.counter_lines:
            raise SystemExit(f"upcase-server printed no counter line at exit: {err!r}")
        self.stats = json.loads(stats.read_text())


def counter_names(line: str) -> list[str]:
    return [kv.split("=")[0] for kv in line.split(":", 1)[1].split()]


# ---------------------------------------------------------------------------------------------
# keys

IDENT_LIST = re.compile(r"^[a-z_][a-z0-9_]*( [a-z_][a-z0-9_]*)+$")


def table_rows(text: str, header: str):
    """The rows (cells) of the first table after the line `header`."""
    lines = text.splitlines()
    start = lines.index(header)
    rows, seen_table = [], False
    for n, line in enumerate(lines[start + 1:], start + 2):
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if not re.match(r"^-+:?$", cells[0].replace(" ", "")) and n > 0:
                rows.append((n, cells))
        elif seen_table:
            break
    return rows[1:]  # without the header row


def check_key_table(manual: str, header: str, actual: dict) -> list[str]:
    """A table whose first column lists keys and whose second lists, for an object, its keys as
    a `space separated list`: both directions against `actual`."""
    problems = []
    text = (ROOT / manual).read_text()
    documented = set()
    for n, cells in table_rows(text, header):
        keys = CODE_SPAN.findall(cells[0])
        documented.update(keys)
        words = {w for span in CODE_SPAN.findall(" ".join(cells[1:])) if IDENT_LIST.match(span)
                 for w in span.split()}
        children = set()
        # "`mitigations` is a map": its keys are data (one per file), not documented names.
        maps = set(re.findall(r"`([a-z_]+)` is a map", " ".join(cells[1:])))
        for key in keys:
            if key not in actual:
                problems.append(f"{manual}:{n}: key `{key}` is not in the real output")
            elif isinstance(actual[key], dict):
                children |= set(actual[key])
                for k, v in actual[key].items():
                    if isinstance(v, dict) and k not in maps:
                        children |= set(v)
        if children:
            for w in sorted(words - children):
                problems.append(f"{manual}:{n}: `{w}` is not a key of {', '.join(keys)} in the "
                                f"real output")
            for c in sorted(children - words):
                problems.append(f"{manual}:{n}: the real output's {', '.join(keys)} has `{c}`, "
                                f"which the row does not list")
    for key in sorted(set(actual) - documented):
        problems.append(f"{manual}: the real output has the key `{key}`, which the table does "
                        f"not list")
    return problems


def fake_regress_json() -> dict:
    """regress.json of `tools/regress` judging synthetic samples (no build, no measuring)."""
    with tempfile.TemporaryDirectory(prefix="docs-regress-") as tmp:
        samples = pathlib.Path(tmp) / "samples.json"
        samples.write_text(json.dumps({"metrics": [{
            "name": "cpu_us_per_req/epoll/tcp-64B-c64", "family": "cpu_us_per_req",
            "base": [5.0 + 0.01 * i for i in range(12)],
            "candidate": [5.0 + 0.01 * (i % 5) for i in range(12)]}]}))
        subprocess.run([str(ROOT / "tools" / "regress"), "--base=HEAD", "--out", tmp],
                       env=dict(os.environ, UPCASE_REGRESS_FAKE_SAMPLES=str(samples)),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S, cwd=ROOT)
        try:
            return json.loads((pathlib.Path(tmp) / "regress.json").read_text())
        except (OSError, ValueError):
            return {}


def check_keys() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="docs-keys-") as tmp:
        fresh = Fresh(pathlib.Path(tmp))
    problems = []
    # upcase-load's JSON: the keys of both loops (open loop fills some that closed leaves null).
    load = dict(fresh.load_json["closed"])
    load.update({k: v for k, v in fresh.load_json["open"].items() if v is not None})
    problems += check_key_table("docs/upcase-load.md", "## The JSON result", load)
    # upcase-server's counters: the table, --stats-json and the exit line.
    manual = "docs/upcase-server.md"
    text = (ROOT / manual).read_text()
    documented = [CODE_SPAN.findall(cells[0]) for _, cells in table_rows(text, "## Counters")]
    documented = [k for keys in documented for k in keys]
    json_keys = list(fresh.stats["total"])
    line_keys = counter_names(fresh.counter_lines[0])
    for k in documented:
        if k not in json_keys:
            problems.append(f"{manual}: counter `{k}` is not in --stats-json")
    for k in json_keys:
        if k not in documented:
            problems.append(f"{manual}: --stats-json has `{k}`, which the counter table lacks")
    if sorted(line_keys) != sorted(json_keys):
        problems.append(f"{manual}: says the exit line uses the --stats-json names; it prints "
                        f"{' '.join(line_keys)}, the JSON has {' '.join(json_keys)}")
    elif line_keys != documented:
        problems.append(f"{manual}: the counter table's order is {' '.join(documented)}; the "
                        f"exit line prints {' '.join(line_keys)}")
    for key in ("backend", "shards", "total"):
        if key not in fresh.stats:
            problems.append(f"{manual}: --stats-json has no `{key}`")
    # regress.json: the schema table against the committed sample run.
    sample = ROOT / "results" / "regress-ab" / "issue-16-round-2" / "regress.json"
    regress = json.loads(sample.read_text())
    # Keys newer than the sample (e.g. `env`) from a run of tools/regress on synthetic samples.
    for k, v in fake_regress_json().items():
        regress.setdefault(k, v)
    # --curve's keys (settings.curve, the curve families' tolerances, commands.curve) from the
    # committed curve run.
    curve_run = json.loads((ROOT / "results" / "regress-ab" / "issue-24-curve" /
                            "regress.json").read_text())
    def merge(into: dict, more: dict) -> None:
        for key, v in more.items():
            if isinstance(into.get(key), dict) and isinstance(v, dict):
                merge(into[key], v)
            else:
                into.setdefault(key, v)
    for k in ("settings", "tolerances", "commands"):
        merge(regress[k], curve_run[k])
    problems += check_key_table("docs/regress.md", "### regress.json", regress)
    metric_row = [cells for _, cells in table_rows((ROOT / "docs/regress.md").read_text(),
                                                   "### regress.json")
                  if CODE_SPAN.findall(cells[0]) == ["metrics"]]
    if metric_row:
        named = {s for s in CODE_SPAN.findall(metric_row[0][1]) if re.fullmatch(r"[a-z_]+", s)}
        for k in sorted(set(regress["metrics"][0]) - named):
            problems.append(f"docs/regress.md: a metric of regress.json has `{k}`, which the "
                            f"metrics row does not name")
    return problems


# ---------------------------------------------------------------------------------------------
# examples

READY = re.compile(r"^ready backend=(\w+) shards=(\d+)( tcp=\S+)?( udp=\S+)?( pid=\d+)?$")
COUNTERS = re.compile(r"^shard \d+: (\w+=\d+ ?)+$")
LOAD_LABEL = re.compile(r"^(upcase-load|window|requests|rate|latency \(us\)|  corrected|"
                        r"  uncorrected|  send lag|errors|mismatches|unanswered|unfinished|udp|"
                        r"client cpu|THE |UPCASE-LOAD )")
CLIENT = re.compile(r"^(Local address:|Foreign address:|Please enter the statement:|"
                    r"Return text from the server:)")
PROGRESS = re.compile(r"^\[\d+/\d+\] (\w+) (tcp|udp) \d+(?:B|KiB|MiB) c=\d+ "
                      r"(?:closed|open \d+%|open [\d.]+[kM]?/s \+\d+ idle)[^:]*: "
                      r"\S+ req/s, p99 \S+ µs, server \S+ µs CPU/req")
REGRESS_REPORT = "## tools/regress: candidate vs base"


def load_labels(text: str) -> set[str]:
    return {m.group(1) for m in map(LOAD_LABEL.match, text.splitlines()) if m}


def check_examples() -> list[str]:
    problems = []
    with tempfile.TemporaryDirectory(prefix="docs-examples-") as tmp:
        fresh = Fresh(pathlib.Path(tmp))
        default = Fresh(pathlib.Path(tmp), server_args=())
    fresh_names = counter_names(fresh.counter_lines[0])
    fresh_labels = set().union(*(load_labels(t) for t in fresh.load_text.values()))
    fresh_labels |= {"THE ", "UPCASE-LOAD "}  # warnings, printed only when they apply
    header = next(l for l in fresh.load_text["closed"].splitlines() if l.startswith("latency"))
    client_prefixes = set(re.findall(CLIENT.pattern.lstrip("^"), fresh.client_text))
    default_backend = READY.match(default.ready).group(1)
    backends = {m.group(1) for m in re.finditer(r"^  (\w+)\s", help_text("upcase-server"), re.M)}
    sample_report = (ROOT / "results/regress-ab/issue-16-round-2/report.md").read_text()

    checked = 0
    for doc in documents():
        if doc.name == "lab.md":
            continue  # its outputs are compared with a fresh run by lab_walkthrough
        previous_command = ""
        for kind, start, lines, lang in split_blocks(doc.read_text()):
            if kind != "code" or lang in ("sh", "bash", "yaml", "cpp", "json"):
                continue
            known = 0
            for n, line in enumerate(lines, start):
                where = f"{rel(doc)}:{n}"
                if line.startswith("$ "):
                    previous_command = line
                    continue
                m = READY.match(line)
                if m:
                    known += 1
                    if "--backend" not in previous_command and "upcase-server" in previous_command \
                            and m.group(1) != default_backend:
                        problems.append(f"{where}: `{previous_command}` prints backend="
                                        f"{m.group(1)}; the default here is {default_backend}")
                    continue
                if line.startswith("ready"):
                    problems.append(f"{where}: not a ready line the server prints: {line}")
                    known += 1
                    continue
                if line.startswith("shard "):
                    known += 1
                    if not COUNTERS.match(line) or counter_names(line) != fresh_names:
                        problems.append(f"{where}: counter line differs from the server's: "
                                        f"it prints {' '.join(fresh_names)}")
                    continue
                m = LOAD_LABEL.match(line)
                if m:
                    known += 1
                    if m.group(1) not in fresh_labels:
                        problems.append(f"{where}: upcase-load prints no '{m.group(1)}' row")
                    if m.group(1) == "latency (us)" and line.split() != header.split():
                        problems.append(f"{where}: latency header differs from upcase-load's: "
                                        f"{header.strip()}")
                    continue
                m = CLIENT.match(line)
                if m:
                    known += 1
                    if m.group(1) not in client_prefixes:
                        problems.append(f"{where}: upcase-client prints no '{m.group(1)}'")
                    continue
                if line.startswith("["):
                    known += 1
                    m = PROGRESS.match(line)
                    if not m:
                        problems.append(f"{where}: not a tools/compare progress line: {line}")
                    elif m.group(1) not in backends:
                        problems.append(f"{where}: no backend '{m.group(1)}'")
                    continue
                if lines and lines[0] == REGRESS_REPORT:
                    known += 1
                    if line.strip() and line.strip() != "..." and line not in sample_report:
                        problems.append(f"{where}: not in the committed sample report "
                                        f"results/regress-ab/issue-16-round-2/report.md: {line}")
            if lang == "text" and known == 0:
                problems.append(f"{rel(doc)}:{start}: an example output no check knows (ready, "
                                f"counter, upcase-load, upcase-client, tools/compare or "
                                f"tools/regress lines)")
            checked += known > 0
    print(f"docs examples: {checked} example blocks checked")
    problems += check_headline_figures()
    return problems


def perf_usable() -> bool:
    if shutil.which("perf") is None:
        return False
    r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return r.returncode == 0


def measure_syscalls(backend: str) -> float:
    """Server syscalls per request at the README headline's point: TCP 64 B, 64 connections
    (iterative: 1), closed loop, server on CPU 0 and load on CPU 1 when both exist. Two loads of
    0.1 s and 1.2 s against one server: the difference of their counts over the difference of
    their requests, so what a load costs once (connects, threads, closes) cancels out, however
    few requests a busy machine manages. NaN when the two differ by too few requests to tell."""
    pin = {0, 1} <= os.sched_getaffinity(0) and shutil.which("taskset") is not None

    def taskset(cpu):
        return ["taskset", "-c", cpu] if pin else []

    with tempfile.TemporaryDirectory(prefix="docs-figures-") as tmp:
        out = pathlib.Path(tmp) / "load.json"
        server = subprocess.Popen(
            [*taskset("0"), str(BIN / "upcase-server"), f"--backend={backend}", "--shards=1",
             "--proto=tcp", "--bind=127.0.0.1", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            port = re.search(r"tcp=127\.0\.0\.1:(\d+)", server.stdout.readline()).group(1)
            conns = "1" if backend == "iterative" else "64"
            counts = []
            for duration in ("0.1s", "1.2s"):
                r = subprocess.run(
                    ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(server.pid),
                     "--", *taskset("1"), str(BIN / "upcase-load"), f"--connections={conns}",
                     f"--duration={duration}", "--warmup=0s", "--quiet", f"--json={out}",
                     "127.0.0.1", port],
                    capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
                syscalls = next(int(l.split(",")[0]) for l in r.stderr.splitlines()
                                if "raw_syscalls:sys_enter" in l)
                counts.append((syscalls, json.loads(out.read_text())["requests"]))
            (s1, r1), (s2, r2) = counts
            return (s2 - s1) / (r2 - r1) if r2 - r1 >= MIN_REQUESTS else float("nan")
        finally:
            server.terminate()
            server.wait(timeout=RUN_TIMEOUT_S)


def check_headline_figures() -> list[str]:
    readme = (ROOT / "README.md").read_text().splitlines()
    header = next((i for i, l in enumerate(readme) if l.startswith("| backend |") and
                   "syscalls/req" in l), None)
    if header is None:
        return ["README.md: no headline table with a syscalls/req column"]
    column = [c.strip() for c in readme[header].strip("|").split("|")].index("syscalls/req")
    if not perf_usable():
        print("docs examples: SKIP the headline's syscalls/req figures: perf cannot count "
              "syscalls here (root, or kernel.perf_event_paranoid <= 1, and linux-perf)")
        return []
    problems = []
    for n, line in enumerate(readme[header + 2:], header + 3):
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        backend, shown = cells[0], float(cells[column])
        fresh = measure_syscalls(backend)
        r = FIGURE_RANGE[backend]
        if fresh != fresh:  # NaN
            print(f"docs examples: {backend} syscalls/req: too few requests to measure (the "
                  f"machine is too busy); not compared")
            continue
        ok = shown / r <= fresh <= shown * r
        print(f"docs examples: {backend} syscalls/req: README {shown:g}, fresh {fresh:.3f} "
              f"(allowed x/÷ {r:g}): {'ok' if ok else 'OUT OF RANGE'}")
        if not ok:
            problems.append(f"README.md:{n}: {backend} syscalls/req {shown:g}, a fresh "
                            f"measurement {fresh:.3f}: beyond x/÷ {r:g}")
    return problems


# ---------------------------------------------------------------------------------------------
# paths

# Spelled in pieces so that this file does not match itself.
LOCAL_ROOTS = ["/" + d + "/" for d in ("work", "home", "root", "Users")]
LOCAL_PATH = re.compile(r"(?<![\w.~$-])(" + "|".join(map(re.escape, LOCAL_ROOTS)) + r")\S*")
TMP_PATH = re.compile(r"(?<![\w.$-])/tmp/\S*")


def committed_files() -> list[pathlib.Path]:
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if r.returncode == 0:
        return [ROOT / p for p in r.stdout.decode().split("\0") if p]
    return [p for p in ROOT.rglob("*") if p.is_file() and not
            {".git", "build"} & set(p.relative_to(ROOT).parts)]


def check_paths() -> list[str]:
    problems = []
    for path in committed_files():
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            continue  # binary (plots)
        text = data.decode("utf-8", errors="replace")
        in_results = rel(path).startswith("results/")
        for n, line in enumerate(text.splitlines(), 1):
            for m in LOCAL_PATH.finditer(line):
                problems.append(f"{rel(path)}:{n}: machine-local path {m.group(0)[:80]}")
            if in_results:
                for m in TMP_PATH.finditer(line):
                    problems.append(f"{rel(path)}:{n}: machine-local path {m.group(0)[:80]}")
    return problems


# ---------------------------------------------------------------------------------------------

CHECKS = {"links": check_links, "flags": check_flags, "keys": check_keys,
          "examples": check_examples, "paths": check_paths}
NEEDS_BINARIES = {"flags", "keys", "examples"}


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        print(__doc__)
        return 2
    name = sys.argv[1]
    if name in NEEDS_BINARIES:
        missing = [p for p in ("upcase-server", "upcase-load", "upcase-client")
                   if not (BIN / p).is_file()]
        if missing:
            print(f"SKIP: {', '.join(missing)} not built in {BIN}")
            return SKIP
    started = time.monotonic()
    problems = CHECKS[name]()
    for p in problems:
        print(p)
    print(f"docs {name}: {len(problems)} problem(s), {time.monotonic() - started:.1f} s: "
          f"{'FAIL' if problems else 'PASS'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
