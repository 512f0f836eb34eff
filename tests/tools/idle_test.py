"""Unit tests of the idle-connection experiment's arithmetic and parsing (tools/compare --idle):
the least-squares fit of CPU per request against idle connections and its 95 % t-interval
(against numpy's polyfit and the textbook formula on synthetic points: a slope that is there, a
flat line, too few points), Student's t quantiles, the experiment's flags, the /proc parsers it
uses (an accept queue, sockstat, a process tree's CPU: a fork server's living children), and
summary.json / report.md from recorded runs (a backend that grows, one that is flat, one that
cannot hold N). No server or load generator runs.

    /usr/bin/python3 tests/tools/idle_test.py
"""
import argparse
import math
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import unittest

import numpy

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

from upcase import idle_experiment, idle_summary, procfs, report  # noqa: E402
from upcase.errors import ToolExit  # noqa: E402

COUNTS = (0, 1000, 4000, 10000)


def synthetic(a_us: float, b_ns: float, noise_us: float, repeats: int = 3,
              seed: int = 1) -> tuple[list[float], list[float]]:
    rnd = random.Random(seed)
    xs = [float(n) for n in COUNTS for _ in range(repeats)]
    ys = [a_us + b_ns / 1e3 * x + rnd.gauss(0, noise_us) for x in xs]
    return xs, ys


class Fit(unittest.TestCase):
    def test_slope_and_interval_match_the_textbook(self):
        xs, ys = synthetic(20.0, 50.0, 2.0)
        f = idle_summary.fit_line(xs, ys)
        assert f is not None and f.ci is not None and f.se_b is not None
        b, a = numpy.polyfit(xs, ys, 1)
        self.assertAlmostEqual(f.b, b, places=9)
        self.assertAlmostEqual(f.a, a, places=6)
        x, y = numpy.array(xs), numpy.array(ys)
        resid = y - (a + b * x)
        se = math.sqrt((resid ** 2).sum() / (len(xs) - 2) / ((x - x.mean()) ** 2).sum())
        self.assertAlmostEqual(f.se_b, se, places=12)
        self.assertAlmostEqual(f.ci[1] - f.b, 2.228 * se, places=12)  # df = 10
        self.assertLess(f.ci[0], 0.050)
        self.assertGreater(f.ci[1], 0.050)   # the true slope, 50 ns, is inside
        self.assertTrue(f.grows())

    def test_flat_line_contains_zero(self):
        xs, ys = synthetic(20.0, 0.0, 2.0, seed=7)
        f = idle_summary.fit_line(xs, ys)
        assert f is not None and f.ci is not None
        self.assertLess(f.ci[0], 0)
        self.assertGreater(f.ci[1], 0)
        self.assertFalse(f.grows())

    def test_exact_line(self):
        f = idle_summary.fit_line([0, 1, 2, 3], [1, 3, 5, 7])
        assert f is not None
        self.assertEqual((f.a, f.b, f.se_b), (1.0, 2.0, 0.0))
        self.assertTrue(f.grows())

    def test_too_few_points(self):
        self.assertIsNone(idle_summary.fit_line([5, 5, 5], [1, 2, 3]))
        self.assertIsNone(idle_summary.fit_line([1], [1]))
        two = idle_summary.fit_line([0, 10], [1, 2])
        assert two is not None
        self.assertEqual((two.b, two.ci, two.grows()), (0.1, None, None))

    def test_t_quantiles(self):
        for df, t in ((1, 12.706), (10, 2.228), (30, 2.042), (40, 2.021), (60, 2.000),
                      (120, 1.980), (1000, 1.962)):
            self.assertAlmostEqual(idle_summary.t975(df), t, delta=2e-3, msg=df)
        with self.assertRaises(ValueError):
            idle_summary.t975(0)


class Flags(unittest.TestCase):
    def args(self, **kw) -> argparse.Namespace:
        base: dict = dict(
            idle="0,1000", idle_rate=None, quick=False, full=False, duration=None, warmup=None,
            repeat=None, sizes=None, connections=None, protos=None, curve=None, slo=[],
            server_host=None, load_hosts=None, remote_bin=None, copy_bins=False, shards=None)
        base.update(kw)
        return argparse.Namespace(**base)

    def test_counts_and_defaults(self):
        counts, rate, duration, warmup, repeat = idle_experiment.check_flags(
            self.args(idle="10000,0,1000,0"))
        self.assertEqual(counts, [0, 1000, 10000])
        self.assertEqual((rate, repeat), (idle_experiment.DEFAULT_RATE, 3))
        self.assertEqual(idle_experiment.check_flags(self.args(quick=True))[4], 1)

    def test_bad_flags(self):
        for kw in (dict(idle="1k"), dict(idle="-1"), dict(idle=","), dict(idle_rate="0"),
                   dict(sizes="64"), dict(server_host="x"), dict(shards="1,2")):
            with self.assertRaises(ToolExit, msg=kw):
                idle_experiment.check_flags(self.args(**kw))

    def test_server_flags_admit_n(self):
        flags = idle_experiment.server_flags(10000)
        self.assertIn("--idle-timeout=0", flags)
        self.assertIn("--max-conns-per-ip=0", flags)
        conns = int(next(f for f in flags if f.startswith("--max-conns=")).split("=")[1])
        self.assertGreaterEqual(conns, 10000 + idle_experiment.ACTIVE_CONNS)


class Proc(unittest.TestCase):
    TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000011 00:00000000 00000000     0
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000005 00:00000000 00000000     0
   2: 0100007F:1F90 0200007F:8B05 01 00000000:00000040 00:00000000 00000000     0
"""

    def test_listen_queue(self):
        self.assertEqual(procfs.parse_listen_queue(self.TCP, 0x1F90), 17)  # not the ESTAB one
        self.assertEqual(procfs.parse_listen_queue(self.TCP, 0x1F91), 5)
        self.assertIsNone(procfs.parse_listen_queue(self.TCP, 80))

    def test_sockstat(self):
        s = procfs.parse_sockstat("sockets: used 13\nTCP: inuse 2 orphan 0 tw 238 alloc 4 "
                                  "mem 17\nUDP: inuse 0 mem 73\n")
        self.assertEqual((s["tcp_inuse"], s["tcp_mem"], s["tcp_alloc"]), (2, 17, 4))

    # /proc/N/stat lines: pid (comm) state ppid ... utime stime cutime cstime ... num_threads
    @staticmethod
    def stat(pid: int, ppid: int, utime: int, stime: int, cutime: int = 0,
             threads: int = 1) -> str:
        fields = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime), str(cutime), "0"]
        fields += ["20", "0", str(threads)] + ["0"] * 30
        return f"{pid} (upcase server) " + " ".join(fields)

    def test_tree_stat_adds_living_children(self):
        # 10 is the fork server (1 s of its own, 0.5 s of reaped children), 20 and 30 its
        # living children, 40 a grandchild, 50 another process's child.
        stats = [self.stat(10, 1, 60, 40, cutime=50, threads=2), self.stat(20, 10, 100, 200),
                 self.stat(30, 10, 10, 0), self.stat(40, 20, 0, 5), self.stat(50, 1, 999, 999),
                 "garbage", self.stat(10, 1, 999, 999)]  # a second reading of 10 is ignored
        got = procfs.parse_tree_stat(stats, 10)
        tick = 1 / procfs.CLK_TCK
        self.assertAlmostEqual(got["utime_s"], (60 + 50 + 100 + 10) * tick)
        self.assertAlmostEqual(got["stime_s"], (40 + 200 + 5) * tick)
        self.assertEqual((got["processes"], got["threads"]), (4, 2))
        with self.assertRaises(ValueError):
            procfs.parse_tree_stat(stats, 99)
        # Single-threaded children's schedstat runtime replaces their whole ticks (30's 10
        # ticks are 0.25 s by schedstat); the server's own time stays its stat's, and 40,
        # without schedstat, keeps its ticks.
        runtime = {20: 3.0, 30: 0.25, 10: 99.0}
        exact = procfs.parse_tree_stat(stats, 10, runtime.get)
        self.assertAlmostEqual(exact["utime_s"] + exact["stime_s"],
                               (60 + 40 + 50) * tick + 3.0 + 0.25 + 5 * tick)

    def test_tree_stat_of_this_process_sees_a_child(self):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            self.assertGreaterEqual(procfs.tree_stat(os.getpid())["processes"], 2)
        finally:
            child.kill()
            child.wait()


def record(backend: str, n: int, cpu_us: float, held: bool = True, probe: bool = False) -> dict:
    """A run record shaped like IdlePointRun's (requests_served 10000 over 1 s)."""
    point = idle_experiment.IdlePoint(backend, "tcp", 64, 64, rate=2000, label=f"idle{n}",
                                      probe=probe, idle=n)
    rec: dict = {"point": point.record(), "ok": True,
                 "idle": {"requested": n, "held": held,
                          "reason": None if held else "the server closed 9 of 9"}}
    if held:
        rec["idle"] |= {"server_memory_end": {"rss_kib": 4096 + n, "pss_kib": 2048 + n,
                                              "processes": 1},
                        "kernel_before": {"slab_kib": 1000, "sockstat": {}},
                        "kernel_held": {"slab_kib": 1000 + 5 * n,
                                        "sockstat": {"tcp_mem": 3, "tcp_inuse": 2 * n}}}
        rec["load"] = {"throughput_rps": 2000.0, "requests": 10000,
                       "latency_us": {"p50": 50.0, "p99": 90.0 + n / 100}}
        rec["server"] = {"utime_s": 0.0, "stime_s": cpu_us * 1e-6 * 10000, "wall_s": 1.0,
                         "requests_served": 10000, "ctx_switches": {"total": 5000}}
        if probe:
            rec["server"]["syscalls"] = {"total": 20000, "by_name": {"poll": 5000},
                                         "source": "perf"}
    return rec


class Summary(unittest.TestCase):
    def runs(self) -> list[dict]:
        xs, ys = synthetic(30.0, 40.0, 1.0, seed=3)
        out = [record("poll", int(x), y) for x, y in zip(xs, ys)]
        xs, ys = synthetic(20.0, 0.0, 1.0, seed=4)
        out += [record("epoll", int(x), y) for x, y in zip(xs, ys)]
        out += [record("select", 0, 25.0), record("select", 0, 26.0), record("select", 0, 24.0),
                record("select", 1000, 0, held=False), record("poll", 1000, 0, probe=True)]
        for i, r in enumerate(out):
            r["file"] = f"runs/{i:03d}.json"
        return out

    def test_summary_and_report(self):
        meta = {"experiment": "idle", "idle": {"counts": list(COUNTS), "rate_rps": 2000,
                                               "not_run": {"iterative": "one at a time"}}}
        s = idle_summary.summarize_idle(meta, self.runs())
        poll, epoll, select = (s["results"][b] for b in ("poll", "epoll", "select"))
        self.assertTrue(poll["fit"]["grows"])
        lo, hi = poll["fit"]["b_ci95_ns"]
        self.assertTrue(lo < 40.0 < hi, (lo, hi))
        self.assertFalse(epoll["fit"]["grows"])
        self.assertIsNone(select["fit"]["b_ns"])   # held at one count only
        self.assertEqual(select["fit"]["held_max"], 0)
        cannot = [p for p in select["points"] if not p["held"]]
        self.assertEqual([p["idle"] for p in cannot], [1000])
        p1000 = next(p for p in poll["points"] if p["idle"] == 1000)
        self.assertEqual(p1000["syscalls_per_req"], 2.0)
        self.assertEqual(p1000["slab_delta_kib"], 5000)
        self.assertEqual(len(p1000["cpu_us_per_req_runs"]), 3)
        with tempfile.TemporaryDirectory() as tmp:
            report.write_idle_report(pathlib.Path(tmp), s, False)
            text = (pathlib.Path(tmp) / "report.md").read_text()
        self.assertIn("| select | 1k | cannot hold 1000: the server closed 9 of 9 |", text)
        self.assertIn("| iterative | - | - | not run |", text)
        self.assertIn("grows with N", text)
        self.assertIn("flat within noise", text)


if __name__ == "__main__":
    unittest.main()
