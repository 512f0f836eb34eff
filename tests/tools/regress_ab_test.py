"""tools/upcase/regress/ab.py: the interleaved measurement with real servers (both sides the same
build, two short rounds), the choice of pairs to measure again when the machine's speed changed,
and the parsing of Google Benchmark's JSON. No timing is asserted.

    UPCASE_BIN=build/release/bin /usr/bin/python3 tests/tools/regress_ab_test.py
"""
import math
import os
import pathlib
import sys
import tempfile
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from upcase import counters, points, processes, procfs  # noqa: E402
from upcase.regress import ab  # noqa: E402

BIN = pathlib.Path(os.environ.get("UPCASE_BIN", ROOT / "build" / "release" / "bin"))


class FakeMeasurement(ab.Measurement):
    """Pairs come from a script instead of servers: script[(item, round)] is a list of
    (client base, client candidate) gauges, one per time the pair is measured."""

    def __init__(self, script, rounds, items=2):
        plan = ab.Plan([points.Point("epoll", "tcp", 64, 64), points.Point("uring", "tcp", 64, 64)][:items],
                       [], False)
        super().__init__(plan, {}, {}, ab.Settings(rounds=rounds), None, pathlib.Path("/"),
                         log=lambda _: None)
        self.script = {k: list(v) for k, v in script.items()}
        self.measured = []

    def _pair(self, i, r):
        self.measured.append((i, r))
        a, b = self.script[(i, r)].pop(0)
        self.client[(i, r)] = {"base": a, "candidate": b}
        name = f"cpu_us_per_req/{i}"
        self._record(i, name, "cpu_us_per_req", name, "base", r, a, "base")
        self._record(i, name, "cpu_us_per_req", name, "candidate", r, b, "base")


class RemeasureTest(unittest.TestCase):
    def test_only_pairs_off_the_usual_ratio_are_disturbed(self):
        # Item 0: the candidate's load generator needs 10 % more CPU in every round (a change the
        # candidate causes: not a disturbance), except round 3 where it needed 30 % more.
        script = {(0, r): [(1.0, 1.1)] for r in range(8)}
        script[(0, 3)] = [(1.0, 1.3)]
        script[(1, 0)] = [(1.0, 0.9)]
        for r in range(1, 8):
            script[(1, r)] = [(1.0, 1.0 + 0.01 * (r % 3))]
        m = FakeMeasurement(script, 8)
        for r in range(8):
            for i in range(2):
                m._pair(i, r)
        self.assertEqual(m.disturbed(), [(1, 0), (0, 3)])

    def test_disturbed_pairs_are_measured_again_or_left_out(self):
        script = {(i, r): [(1.0, 1.0)] for i in range(2) for r in range(10)}
        script[(0, 2)] = [(1.0, 1.2), (1.0, 1.01)]               # fine the second time
        script[(1, 4)] = [(1.2, 1.0), (1.25, 1.0), (1.3, 1.0)]   # never settles
        m = FakeMeasurement(script, 10)
        for r in range(10):
            for i in range(2):
                m._pair(i, r)
        m._remeasure()
        self.assertEqual(m.measured[20:], [(0, 2), (1, 4), (1, 4)])
        self.assertEqual(m.metrics["cpu_us_per_req/0"].candidate[2], 1.01)
        self.assertEqual([x["sample"] for x in m.remeasured], [3, 5, 5])
        self.assertEqual(m.remeasured[0]["values"]["cpu_us_per_req/0"],
                         {"base": 1.0, "candidate": 1.2})
        self.assertEqual([(x["item"], x["sample"]) for x in m.excluded],
                         [(m.items[1].describe(), 5)])
        self.assertIsNone(m.metrics["cpu_us_per_req/1"].base[4])
        self.assertIsNone(m.metrics["cpu_us_per_req/1"].candidate[4])

    def test_the_remeasure_budget_is_bounded(self):
        script = {(i, r): [(1.0, 1.0)] * 3 for i in range(2) for r in range(10)}
        for r in (1, 3, 5, 7):
            script[(0, r)] = [(1.0, 1.5)] * 3
        m = FakeMeasurement(script, 10)
        for r in range(10):
            for i in range(2):
                m._pair(i, r)
        m._remeasure()
        self.assertLessEqual(len(m.remeasured), round(ab.REMEASURE_SHARE * 20))


class MicroParseTest(unittest.TestCase):
    def test_median_of_repetitions_aggregates_ignored(self):
        def bm(name, gbps, kind="iteration"):
            return {"name": name, "run_name": name, "run_type": kind,
                    "bytes_per_second": gbps * 1e9}
        data = {"benchmarks": [bm("BM_X/64", 1), bm("BM_X/64", 3), bm("BM_X/64", 2),
                               bm("BM_X/64", 100, "aggregate"), bm("BM_Y/1024", 5)]}
        self.assertEqual(ab.micro_gbps(data), {"BM_X/64": 2.0, "BM_Y/1024": 5.0})


@unittest.skipUnless(os.access(BIN / "upcase-server", os.X_OK), f"no upcase-server in {BIN}")
class RealRunsTest(unittest.TestCase):
    def test_two_interleaved_rounds(self):
        with tempfile.TemporaryDirectory(prefix="regress-ab-test-") as tmp:
            out = pathlib.Path(tmp)
            bench = BIN / "uppercase_bench"
            micro = os.access(bench, os.X_OK)  # not built by the sanitizer presets
            other = ab.compose_bin_dir(out / "bin-a", BIN, BIN)
            plan = ab.make_plan("default", ["epoll"], micro=micro)
            server_cpu, load_cpu, _ = procfs.cpus_for_runs()
            self.assertEqual([p.key for p in plan.points],
                             ["tcp-64B-c64-closed", "udp-64B-c64-closed"])
            settings = ab.Settings(rounds=2, duration=0.2, warmup=0.1, probe_duration=0.2,
                                   probe_warmup=0.1, server_cpu=server_cpu, load_cpu=load_cpu,
                                   server_placement=True)
            lines = []
            processes.install_cleanup()
            m = ab.Measurement(plan, {"base": other, "candidate": BIN},
                               {"base": bench, "candidate": bench}, settings, counters.Tools.probe(),
                               out, log=lines.append)
            metrics = m.run()
            self.assertEqual(m.failures, [])
            cpu = metrics["cpu_us_per_req/epoll/tcp-64B-c64"]
            self.assertTrue(all(v and v > 0 for v in cpu.base + cpu.candidate), cpu)
            self.assertEqual(cpu.first, ["base", "candidate"])  # the order alternates
            self.assertEqual(metrics["rps/epoll/udp-64B-c64"].first, ["candidate", "base"])
            self.assertTrue(all(v > 0 for v in metrics["rps/epoll/udp-64B-c64"].base))
            if plan.probes:
                sc = metrics.get("syscalls_per_req/epoll/tcp-64B-c64")
                if sc:  # perf or strace usable here
                    self.assertTrue(all(1 < v < 10 for v in sc.base + sc.candidate), sc)
            if micro:
                g = metrics["gbps/BM_UppercaseInPlace/64"]
                self.assertTrue(all(v > 0 for v in g.base + g.candidate))
            # Closed-loop runs every round; probes and uppercase_bench every other round; and
            # again the pairs whose runs reported host.noisy (another job on this machine).
            again = len(m.remeasured)
            self.assertTrue(all(x["host_noisy"] for x in m.remeasured), m.remeasured)
            self.assertLessEqual(again, ab.REMEASURE_ATTEMPTS * 2 * len(plan.points))
            self.assertEqual(m.done, 2 * (2 * len(plan.points) + len(plan.probes) + micro + again))
            self.assertEqual(len(list((out / "base" / "runs").glob("*.json"))),
                             2 * len(plan.points) + len(plan.probes) + again)
            self.assertTrue(any(line.startswith("[1/") and "] base " in line for line in lines))
            self.assertTrue(any("] candidate " in line for line in lines))
            # Both sides' commands are recorded, the base's server from its own folder.
            self.assertIn(str(other / "upcase-server"), m.commands["base"]["run"]["server"])
            # upcase-load is told the server's PID and CPUs, for its host figures.
            self.assertIn("--server-pid=", m.commands["candidate"]["run"]["load"])
            self.assertTrue(math.isfinite(sum(cpu.base)))


if __name__ == "__main__":
    unittest.main()
