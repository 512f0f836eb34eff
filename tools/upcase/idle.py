#!/usr/bin/python3
"""The idle-connection holder of tools/compare --idle: opens N TCP connections to a server, sends
nothing on them, and keeps them open until told to close (or until its lifetime ends).

    python3 tools/upcase/idle.py --connections=1000 127.0.0.1 5050

The connections leave from several loopback source addresses (127.0.0.2, 127.0.0.3, ... with
IP_BIND_ADDRESS_NO_PORT, so each address has the whole ephemeral port range towards the server),
round robin, in batches of at most BATCH connects in flight, so a server that accepts normally
never sees its listen backlog (4096) fill. RLIMIT_NOFILE is raised to what N needs (the soft
limit up to the hard one; the hard one too when the process may, e.g. as root).

Protocol on stdout/stdin, one line each:

    held N                  every connection completed its handshake within --connect-timeout
    partial K of N: WHY     only K did (descriptor limit, refused, timed out); K stay open
    error: WHY              nothing held (bad arguments, descriptor limit far too low)

then for each line read on stdin:

    check   -> "open K closed C": C of the held connections saw the server close them (EOF, a
               reset or an error; the uppercase server never writes unprompted, so any input
               on an idle connection means it is gone), K are still open
    close   -> closes every connection, prints "closed" and exits 0

End of input on stdin (the parent died) closes everything too, and so does --lifetime: after it
the holder prints "lifetime over", closes everything and exits 3. Uses only the standard
library, so it runs as a script by its path.
"""
from __future__ import annotations

import argparse
import errno
import resource
import select
import socket
import sys
import time

# Connects in flight at once (well under the server's listen backlog of 4096).
BATCH = 512
# Descriptors the holder needs beyond its connections (Python, pipes, the poll object).
SPARE_FDS = 64
# Linux's IP_BIND_ADDRESS_NO_PORT: pick the port at connect(), by the whole 4-tuple.
IP_BIND_ADDRESS_NO_PORT = 24
GONE = select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR


def parse_args(argv: list[str]) -> argparse.Namespace:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(prog="idle.py", description=doc.split("\n\n")[0],
                                 epilog="\n\n".join(doc.split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host", help="the server's IPv4 address, e.g. 127.0.0.1")
    ap.add_argument("port", type=int)
    ap.add_argument("--connections", type=int, required=True, metavar="N")
    ap.add_argument("--sources", type=int, default=8, metavar="K",
                    help="source addresses 127.0.0.2 .. 127.0.0.(K+1) (default 8)")
    ap.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                    help="seconds for every handshake to complete (default 30)")
    ap.add_argument("--lifetime", type=float, default=600.0, metavar="S",
                    help="close everything and exit 3 after this many seconds (default 600)")
    args = ap.parse_args(argv)
    if args.connections < 0 or not 1 <= args.sources <= 250 or args.lifetime <= 0:
        ap.error("--connections >= 0, --sources 1..250 and --lifetime > 0")
    return args


def raise_nofile(need: int) -> str | None:
    """Raises RLIMIT_NOFILE to `need` descriptors; None, or why it could not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
        return None
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return f"descriptor limit {hard} (RLIMIT_NOFILE hard) is below {need}"


def open_socket(source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind((source, 0))
    s.setblocking(False)
    return s


def connect_all(host: str, port: int, n: int, sources: int,
                deadline: float) -> tuple[list[socket.socket], str | None]:
    """Connects up to n sockets, BATCH in flight; (established sockets, why fewer than n)."""
    held: list[socket.socket] = []
    why: str | None = None
    i = 0
    while i < n and why is None:
        pending: dict[int, socket.socket] = {}
        poller = select.poll()
        while i < n and len(pending) < BATCH:
            try:
                s = open_socket(f"127.0.0.{2 + i % sources}")
            except OSError as e:
                why = f"socket: {e.strerror}"
                break
            i += 1
            rc = s.connect_ex((host, port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                why = f"connect: {errno.errorcode.get(rc, rc)}"
                break
            pending[s.fileno()] = s
            poller.register(s, select.POLLOUT)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                why = why or f"{len(pending)} handshakes not done within the connect timeout"
                break
            for fd, _ in poller.poll(left * 1000):
                s = pending.pop(fd)
                poller.unregister(fd)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    s.close()
                    why = why or f"connect: {errno.errorcode.get(err, err)}"
                else:
                    held.append(s)
        for s in pending.values():
            s.close()
    return held, why


def count_closed(held: list[socket.socket]) -> int:
    """How many of the held connections the server has closed (readable, hung up, in error)."""
    poller = select.poll()
    for s in held:
        poller.register(s, GONE)
    return len(poller.poll(0))


def serve(held: list[socket.socket], lifetime_end: float) -> int:
    """Answers check/close on stdin until close, end of input or the lifetime; the status."""
    stdin = sys.stdin.buffer
    while True:
        left = lifetime_end - time.monotonic()
        if left <= 0:
            print("lifetime over", flush=True)
            return 3
        r, _, _ = select.select([stdin], [], [], left)
        if not r:
            continue
        line = stdin.readline().strip()
        if line == b"check":
            closed = count_closed(held)
            print(f"open {len(held) - closed} closed {closed}", flush=True)
        elif line in (b"close", b""):
            print("closed", flush=True)
            return 0
        else:
            print(f"error: unknown command {line.decode(errors='replace')!r}", flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    limit = raise_nofile(args.connections + SPARE_FDS)
    n = args.connections
    if limit:
        n = max(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - SPARE_FDS)
    held, why = connect_all(args.host, args.port, n, args.sources,
                            start + args.connect_timeout)
    why = why or limit
    if len(held) == args.connections:
        print(f"held {len(held)}", flush=True)
    else:
        print(f"partial {len(held)} of {args.connections}: {why}", flush=True)
    try:
        return serve(held, start + args.lifetime)
    finally:
        for s in held:
            s.close()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
