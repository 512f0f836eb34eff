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

from upcase import counters, curve, points, processes, procfs  # noqa: E402
from upcase.regress import ab, curve_ab  # noqa: E402

BIN = pathlib.Path(os.environ.get("UPCASE_BIN", ROOT / "build" / "release" / "bin"))


class BaseServerArgsTest(unittest.TestCase):
    def test_only_the_base_side_gets_them(self):
        plan = ab.Plan([points.Point("uring", "tcp", 64, 64)], [], False)
        settings = ab.Settings(rounds=1, server_args=("--idle-timeout=0",),
                               base_server_args=("--uring-levers=none",))
        m = ab.Measurement(plan, {"base": pathlib.Path("/b"), "candidate": pathlib.Path("/c")},
                           {}, settings, None, pathlib.Path("/"), log=lambda _: None)
        self.assertEqual(m._settings("base", False).server_args,
                         ("--idle-timeout=0", "--uring-levers=none"))
        self.assertEqual(m._settings("candidate", True).server_args, ("--idle-timeout=0",))


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


def synthetic_server(capacity, knee_at=0.9, fast_us=100.0, slow_us=5000.0):
    """run(point) of a server that achieves min(rate, capacity) with p99 fast_us below knee_at x
    capacity, slow_us above; closed loop reports `capacity`."""
    calls = []

    def run(p):
        calls.append(p)
        rate = p.rate
        rps = capacity if rate == 0 else min(rate, capacity)
        p99 = fast_us if rate < knee_at * capacity else slow_us
        return {"ok": True, "point": p.record(),
                "load": {"throughput_rps": rps, "latency_us": {"p50": 30.0, "p99": p99},
                         "client_cpu_s": 0.1, "duration_s": 1.0},
                "server": {"utime_s": 0.1, "stime_s": 0.2, "wall_s": 1.0,
                           "ctx_switches": {"total": 10}, "requests_served": rps}}
    return run, calls


class CurveTest(unittest.TestCase):
    SLO = curve.parse_slo("p99:1ms")

    def test_knee_and_capacity_of_a_synthetic_server(self):
        run, calls = synthetic_server(100_000)
        res = curve_ab.measure_curve(run, "epoll", ("tcp", 64, 64), [self.SLO])
        self.assertIsNone(res.error)
        self.assertEqual(res.own_max, 100_000)
        # The latency step is at 90 000 req/s: the capacity is bisected until the bracket is
        # within curve.SLO_TOLERANCE of the rate, below the step and close to it.
        cap = res.capacities["p99:1ms"]
        self.assertLess(cap, 90_000)
        self.assertGreater(cap, 90_000 * (1 - curve.SLO_TOLERANCE) - 1)
        # The knee (p99 > 10 x light-load p50) is refined between the same two sweep rates.
        self.assertLess(res.knee_rps, 90_000)
        self.assertGreaterEqual(res.knee_rps, 80_000)
        self.assertEqual(calls[0].rate, 0)   # the own maximum first
        self.assertEqual([c.rate for c in calls[1:5]],
                         [round(f * 100_000) for f in curve_ab.CURVE_FRACTIONS])
        self.assertLessEqual(len(calls), curve_ab.CURVE_RUNS + curve_ab.SLO_STEPS)

    def test_a_slower_knee_is_a_lower_metric(self):
        fast = curve_ab.measure_curve(synthetic_server(100_000, 0.9)[0], "epoll",
                                      ("tcp", 64, 64), [self.SLO])
        slow = curve_ab.measure_curve(synthetic_server(100_000, 0.7)[0], "epoll",
                                      ("tcp", 64, 64), [self.SLO])
        self.assertEqual(fast.own_max, slow.own_max)   # the same peak ...
        self.assertLess(slow.capacities["p99:1ms"], 0.8 * fast.capacities["p99:1ms"])
        self.assertLess(slow.knee_rps, fast.knee_rps)   # ... a lower knee and capacity

    def test_missing_figures_are_none_not_zero(self):
        res = curve_ab.measure_curve(synthetic_server(100_000, 0.0)[0], "epoll",
                                     ("tcp", 64, 64), [self.SLO])
        self.assertIsNone(res.capacities["p99:1ms"])   # the lightest load misses it
        failed = curve_ab.measure_curve(lambda p: None, "epoll", ("tcp", 64, 64), [self.SLO])
        self.assertEqual(failed.error, "no closed-loop maximum")

    def test_plan_has_no_curve_for_iterative(self):
        plan = ab.make_plan("default", ["iterative", "epoll"], micro=False, probes=False,
                            curve=("tcp", 64, 64))
        self.assertEqual([(p.backend, p.key) for p in plan.curves],
                         [("epoll", "tcp-64B-c64-closed")])
        self.assertEqual([i.kind for i in plan.items].count("curve"), 1)


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

    def test_one_round_of_curves(self):
        with tempfile.TemporaryDirectory(prefix="regress-ab-curve-") as tmp:
            out = pathlib.Path(tmp)
            other = ab.compose_bin_dir(out / "bin-a", BIN, BIN)
            plan = ab.make_plan("default", ["epoll"], micro=False, probes=False,
                                curve=("tcp", 64, 16))
            plan.points = []
            server_cpu, load_cpu, _ = procfs.cpus_for_runs()
            slo = curve.parse_slo("p99:20ms")
            settings = ab.Settings(rounds=1, duration=0.2, warmup=0.1, server_cpu=server_cpu,
                                   load_cpu=load_cpu, curve=("tcp", 64, 16), slos=(slo,))
            processes.install_cleanup()
            m = ab.Measurement(plan, {"base": other, "candidate": BIN}, {}, settings,
                               counters.Tools.probe(), out, log=lambda _: None)
            metrics = m.run()
            self.assertEqual(m.failures, [])
            cap = metrics["capacity_rps/epoll/tcp-64B-c16/p99:20ms"]
            knee = metrics["knee_rps/epoll/tcp-64B-c16"]
            self.assertEqual(cap.first, ["base"])
            # Both sides measured (a figure is None when it does not exist in that round: on a
            # machine busy with other tests even half the own maximum may miss the objective).
            self.assertEqual((len(cap.base), len(cap.candidate), len(knee.base)), (1, 1, 1))
            self.assertTrue(all(v is None or v > 0 for v in cap.base + cap.candidate), cap)
            self.assertTrue(all(v is None or v > 0 for v in knee.base + knee.candidate), knee)
            runs = list((out / "candidate" / "runs").glob("*.json"))
            self.assertGreaterEqual(len(runs), curve_ab.CURVE_RUNS - curve_ab.KNEE_REFINEMENTS)
            self.assertIn("--rate", m.commands["candidate"]["curve"]["load"])


if __name__ == "__main__":
    unittest.main()
