"""The processes of a run: every child reaped by PID (Children), the server started until its
"ready" line (Server, spawn_ready), upcase-load's command line and its instances (LoadInstance),
and several load hosts' results merged with `upcase-load merge`.

Every child is started through Children, which kills whatever is still alive by PID at exit,
and every wait is bounded. The flags used are upcase-server's (docs/upcase-server.md) and
upcase-load's (docs/upcase-load.md).
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import time
from typing import IO, Any, Callable

from .build import binary
from .errors import LOAD_EXIT_MISMATCH, HarnessError, MismatchError, ServerStartError
from .points import SHARDED_BACKENDS, Point, RunSettings
from .procfs import fmt_cpu_list
from .units import fmt_duration

# How long a server may take to print "ready", and to exit after SIGTERM (beyond --grace).
READY_TIMEOUT_S = 10.0
SERVER_GRACE_S = 1.0
STOP_TIMEOUT_S = SERVER_GRACE_S + 5.0
# upcase-load --timeout for TCP runs (its default, 1s, is also its UDP loss threshold).
TCP_LOAD_TIMEOUT_S = 3.0


# ---------------------------------------------------------------------------------------------
# Children: every process we start, so none outlives us.

class Children:
    _live: dict[int, subprocess.Popen] = {}
    # Called first by kill_all: e.g. stopping remote processes while their ssh still runs.
    hooks: list[Callable[[], None]] = []

    @classmethod
    def popen(cls, cmd: list[str], **kw: Any) -> subprocess.Popen:
        p = subprocess.Popen(cmd, **kw)
        cls._live[p.pid] = p
        return p

    @classmethod
    def reap(cls, p: subprocess.Popen, sig: int = signal.SIGTERM,
             timeout: float = STOP_TIMEOUT_S) -> int:
        """Signals p (by PID) unless it already exited, then waits; SIGKILL when it lingers."""
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        cls._live.pop(p.pid, None)
        return p.returncode

    @classmethod
    def forget(cls, p: subprocess.Popen) -> None:
        """A child that exited by itself and was waited for elsewhere."""
        cls._live.pop(p.pid, None)

    @classmethod
    def kill_all(cls) -> None:
        for hook in list(cls.hooks):
            try:
                hook()
            except Exception as e:  # noqa: BLE001 - cleanup goes on whatever one step did
                print(f"cleanup: {e}", file=sys.stderr)
        cls.hooks.clear()
        for p in list(cls._live.values()):
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        cls._live.clear()


def _on_signal(signum: int, _frame: Any) -> None:
    # Turn SIGTERM/SIGHUP into an exception so `finally` blocks stop the servers.
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup() -> None:
    atexit.register(Children.kill_all)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


class LineReader:
    """Lines from a pipe with a deadline each; keeps what arrived after a line for the next."""

    def __init__(self, stream: IO[bytes]):
        self.fd, self.buf = stream.fileno(), b""

    def line(self, deadline: float) -> bytes:
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            r, _, _ = select.select([self.fd], [], [], remaining)
            if r:
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    break
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line


def read_line(stream: IO[bytes], deadline: float) -> bytes:
    """One line from a pipe, waiting at most until `deadline`; b"" on EOF or timeout."""
    return LineReader(stream).line(deadline)


# ---------------------------------------------------------------------------------------------
# The server.

def ready_port(line: str) -> int | None:
    """The port of upcase-server's ready line ("ready ... tcp=127.0.0.1:PORT ..."), else None."""
    m = re.search(r"^ready .*?(?:tcp|udp)=\S*:(\d+)", line)
    return int(m.group(1)) if m else None


def spawn_ready(command: list[str], stderr: Any = subprocess.DEVNULL,
                timeout: float = READY_TIMEOUT_S) -> tuple[subprocess.Popen, str, int]:
    """Starts a server command on this machine and waits for its ready line: (process, ready
    line, port). ServerStartError (the process killed) when it exits or stays silent."""
    proc = Children.popen(command, stdout=subprocess.PIPE, stderr=stderr,
                          stdin=subprocess.DEVNULL)
    line = LineReader(proc.stdout).line(time.monotonic() + timeout)  # type: ignore[arg-type]
    text = line.decode(errors="replace")
    port = ready_port(text)
    if port is None:
        Children.reap(proc, signal.SIGKILL)
        raise ServerStartError(f"server did not get ready: {text!r}")
    return proc, text, port


class Server:
    """upcase-server on `host` (this machine or one reached through ssh)."""

    def __init__(self, point: Point, settings: RunSettings, workdir: pathlib.Path, host: Any):
        self.host = host
        self.log_path = workdir / "server.log"
        # On a remote host the counters go to its own work folder; read back at stop().
        self.stats_path = (self.host.work_path(f"stats-{workdir.name}.json") if self.host.remote
                           else workdir / "stats.json")
        self.command = [self.host.binary("upcase-server", settings.bin_dir),
                        f"--backend={point.backend}",
                        f"--bind={settings.bind_addr()}", f"--shards={point.shards or 1}"]
        if settings.pin and point.backend in SHARDED_BACKENDS:
            self.command.append("--pin")
        self.command += [f"--proto={point.proto}", f"--grace={fmt_duration(SERVER_GRACE_S)}",
                         f"--stats-json={self.stats_path}", *settings.server_args, "0"]
        cpus = settings.server_cpu_list()
        if cpus is not None:
            self.command = ["taskset", "-c", fmt_cpu_list(cpus)] + self.command
        self.proc: subprocess.Popen | None = None
        self.remote_pid: int | None = None
        self.port: int | None = None
        self.ready_line: str | None = None

    def start(self) -> None:
        log = open(self.log_path, "wb")
        if self.host.remote:
            self.proc, self.remote_pid, reader = self.host.spawn(self.command, stderr=log)
        else:
            # taskset execs the server, so proc.pid is the server's PID.
            self.proc = Children.popen(self.command, stdout=subprocess.PIPE, stderr=log,
                                       stdin=subprocess.DEVNULL)
            reader = LineReader(self.proc.stdout)  # type: ignore[arg-type]
        log.close()
        line = reader.line(time.monotonic() + READY_TIMEOUT_S).decode(errors="replace")
        port = ready_port(line)
        if port is None:
            self.stop(signal.SIGKILL)
            raise ServerStartError(f"server did not get ready: {self.last_log_line() or line}")
        self.ready_line, self.port = line, port

    @property
    def pid(self) -> int:
        """The server's PID on its host."""
        assert self.proc is not None
        return self.remote_pid if self.host.remote else self.proc.pid  # type: ignore

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, dict | None]:
        assert self.proc is not None
        text: str | None
        if self.host.remote:
            rc = self.host.stop(self.proc, self.remote_pid, sig, STOP_TIMEOUT_S)
            text = self.host.read_text(self.stats_path, remove=True)
        else:
            rc = Children.reap(self.proc, sig)
            try:
                text = pathlib.Path(self.stats_path).read_text()
            except OSError:
                text = None
        if self.proc.stdout:
            self.proc.stdout.close()
        try:
            stats = json.loads(text) if text else None
        except ValueError:
            stats = None
        return rc, stats


# ---------------------------------------------------------------------------------------------
# The load.

def load_command(point: Point, port: int, settings: RunSettings, json_path: Any, host: Any,
                 connections: int | None = None, rate: float | None = None,
                 start_at: float | None = None, server_pid: int | None = None
                 ) -> list[str]:
    """upcase-load's command line for one load host's share of a point; with server_pid (the
    server on the same host, settings.server_placement) also the server's PID and CPUs."""
    connections = point.connections if connections is None else connections
    rate = point.rate if rate is None else rate
    cmd = [host.binary("upcase-load", settings.bin_dir), f"--proto={point.proto}",
           f"--connections={connections}", f"--threads={settings.load_threads}",
           f"--duration={fmt_duration(settings.duration)}",
           f"--warmup={fmt_duration(settings.warmup)}", f"--size={point.size}",
           f"--rate={rate:.0f}", f"--json={json_path}", "--quiet"]
    if point.rate:
        # Open loop: requests leave on schedule whatever is in flight (--pipeline=0, no cap),
        # so a slow server builds a queue instead of slowing the offered load.
        cmd += ["--pipeline=0", f"--arrival={settings.arrival}"]
    else:
        cmd.append("--pipeline=1")
    if point.proto == "tcp":
        # Connect, start-up probe and end-of-run drain may wait this long on a starved or
        # throttled server; UDP keeps the default, since there it also declares a reply lost.
        cmd.append(f"--timeout={fmt_duration(TCP_LOAD_TIMEOUT_S)}")
    cpus = settings.load_cpu_list()
    if cpus is not None and (len(cpus) > 1 or settings.load_threads > 1):
        cmd.append(f"--cpus={fmt_cpu_list(cpus)}")  # thread i on the i-th CPU
    if start_at:
        cmd.append(f"--start-at={start_at:.3f}")
    if settings.server_placement and server_pid is not None:
        cmd.append(f"--server-pid={server_pid}")
        server_cpus = settings.server_cpu_list()
        if server_cpus is not None:
            cmd.append(f"--server-cpus={fmt_cpu_list(server_cpus)}")
    cmd += [settings.connect_addr(), str(port)]
    if cpus is not None:
        cmd = ["taskset", "-c", fmt_cpu_list(cpus)] + cmd
    return cmd


@dataclasses.dataclass
class LoadInstance:
    """One upcase-load process of a run, on its host."""
    host: Any
    command: list[str]
    json_path: Any   # on its host
    err_path: pathlib.Path
    proc: subprocess.Popen | None = None
    remote_pid: int | None = None

    def start(self) -> None:
        with open(self.err_path, "wb") as err:
            if self.host.remote:
                self.proc, self.remote_pid, _ = self.host.spawn(self.command, stderr=err,
                                                                stdout_null=True)
            else:
                self.proc = Children.popen(self.command, stdout=subprocess.DEVNULL, stderr=err,
                                           stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            if self.host.remote:
                self.host.stop(self.proc, self.remote_pid, signal.SIGKILL, 5)
            else:
                Children.reap(self.proc, signal.SIGKILL)

    def result(self) -> dict:
        """Its --json, after it exited; raises HarnessError (MismatchError) on failure."""
        assert self.proc is not None
        where = f" on {self.host.name}" if self.host.remote else ""
        if self.host.remote:
            self.host.forget(self.proc, self.remote_pid)
        else:
            Children.forget(self.proc)
        rc = self.proc.returncode
        if rc != 0:
            lines = self.err_path.read_text(errors="replace").strip().splitlines()
            error = MismatchError if rc == LOAD_EXIT_MISMATCH else HarnessError
            raise error(f"upcase-load{where} exited {rc}" + (f": {lines[-1]}" if lines else ""))
        try:
            text = (self.host.read_text(self.json_path, remove=True) if self.host.remote
                    else pathlib.Path(self.json_path).read_text())
            return json.loads(text or "")
        except (OSError, ValueError) as e:
            raise HarnessError(f"upcase-load{where} wrote no readable --json: {e}")


def merge_loads(docs: list[dict], workdir: pathlib.Path) -> dict:
    """One result from several load hosts' --json, by `upcase-load merge`."""
    paths = []
    for i, doc in enumerate(docs):
        paths.append(workdir / f"load-part-{i}.json")
        paths[-1].write_text(json.dumps(doc))
    merged = workdir / "load-merged.json"
    cmd = [str(binary("upcase-load")), "merge", f"--json={merged}", "--quiet", *map(str, paths)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        raise HarnessError("upcase-load merge failed" + (f": {lines[-1]}" if lines else ""))
    return json.loads(merged.read_text())
