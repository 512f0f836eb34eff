#!/usr/bin/python3
"""--max-conns-per-ip keys IPv6 clients by prefix (--per-ip-prefix), end to end, every backend.

Inside a private network namespace (unshare -n: gone when this process exits), lo gets three
addresses of one /64 (fd00::1..3) and one of another (fd00:0:0:1::1). A server on [fd00::10]
with --max-conns-per-ip=2 serves two connections of the first /64 and closes the third at once,
while the other /64 is still served; with --per-ip-prefix=32,128 every address is its own client.
Exits 77 (CTest: skipped) when not root. UPCASE_BIN names the binaries' folder.
"""
import os
import socket
import subprocess
import sys
import time

SERVER_ADDRESS = "fd00::10"
SAME_64 = ["fd00::1", "fd00::2", "fd00::3"]
OTHER_64 = "fd00:0:0:1::1"
TIMEOUT_S = 10


def in_namespace() -> None:
    """Re-runs this script in a new network namespace unless it already is in one."""
    if os.environ.get("UPCASE_IN_NETNS") == "1":
        return
    env = dict(os.environ, UPCASE_IN_NETNS="1")
    result = subprocess.run(["unshare", "--net", sys.executable] + sys.argv, env=env,
                            timeout=120, check=False)
    sys.exit(result.returncode)


def setup_loopback() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in SAME_64 + [OTHER_64, SERVER_ADDRESS]:
        subprocess.run(["ip", "-6", "addr", "add", f"{address}/64", "dev", "lo", "nodad"],
                       check=True)


def start_server(extra: list) -> tuple:
    server = subprocess.Popen(
        [os.path.join(os.environ["UPCASE_BIN"], "upcase-server"), f"--backend={BACKEND}",
         f"--bind={SERVER_ADDRESS}", "--proto=tcp", "--max-conns-per-ip=2"] + extra + ["0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if not line.startswith("ready "):
        server.kill()
        raise SystemExit(f"FAIL {BACKEND}: no ready line: {line!r} {server.stderr.read()}")
    port = int(line.split("tcp=")[1].split()[0].rsplit(":", 1)[1])
    return server, port


def connect(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_S)
    s.bind((source, 0))
    s.connect((SERVER_ADDRESS, port))
    return s


def served(s: socket.socket) -> bool:
    """True when a round trip works; False when the server closed the connection instead."""
    try:
        s.sendall(b"hello\n")
        reply = b""
        while len(reply) < 6:
            chunk = s.recv(64)
            if not chunk:
                return False
            reply += chunk
        assert reply == b"HELLO\n", reply
        return True
    except (ConnectionResetError, BrokenPipeError):
        return False


def check(extra: list, expect: list) -> None:
    server, port = start_server(extra)
    try:
        # One at a time: with several shards, connections made together are admitted in any order.
        sockets, got = [], []
        for source in SAME_64 + [OTHER_64]:
            sockets.append(connect(source, port))
            got.append(served(sockets[-1]))
        if got != expect:
            raise SystemExit(f"FAIL {BACKEND} {extra}: served {got}, expected {expect}")
        for s in sockets:
            s.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def backends() -> list:
    help_text = subprocess.run([os.path.join(os.environ["UPCASE_BIN"], "upcase-server"),
                                "--help"], capture_output=True, text=True, check=True).stdout
    # "--backend=VALUE   I/O model; ... (iterative|threads|epoll|uring)": every registered one.
    line = help_text.split("--backend", 1)[1].split("\n", 1)[0]
    names = line.rsplit("(", 1)[1].rstrip(")").split("|")
    # "  uring     ... [unavailable: ...]" in the backend list: this kernel cannot run it.
    return [n for n in names
            if not any(l.split()[:1] == [n] and "[unavailable:" in l
                       for l in help_text.splitlines())]


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("SKIP: needs root for a network namespace with IPv6 addresses on its lo")
        sys.exit(77)
    in_namespace()
    setup_loopback()
    deadline = time.monotonic() + 100
    for BACKEND in backends():
        if BACKEND == "iterative":
            continue  # one client at a time: a second connection waits, it is never refused
        # Default /64: fd00::1 and ::2 fill the cap, ::3 is the same client; the other /64 is not.
        check([], [True, True, False, True])
        # /128: every address is a client of its own.
        check(["--per-ip-prefix=32,128"], [True, True, True, True])
        assert time.monotonic() < deadline, "out of time"
    print("PASS")
