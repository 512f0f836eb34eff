"""What one run measures (Point: backend, protocol, size, connections, offered rate) and how it
runs (RunSettings: durations, CPU sets, hosts, binaries)."""
from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
from typing import Any

from .units import fmt_count, fmt_size

# The backends that take --shards and --pin (one reactor thread per shard).
SHARDED_BACKENDS = ("epoll", "uring")


@dataclasses.dataclass(frozen=True)
class Point:
    backend: str
    proto: str            # tcp | udp
    size: int             # request bytes
    connections: int      # TCP connections or UDP sockets, one request outstanding each
    rate: float = 0.0     # offered requests/s in total; 0 = closed loop
    label: str = ""       # open loop: e.g. "50%" of the reference maximum
    probe: bool = False   # a syscall-counting run (its CPU figures are not used)
    shards: int | None = None  # epoll/uring: --shards; None = not swept (--shards=1)
    role: str = ""        # open loop on a curve: sweep | knee | slo (curve.py)

    @property
    def mode(self) -> str:
        return "closed" if self.rate == 0 else "open"

    @property
    def key(self) -> str:
        """The same for every backend at the same load, e.g. tcp-64B-c64-open50."""
        tail = "closed" if self.rate == 0 else "open" + self.label.rstrip("%")
        return f"{self.proto}-{self.size}B-c{self.connections}-{tail}"

    def describe(self) -> str:
        load = "closed" if self.rate == 0 else f"open {self.label} ({fmt_count(self.rate)}/s)"
        probe = " [syscall probe]" if self.probe else ""
        shards = f" shards={self.shards}" if self.shards else ""
        return (f"{self.backend}{shards} {self.proto} {fmt_size(self.size)} "
                f"c={self.connections} {load}{probe}")

    def record(self) -> dict:
        """The point as runs/*.json stores it."""
        return dataclasses.asdict(self) | {"key": self.key, "mode": self.mode}


@dataclasses.dataclass
class RunSettings:
    duration: float = 1.5
    warmup: float = 0.5
    server_cpu: int | None = 0
    load_cpu: int | None = 1
    arrival: str = "poisson"
    server_args: tuple[str, ...] = ()
    # Placement beyond one CPU each (tools/compare's flags); the defaults keep the above.
    server_cpus: tuple[int, ...] | None = None  # replaces server_cpu
    load_cpus: tuple[int, ...] | None = None    # replaces load_cpu
    load_threads: int = 1
    pin: bool = False          # epoll/uring get --pin (shard i on the i-th CPU of server_cpus)
    server_host: Any = None    # None: this machine; else a hosts.SshHost
    load_hosts: tuple = ()     # () : this machine; else hosts.LOCAL and/or SshHosts
    server_addr: str | None = None  # where upcase-load connects (default 127.0.0.1)
    bin_dir: pathlib.Path | None = None  # local binaries from here (default build.BIN_DIR)
    # Probe runs count each of counters.PROBE_SYSCALLS too; off, only the total (perf then exits
    # in ~0.1 s instead of ~1.5 s).
    syscall_names: bool = True
    # upcase-load gets --server-pid/--server-cpus (tools/compare), so its `host` figures count
    # the server's CPU time as upcase's own rather than foreign.
    server_placement: bool = False

    def server_cpu_list(self) -> list[int] | None:
        if self.server_cpus is not None:
            return list(self.server_cpus)
        return None if self.server_cpu is None else [self.server_cpu]

    def load_cpu_list(self) -> list[int] | None:
        if self.load_cpus is not None:
            return list(self.load_cpus)
        return None if self.load_cpu is None else [self.load_cpu]

    def connect_addr(self) -> str:
        return self.server_addr or "127.0.0.1"

    def bind_addr(self) -> str:
        """The server binds to the address the load connects to when it is a literal (so it
        listens on the benchmark network only), else to every IPv4 address."""
        try:
            ipaddress.ip_address(self.connect_addr())
            return self.connect_addr()
        except ValueError:
            return "0.0.0.0"
