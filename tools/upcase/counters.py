"""Counting what a process does with standard tools: perf (preferred) and strace.

- Tools.probe: what works here (perf attached to a PID, its syscall tracepoints, strace);
- PerfCounter: `perf stat -p PID` switched on and off through its control FIFO, so the counting
  window is exactly the run's (hosts.RemotePerf is its twin over ssh);
- StraceCounter: `strace -c -f -p PID`, the fallback (slows the server; counts only);
- the parsers of `perf stat -x,` and `strace -c` output, and whether a syscall tracepoint exists.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Iterable, Iterator

from .errors import HarnessError
from .processes import Children, read_line

# Per-syscall tracepoints counted in a probe run; everything else is summed as "other".
PROBE_SYSCALLS = (
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
    "recvmmsg", "sendmmsg", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
    "io_uring_enter", "poll", "ppoll", "select", "pselect6", "accept", "accept4", "close",
    "shutdown", "futex", "clone", "clone3", "mmap", "munmap", "mprotect", "madvise",
    "rt_sigprocmask", "rt_sigtimedwait", "fcntl", "wait4", "waitid", "setsockopt", "getsockopt",
    "sched_yield", "nanosleep", "clock_nanosleep", "eventfd2",
)
# Where the kernel lists its syscall tracepoints (tracefs, or debugfs on older setups).
TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def tool_works(cmd: list[str]) -> bool:
    """Whether a command runs and exits 0 (within 20 s)."""
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def tracepoint_exists(name: str) -> bool:
    """Whether syscalls:sys_enter_NAME exists here."""
    return any(pathlib.Path(root, "events/syscalls", f"sys_enter_{name}").is_dir()
               for root in TRACEFS_ROOTS)


@dataclasses.dataclass
class Tools:
    perf_cs: bool      # perf can count context switches of a PID (with its future threads)
    perf_syscalls: bool
    strace: bool

    @classmethod
    def probe(cls) -> "Tools":
        cs = perf_attach_works(["context-switches"])
        sc = cs and perf_attach_works(["raw_syscalls:sys_enter"])
        return cls(cs, sc, tool_works(["strace", "-c", "-o", "/dev/null", "true"]))


def perf_attach_works(events: list[str]) -> bool:
    """Tries PerfCounter exactly as a run uses it, on a sleeping child."""
    if not tool_works(["perf", "--version"]):
        return False
    work = pathlib.Path(tempfile.mkdtemp(prefix="upcase-perf-probe-"))
    target = Children.popen(["sleep", "30"])
    try:
        counter = PerfCounter(target.pid, events, work)
        counter.enable()
        return set(counter.finish()) == set(events)
    except (HarnessError, OSError):
        return False
    finally:
        Children.reap(target, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def perf_record_works() -> bool:
    """Whether `perf record` can sample here (tools/loadgen-efficiency's profiles)."""
    if not shutil.which("perf"):
        return False
    return tool_works(["perf", "record", "-q", "-o", "/dev/null", "--", "true"])


class PerfCounter:
    """`perf stat -p PID` started disabled and switched through its control FIFO, so the
    counting window starts and ends exactly when we say (the ack is the synchronisation)."""

    def __init__(self, pid: int, events: list[str], workdir: pathlib.Path):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="perf-", dir=workdir))
        ctl, ack = self.dir / "ctl", self.dir / "ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        # Opened read-write so neither side blocks on open().
        self.ctl = os.open(ctl, os.O_RDWR)
        self.ack = os.open(ack, os.O_RDWR)
        self.out = self.dir / "out.csv"
        self.events = events
        self.proc = Children.popen(
            ["perf", "stat", "-x,", "--no-big-num", "-D", "-1", "-p", str(pid),
             "--control", f"fifo:{ctl},{ack}", "-o", str(self.out),
             "-e", ",".join(events)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _command(self, word: str) -> None:
        os.write(self.ctl, (word + "\n").encode())
        deadline = time.monotonic() + 10
        got = b""
        while b"ack" not in got:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                assert self.proc.stderr is not None
                err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise HarnessError(f"perf stat did not acknowledge '{word}'"
                                   + (f": {err[-1]}" if err else ""))
            r, _, _ = select.select([self.ack], [], [], min(remaining, 0.5))
            if r:
                got += os.read(self.ack, 64)

    def enable(self) -> None:
        self._command("enable")

    def finish(self) -> dict[str, int]:
        try:
            self._command("disable")
        finally:
            text = self._stop()
        return parse_perf_csv(text, self.events)

    def _stop(self) -> str:
        """Ends perf stat; its CSV output."""
        Children.reap(self.proc, signal.SIGINT, timeout=10)
        os.close(self.ctl)
        os.close(self.ack)
        return self.out.read_text()


def perf_csv_fields(text: str) -> Iterator[tuple[str, str]]:
    """(event, count as written) per line of `perf stat -x,` output; comments skipped."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        parts = line.strip().split(",")
        if len(parts) > 2:
            yield parts[2], parts[0]


def parse_perf_csv(text: str, events: Iterable[str]) -> dict[str, int]:
    """`perf stat -x,` output: count,unit,event,... per line ("<not counted>" counts 0)."""
    wanted = set(events)
    return {event: int(count) if count.isdigit() else 0
            for event, count in perf_csv_fields(text) if event in wanted}


class StraceCounter:
    """Fallback syscall counter: `strace -c -f -p PID` (slows the server; counts only)."""

    def __init__(self, pid: int, workdir: pathlib.Path):
        self.out = pathlib.Path(tempfile.mkstemp(prefix="strace-", dir=workdir)[1])
        self.proc = Children.popen(["strace", "-c", "-f", "-o", str(self.out), "-p", str(pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # strace reports each thread it attached to on stderr; the first line means tracing.
        deadline = time.monotonic() + 10
        line = read_line(self.proc.stderr, deadline)  # type: ignore[arg-type]
        if b"attached" not in line:
            Children.reap(self.proc)
            raise HarnessError(f"strace could not attach: {line.decode(errors='replace')}")

    def finish(self) -> dict[str, int]:
        Children.reap(self.proc, signal.SIGINT, timeout=10)
        return parse_strace_summary(self.out.read_text())[0]


def parse_strace_summary(text: str) -> tuple[dict[str, int], dict[str, int], int]:
    """`strace -c` output: (calls by syscall, errors by syscall, the total line's calls)."""
    by_name: dict[str, int] = {}
    errors: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        cols = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(cols) < 5 or not re.match(r"^[\d.]+$", cols[0]):
            continue
        calls = int(cols[3])
        if cols[-1] == "total":
            total = calls
            continue
        by_name[cols[-1]] = calls
        if len(cols) == 6:
            errors[cols[-1]] = int(cols[4])
    return by_name, errors, total
