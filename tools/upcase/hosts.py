"""The hosts a run uses: this machine (LocalHost, LOCAL) and another one through ssh (SshHost).

A host starts the server and load processes and reads their /proc (parsed by procfs either way).
ssh is the whole engine; nothing of ours runs on the other host but the two binaries and `sh`.
Per host, SshHost keeps:

- one control shell, `ssh HOST sh`, alive for the whole comparison: commands go down its stdin
  and their output comes back up to a marker line (`@@upcase N rc`), so reading
  /proc/PID/stat 20 times a second costs no new connection;
- a private work folder there (`mktemp -d $TMPDIR/upcase-compare.XXXXXX`: --stats-json and --json
  files, and the binaries with --copy-bins), removed at the end;
- one ssh session per process it starts. The remote command prints its PID and execs the
  program; a watchdog beside it waits for the session's stdin to close and then sends SIGTERM,
  so a process never outlives its ssh (Ctrl-C of tools/compare, a lost connection). It is
  stopped by PID (SIGTERM, then SIGKILL after a bound) through the control shell.

Every ssh runs with BatchMode=yes (a key, never a password prompt) and a ConnectTimeout, in its
own session so that Ctrl-C reaches only tools/compare, which then cleans up in order.
"""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

from . import procfs
from .build import BIN_DIR, binary
from .counters import PerfCounter, Tools, tracepoint_exists
from .errors import HarnessError
from .processes import STOP_TIMEOUT_S, Children, LineReader


class LocalHost:
    """This machine: processes start as children, /proc is read directly."""
    name = "local"
    remote = False

    def allowed_cpus(self) -> list[int]:
        return procfs.allowed_cpus()

    def binary(self, name: str, bin_dir: pathlib.Path | None = None) -> str:
        return str(binary(name, bin_dir))

    def proc_stat(self, pid: int) -> dict:
        return procfs.proc_stat(pid)

    def tree_stat(self, pid: int) -> dict:
        return procfs.tree_stat(pid)

    def ctx_switches(self, pid: int) -> dict:
        return procfs.proc_ctx_switches(pid)

    def thread_names(self, pid: int) -> dict[str, int]:
        return procfs.thread_names(pid)

    def thread_cpus(self, pid: int) -> list[list[int]]:
        return procfs.thread_cpus(pid)

    def cpu_busy_s(self, cpus: list[int]) -> float:
        return procfs.cpu_busy_s(cpus)

    def tracepoint_exists(self, name: str) -> bool:
        return tracepoint_exists(name)

    def machine_info(self) -> dict:
        return procfs.machine_info()


LOCAL = LocalHost()


SSH_OPTIONS = ("BatchMode=yes", "ConnectTimeout=10", "ServerAliveInterval=5",
               "ServerAliveCountMax=6")
# How long one control-shell command may take (reading /proc is instant; a perf start is not).
COMMAND_TIMEOUT_S = 30.0
# Waiting for the first answer of a new ssh connection: ConnectTimeout plus authentication.
CONNECT_TIMEOUT_S = 30.0

# The remote side of a started process: the watchdog keeps a copy of the session's stdin
# (fd 3) and sends SIGTERM to $$ when it reaches end of file; then this shell execs the program,
# so $$ is the program's PID. The watchdog's output goes nowhere, so the session ends with the
# program.
_WRAPPER = ('exec 3<&0; (read _ <&3; kill -TERM $$) >/dev/null 2>&1 & exec 3<&-; '
            'echo "pid $$"; exec "$@"')


def split_destination(dest: str) -> tuple[str, str | None, str]:
    """ssh destination -> ([user@]host, port or None, host): accepts [user@]host and
    ssh://[user@]host[:port]."""
    port = None
    target = dest
    if dest.startswith("ssh://"):
        m = re.fullmatch(r"ssh://([^/]+?)(?::(\d+))?/?", dest)
        if not m:
            raise ValueError(f"ssh destination '{dest}': expected ssh://[user@]host[:port]")
        target, port = m.group(1), m.group(2)
    if not target or any(c.isspace() for c in target) or target.startswith("-"):
        raise ValueError(f"ssh destination '{dest}': expected [user@]host or "
                         "ssh://[user@]host[:port]")
    host = target.rsplit("@", 1)[-1].strip("[]")
    return target, port, host


class SshHost:
    remote = True

    def __init__(self, dest: str, options=(), remote_bin: str | None = None,
                 copy_bins: bool = False, needs=("upcase-server",), log=print):
        self.name = dest
        self.target, port, self.address = split_destination(dest)
        self.options = [*SSH_OPTIONS, *options] + ([f"Port={port}"] if port else [])
        self.log = log
        self.live: dict[int, subprocess.Popen] = {}  # remote PID -> its ssh session
        self.workdir = None
        self.seq = 0
        self.tools = Tools(False, False, False)
        self._tracepoints: set[str] = set()
        self._local = pathlib.Path(tempfile.mkdtemp(prefix="upcase-ssh-"))
        self._err = open(self._local / "control.err", "wb")
        self.shell: Any = Children.popen(self._ssh("sh"), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._err,
                                         start_new_session=True)
        self._reader = LineReader(self.shell.stdout)
        Children.hooks.append(self.close)
        rc, out = self.sh("echo ok", timeout=CONNECT_TIMEOUT_S, check=False)
        if rc != 0 or out.strip() != "ok":
            raise HarnessError(f"ssh {dest}: cannot run commands there"
                               + (f": {self._last_error()}" if self._last_error() else "")
                               + " (needs key-based login: BatchMode=yes never asks)")
        self.workdir = self.sh('mktemp -d "${TMPDIR:-/tmp}/upcase-compare.XXXXXX"').strip()
        if copy_bins:
            self.bin_dir = f"{self.workdir}/bin"
            self.sh(f"mkdir {shlex.quote(self.bin_dir)}")
            files = [str(binary(n)) for n in needs]
            r = subprocess.run(["scp", "-q", *self._opts(), *files,
                                f"{self.target}:{self.bin_dir}/"],
                               capture_output=True, text=True, timeout=300,
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise HarnessError(f"scp to {dest} failed: "
                                   f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
        else:
            self.bin_dir = remote_bin or str(BIN_DIR)
        for n in needs:
            if self.sh(f"test -x {shlex.quote(self.binary(n))}", check=False)[0] != 0:
                raise HarnessError(
                    f"{dest}: {self.binary(n)} not found or not executable (build it there at "
                    "the same path, give --remote-bin=DIR, or --copy-bins)")

    # -- ssh plumbing ------------------------------------------------------------------------

    def _opts(self) -> list[str]:
        return [a for o in self.options for a in ("-o", o)]

    def _ssh(self, command: str) -> list[str]:
        return ["ssh", *self._opts(), self.target, command]

    def _last_error(self) -> str:
        try:
            lines = (self._local / "control.err").read_text(errors="replace").strip()
            return lines.splitlines()[-1] if lines else ""
        except OSError:
            return ""

    def sh(self, command: str, timeout: float = COMMAND_TIMEOUT_S, check=True):
        """Runs `command` in the control shell; its output (rc, text) with check=False, else
        the text, raising HarnessError on a non-zero status."""
        if self.shell.poll() is not None:
            raise HarnessError(f"ssh {self.name}: connection lost"
                               + (f": {self._last_error()}" if self._last_error() else ""))
        self.seq += 1
        marker = f"@@upcase {self.seq} "
        # printf starts the marker on a line of its own even after output without a newline;
        # commands read nothing from the shell's stdin.
        line = f"{{ {command}\n}} </dev/null 2>&1; printf '\\n{marker}%s\\n' $?\n"
        try:
            self.shell.stdin.write(line.encode())
            self.shell.stdin.flush()
        except OSError as e:
            raise HarnessError(f"ssh {self.name}: connection lost ({e})")
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while True:
            raw = self._reader.line(deadline)
            text = raw.decode(errors="replace")
            if text.startswith(marker):
                rc = int(text[len(marker):] or 1)
                break
            if text.startswith("@@upcase "):
                out = []  # the end of an earlier command left behind by an interruption
                continue
            if not raw and (time.monotonic() >= deadline or self.shell.poll() is not None):
                raise HarnessError(f"ssh {self.name}: no answer to `{command}` within "
                                   f"{timeout:.0f}s" + (f": {self._last_error()}"
                                                        if self._last_error() else ""))
            out.append(text)
        result = "\n".join(out[:-1] if out and out[-1] == "" else out)
        if check and rc != 0:
            raise HarnessError(f"{self.name}: `{command}` failed (exit {rc})"
                               + (f": {result.strip().splitlines()[-1]}" if result.strip()
                                  else ""))
        return (rc, result) if not check else result

    def spawn(self, argv: list[str], stderr, stdout_null=False):
        """Starts argv there; (its ssh session, its PID there, a LineReader on its stdout)."""
        script = _WRAPPER.replace('exec "$@"', 'exec "$@" >/dev/null') if stdout_null else _WRAPPER
        command = "sh -c " + shlex.quote(script) + " upcase " + shlex.join(argv)
        # stdin stays open (a pipe we hold): its end of file is the watchdog's signal.
        proc = Children.popen(self._ssh(command), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        reader = LineReader(proc.stdout)  # type: ignore[arg-type]
        line = reader.line(time.monotonic() + CONNECT_TIMEOUT_S).decode(errors="replace")
        m = re.fullmatch(r"pid (\d+)", line.strip())
        if not m:
            Children.reap(proc, signal.SIGKILL)
            raise HarnessError(f"ssh {self.name}: could not start {os.path.basename(argv[0])} "
                               f"there (got '{line.strip()}')")
        pid = int(m.group(1))
        self.live[pid] = proc
        return proc, pid, reader

    def stop(self, proc: Any, pid: int, sig=signal.SIGTERM,
             timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Signals the remote PID, waits for its session to end, SIGKILL after `timeout`."""
        if proc.poll() is None and self.shell.poll() is None:
            self.sh(f"kill -{sig.name.removeprefix('SIG')} {pid} 2>/dev/null || true")
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.sh(f"kill -KILL {pid} 2>/dev/null || true")
        try:
            proc.stdin.close()  # ends the watchdog (its program is gone)
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        rc = Children.reap(proc, signal.SIGKILL)
        self.live.pop(pid, None)
        return rc

    def forget(self, proc: Any, pid: int):
        """A process that exited by itself: release its session."""
        try:
            proc.stdin.close()
        except OSError:
            pass
        Children.forget(proc)
        self.live.pop(pid, None)

    def close(self):
        """Stops what is still running there, removes the work folder, ends the shell."""
        if self.shell.poll() is None:
            try:
                pids = " ".join(str(p) for p in self.live)
                if pids:
                    self.sh(f"kill -TERM {pids} 2>/dev/null; sleep 1; kill -KILL {pids} "
                            "2>/dev/null; true", timeout=15)
                if self.workdir:
                    self.sh(f"rm -rf {shlex.quote(self.workdir)}", timeout=15)
                self.shell.stdin.close()
                self.shell.wait(timeout=10)
            except (HarnessError, OSError, subprocess.TimeoutExpired) as e:
                self.log(f"tools/compare: cleanup on {self.name}: {e}")
        for proc in self.live.values():
            Children.reap(proc, signal.SIGKILL, timeout=5)
        self.live.clear()
        Children.reap(self.shell, signal.SIGKILL, timeout=5)
        self._err.close()
        shutil.rmtree(self._local, ignore_errors=True)
        if self.close in Children.hooks:
            Children.hooks.remove(self.close)

    # -- what the harness asks of a host -----------------------------------------------------

    def binary(self, name: str, local_bin_dir=None) -> str:
        # local_bin_dir picks this machine's build folder (tools/regress); a host of its own
        # always runs what --remote-bin or --copy-bins put there.
        return f"{self.bin_dir}/{name}"

    def work_path(self, name: str) -> str:
        return f"{self.workdir}/{name}"

    def read_text(self, path: str, remove=False) -> str | None:
        rc, text = self.sh(f"cat {shlex.quote(str(path))}"
                           + (f" && rm -f {shlex.quote(str(path))}" if remove else ""),
                           check=False)
        return text if rc == 0 else None

    def allowed_cpus(self) -> list[int]:
        return procfs.parse_allowed_cpus([self.sh("cat /proc/self/status")])[0]

    def machine_info(self) -> dict:
        """What report.md says of this host (as procfs.machine_info does of here)."""
        text = self.sh("uname -r; cat /proc/cpuinfo", check=False)[1]
        kernel, _, cpuinfo = text.partition("\n")
        model, nproc = procfs.parse_cpuinfo(cpuinfo)
        return {"kernel": kernel.strip() or "?", "nproc": str(nproc) if nproc else "?",
                "cpu_model": model, "online_cpus": len(self.allowed_cpus())}

    def proc_stat(self, pid: int) -> dict:
        return procfs.parse_proc_stat(self.sh(f"cat /proc/{pid}/stat"))

    def tree_stat(self, pid: int) -> dict:
        text = self.sh(f"cat /proc/{pid}/stat; cat /proc/[0-9]*/stat 2>/dev/null", check=False)[1]
        return procfs.parse_tree_stat(text.splitlines(), pid)

    def _task_files(self, pid: int, name: str) -> list[str]:
        # One record per thread, separated by a line no /proc file holds.
        text = self.sh(f"for t in /proc/{pid}/task/*; do cat $t/{name} 2>/dev/null; "
                       "echo @@task; done")
        return [t for t in text.split("@@task\n") if t.strip() and t.strip() != "@@task"]

    def ctx_switches(self, pid: int) -> dict:
        return procfs.parse_ctx_switches(self._task_files(pid, "status"))

    def thread_names(self, pid: int) -> dict[str, int]:
        return procfs.group_thread_names(self._task_files(pid, "comm"))

    def thread_cpus(self, pid: int) -> list[list[int]]:
        return procfs.parse_allowed_cpus(self._task_files(pid, "status"))

    def cpu_busy_s(self, cpus) -> float:
        return procfs.parse_cpu_busy(self.sh("cat /proc/stat"), cpus)

    def probe_tools(self):
        """What perf can count there (no strace fallback remotely: it would slow the server)."""
        def ok(cmd: str) -> bool:
            return self.sh(cmd + " >/dev/null 2>&1", check=False)[0] == 0
        cs = ok("perf stat -x, -e context-switches -- true")
        sc = cs and ok("perf stat -x, -e raw_syscalls:sys_enter -- true")
        self.tools = Tools(cs, sc, False)
        if sc:
            rc, text = self.sh("ls /sys/kernel/tracing/events/syscalls 2>/dev/null || "
                               "ls /sys/kernel/debug/tracing/events/syscalls", check=False)
            self._tracepoints = set(text.split()) if rc == 0 else set()
        return self.tools

    def tracepoint_exists(self, name: str) -> bool:
        return f"sys_enter_{name}" in self._tracepoints

    def perf_counter(self, pid: int, events: list[str]) -> "RemotePerf":
        return RemotePerf(self, pid, events)


class RemotePerf(PerfCounter):
    """PerfCounter's twin over the control shell: `perf stat -p PID` started disabled there,
    switched on and off through its control FIFOs, which the shell holds open read-write
    (fds 5 and 6) so that neither side blocks opening them."""

    def __init__(self, host: SshHost, pid: int, events: list[str]):
        self.host, self.events = host, events
        self.remote_dir = host.work_path(f"perf-{host.seq}")
        d = shlex.quote(self.remote_dir)
        self.perf_pid = int(host.sh(
            f"mkdir {d} && mkfifo {d}/ctl {d}/ack && exec 5<>{d}/ctl 6<>{d}/ack && "
            f"{{ perf stat -x, --no-big-num -D -1 -p {pid} --control fifo:{d}/ctl,{d}/ack "
            f"-o {d}/out.csv -e {','.join(events)} >/dev/null 2>{d}/err 5>&- 6>&- & }} && "
            "echo $!").strip().splitlines()[-1])

    def _command(self, word: str):
        rc, out = self.host.sh(f"timeout 10 sh -c 'echo {word} >&5; read a <&6; echo $a'",
                               check=False)
        if rc != 0 or "ack" not in out:
            err = self.host.read_text(f"{self.remote_dir}/err") or ""
            raise HarnessError(f"perf stat on {self.host.name} did not acknowledge '{word}'"
                               + (f": {err.strip().splitlines()[-1]}" if err.strip() else ""))

    def _stop(self) -> str:
        self.host.sh(f"kill -INT {self.perf_pid} 2>/dev/null; i=0; while kill -0 "
                     f"{self.perf_pid} 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; "
                     f"i=$((i+1)); done; exec 5>&- 6>&-; true", check=False)
        text = self.host.read_text(f"{self.remote_dir}/out.csv") or ""
        self.host.sh(f"rm -rf {shlex.quote(self.remote_dir)}", check=False)
        return text
