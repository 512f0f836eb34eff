"""tools/lab-cost's measurement: one upcase-load run while perf stat (or strace -c) counts on
the lab's server, every count divided by the requests upcase-load got answered (docs/lab.md).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NoReturn

from . import procfs
from .build import BIN_DIR
from .counters import parse_strace_summary, perf_csv_fields, tracepoint_exists
from .errors import ToolExit

BIN = os.environ.get("UPCASE_BIN", str(BIN_DIR))
LAB_OUT = os.environ.get("LAB_OUT", "/tmp/upcase-lab")
# System calls worth naming in the perf row; the rest is reported as "other".
NAMED_SYSCALLS = ["accept4", "recvfrom", "sendto", "recvmmsg", "sendmmsg", "epoll_wait",
                  "epoll_ctl", "io_uring_enter", "futex", "read", "write", "close", "setsockopt",
                  "clone3", "mmap", "mprotect", "munmap", "madvise", "rt_sigprocmask",
                  "set_robust_list", "rseq", "exit", "select", "poll", "rt_sigtimedwait", "fcntl",
                  "clone", "waitid", "prctl", "close_range", "exit_group"]
STRACE_ATTACH_TIMEOUT_S = 10
STRACE_DETACH_TIMEOUT_S = 30


def fail(message: str) -> NoReturn:
    raise ToolExit(message, 1)


def server_pid(pid: int | None) -> int:
    if pid:
        return pid
    try:
        with open(os.path.join(LAB_OUT, "server.pid")) as f:
            return int(f.read())
    except (OSError, ValueError):
        fail(f"no server recorded in {LAB_OUT} (tools/lab-server start, or --pid=PID)")


def ready_line(pid):
    """The server's ready line when tools/lab-server started it, else a stand-in."""
    try:
        with open(os.path.join(LAB_OUT, "server.pid")) as f:
            if int(f.read()) == pid:
                with open(os.path.join(LAB_OUT, "server.out")) as out:
                    return out.readline().strip()
    except (OSError, ValueError):
        pass
    return f"pid {pid}"


def field(line, name):
    m = re.search(rf"\b{name}=(\S+)", line)
    return m.group(1) if m else "?"


class PeakThreads(threading.Thread):
    """Samples the thread count (procfs.thread_count) every 10 ms until stopped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, procfs.thread_count(pid), threading.Event()

    def run(self):
        while not self.done.wait(0.01):
            self.peak = max(self.peak, procfs.thread_count(self.pid))


def load_command(cmd, json_path):
    if not cmd:
        fail("missing the upcase-load command (see --help)")
    if os.path.basename(cmd[0]) != "upcase-load":
        fail(f"expected an upcase-load command, got '{cmd[0]}'")
    if "/" not in cmd[0] and shutil.which(cmd[0]) is None:
        cmd = [os.path.join(BIN, "upcase-load")] + cmd[1:]
    if not any(a.startswith("--warmup") for a in cmd):
        cmd.insert(1, "--warmup=0s")
    user_json = next((a.split("=", 1)[1] for a in cmd if a.startswith("--json=")), None)
    if user_json is None:
        cmd.insert(1, f"--json={json_path}")
    return cmd, user_json or json_path


def run_load(cmd):
    load = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if load.returncode != 0:
        sys.stdout.write(load.stdout)
        fail(f"upcase-load exited with status {load.returncode}")


def measure_perf(pid, cmd, tmp):
    named = [n for n in NAMED_SYSCALLS if tracepoint_exists(n)]
    events = ["raw_syscalls:sys_enter", "context-switches", "task-clock"]
    events += [f"syscalls:sys_enter_{n}" for n in named]
    out = os.path.join(tmp, "perf.csv")
    perf = ["perf", "stat", "-x,", "-o", out, "-e", ",".join(events), "-p", str(pid), "--"]
    run_load(perf + cmd)
    counts = {}
    with open(out) as f:
        text = f.read()
    for event, count in perf_csv_fields(text):
        try:
            counts[event] = float(count)
        except ValueError:
            fail(f"perf could not count {event}: {count} (see perf_event_paranoid)")
    syscalls = {n: counts.get(f"syscalls:sys_enter_{n}", 0) for n in named}
    total = counts.get("raw_syscalls:sys_enter", 0)
    syscalls["other"] = max(0.0, total - sum(syscalls.values()))
    return {"syscalls": total, "by_name": syscalls, "errors": {},
            "context_switches": counts.get("context-switches", 0),
            "cpu_ms": counts.get("task-clock", 0)}


def measure_strace(pid, cmd, tmp):
    out = os.path.join(tmp, "strace.txt")
    strace = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", out, "-p", str(pid)])
    deadline = time.monotonic() + STRACE_ATTACH_TIMEOUT_S
    # Attaching takes a moment per thread: wait until every thread is traced.
    while not procfs.all_tasks_traced(pid):
        if strace.poll() is not None or time.monotonic() > deadline:
            strace.kill()
            fail("strace could not attach to the server (root, or kernel.yama.ptrace_scope=0)")
        time.sleep(0.01)
    try:
        run_load(cmd)
    finally:
        strace.send_signal(signal.SIGINT)  # detach and write the summary
        strace.wait(timeout=STRACE_DETACH_TIMEOUT_S)
    with open(out) as f:
        by_name, errors, total = parse_strace_summary(f.read())
    return {"syscalls": total, "by_name": by_name, "errors": errors,
            "context_switches": None, "cpu_ms": None}


def per(value, requests):
    if value is None:
        return "-"
    v = value / requests
    return f"{v:.2f}" if v >= 0.1 or v == 0 else f"{v:.2g}"


def print_row(line: str, load: dict, cost: dict, peak: int, strace: bool) -> None:
    """The table's header and row, then the calls per request by name."""
    requests = load["requests"]
    conns = load["config"]["connections"]
    tool = "strace -c -f" if strace else "perf stat"
    print(f"{'backend':<10} {'shards':>6} {'proto':>5} {'conns':>5} {'requests':>9} {'req/s':>8} "
          f"{'syscalls/req':>12} {'ctxsw/req':>9} {'threads':>7} {'cpu_us/req':>10}   ({tool})")
    cpu_us = None if cost["cpu_ms"] is None else cost["cpu_ms"] * 1000
    print(f"{field(line, 'backend'):<10} {field(line, 'shards'):>6} "
          f"{load['config'].get('proto', '?'):>5} {conns:>5} {requests:>9} "
          f"{load['throughput_rps']:>8.0f} {per(cost['syscalls'], requests):>12} "
          f"{per(cost['context_switches'], requests):>9} {peak:>7} "
          f"{per(cpu_us, requests):>10}")
    named = sorted(((c, n) for n, c in cost["by_name"].items() if c / requests >= 0.001),
                   reverse=True)
    parts = []
    for calls, name in named:
        part = f"{name} {per(calls, requests)}"
        if cost["errors"].get(name):
            part += f" ({per(cost['errors'][name], requests)} failed)"
        parts.append(part)
    print("  per request: " + ("  ".join(parts) if parts else "no system calls"))


def run(command: list[str], pid_flag: int | None, strace: bool) -> int:
    """Counts on the server (tools/lab-server's, or pid_flag) during one run of `command`."""
    pid = server_pid(pid_flag)
    if not os.path.isdir(f"/proc/{pid}"):
        fail(f"no process {pid} (is the server running? tools/lab-server start)")
    line = ready_line(pid)
    with tempfile.TemporaryDirectory(prefix="lab-cost-") as tmp:
        cmd, json_path = load_command(command, os.path.join(tmp, "load.json"))
        sampler = PeakThreads(pid)
        sampler.start()
        cost = (measure_strace if strace else measure_perf)(pid, cmd, tmp)
        sampler.done.set()
        sampler.join()
        with open(json_path) as f:
            load = json.load(f)
    if load["requests"] == 0:
        fail("upcase-load got no reply")
    print_row(line, load, cost, sampler.peak, strace)
    return 0
