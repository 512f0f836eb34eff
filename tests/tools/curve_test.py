"""Unit tests of tools/upcase/curve.py on synthetic runs: the flags (--curve, --slo), the sweep's
fractions, the validity rules (server behind, generator busy, host noise), the knee finder, the
capacity bisection and its stopping rule (a backend that never meets the objective, one whose
light-load tail is already above it), and summary.json's `curves` from saved run records. No
server or load generator runs.

    /usr/bin/python3 tests/tools/curve_test.py
"""
import argparse
import pathlib
import sys
import unittest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

from upcase import curve  # noqa: E402
from upcase import plan, report, summary  # noqa: E402
from upcase.errors import ToolExit  # noqa: E402


def model(rate: float, capacity: float, base_us: float = 30.0) -> dict:
    """One run's metrics of a modelled server: an M/M/1-like tail that climbs towards its
    capacity, achieved = min(offered, capacity)."""
    rho = min(rate / capacity, 0.999)
    p50 = base_us / (1 - rho)
    return {"rps": min(rate, capacity), "offered_rps": rate, "p50": p50, "p99": p50 * 4.6,
            "p999": p50 * 6.9, "valid": True, "reasons": []}


def measurer(capacity: float, base_us: float = 30.0, calls: list | None = None):
    def measure(rate: float) -> curve.Sample:
        if calls is not None:
            calls.append(rate)
        return curve.Sample(rate, [model(rate, capacity, base_us) for _ in range(3)], "slo")
    return measure


def sweep(own: float, capacity: float, base_us: float = 30.0) -> list[curve.Sample]:
    m = measurer(capacity, base_us)
    return [m(own * f) for f in curve.sweep_fractions(6, 0.1, 1.2)]


class Flags(unittest.TestCase):
    def test_slo(self):
        s = curve.parse_slo("p99:1ms")
        self.assertEqual((s.percentile, s.limit_us), ("p99", 1000.0))
        self.assertEqual(curve.parse_slo("p99.9:500us").percentile, "p999")
        self.assertEqual(curve.parse_slo("p50:0.002s").limit_us, 2000.0)
        for bad in ("p99", "p98:1ms", "p99:0ms", "p99:1h", "x:1ms", "p99:-1ms"):
            with self.assertRaises(ValueError, msg=bad):
                curve.parse_slo(bad)

    def test_curve(self):
        self.assertEqual(curve.parse_curve("tcp:64B:c64"), ("tcp", 64, 64))
        self.assertEqual(curve.parse_curve("udp:1K:c8"), ("udp", 1024, 8))
        for bad in ("tcp:64B", "sctp:64B:c1", "tcp:64B:c0", "tcp:B:c1"):
            with self.assertRaises(ValueError, msg=bad):
                curve.parse_curve(bad)

    def test_sweep_fractions(self):
        for n, lo, hi, _ in curve.CURVE_SHAPES.values():
            f = curve.sweep_fractions(n, lo, hi)
            self.assertEqual(len(f), n)
            self.assertIn(0.5, f)
            self.assertEqual(f, sorted(f))
            self.assertAlmostEqual(f[0], lo)
            self.assertGreater(f[-1], 1.0)  # past saturation

    def test_choose_matrix(self):
        def args(**kw):
            base = dict(quick=False, full=False, duration=None, warmup=None, sizes=None,
                        connections=None, protos=None, shards=None, repeat=None,
                        copy_bins=False, remote_bin=None, curve=None, slo=[])
            return argparse.Namespace(**(base | kw))
        c = plan.choose_matrix(args(slo=["p99:1ms", "p99.9:2ms", "p99:1ms"]))
        self.assertEqual(c.curve, ("tcp", 64, 64))
        self.assertEqual([s.text for s in c.slos], ["p99:1ms", "p99.9:2ms"])
        self.assertEqual(c.shape, curve.CURVE_SHAPES["default"])
        c = plan.choose_matrix(args(quick=True, curve="tcp:1K:c16"))
        self.assertEqual(c.curve, ("tcp", 1024, 16))
        self.assertIn(("tcp", 1024, 16), c.closed)  # its maximum is measured
        for bad in (dict(curve="udp:4B:c8"), dict(slo=["p99"]), dict(curve="tcp")):
            with self.assertRaises(ToolExit, msg=str(bad)):
                plan.choose_matrix(args(**bad))


class Validity(unittest.TestCase):
    REC = {"load": {"client_busy": 0.4}, "placement": {"server_cpus": [0], "load_cpus": [1]}}

    def check(self, rec, m, *expect):
        ok, reasons = curve.run_validity(rec, m)
        self.assertEqual(ok, not expect, reasons)
        for e in expect:
            self.assertTrue(any(e in r for r in reasons), (e, reasons))

    def test_rules(self):
        good = {"rps": 9800.0, "offered_rps": 10000.0, "p99": 200.0}
        self.check(self.REC, good)
        self.check(self.REC, dict(good, rps=9600.0), "achieved 96.0 %")
        self.check(self.REC, dict(good, offered_rps=None, rps=1.0))  # closed loop: no ratio
        self.check({"load": {"client_busy": 0.95}}, good, "upcase-load 95 % busy")
        # Without client_busy: load_util over the load threads.
        self.check({"load": {}, "placement": {"load_threads": 2}}, dict(good, load_util=1.9),
                   "95 % busy")
        self.check({"load": {}, "placement": {"load_threads": 2}}, dict(good, load_util=1.5))

    def test_host(self):
        good = {"rps": 1000.0, "offered_rps": 1000.0, "p99": 200.0}
        host = {"noisy": False, "cpus": [{"cpu": 0, "steal_pct": 0.2, "irq_pct": 5,
                                          "foreign_pct": 0.5},
                                         {"cpu": 3, "steal_pct": 50, "foreign_pct": 50}],
                "hiccup_us": {"p50": 5, "p99": 20, "p999": 40, "max": 150, "count": 100}}
        rec = dict(self.REC, load={"client_busy": 0.1, "host": host})
        self.check(rec, good)  # CPU 3 is not involved; hiccups below p99
        host["cpus"][0]["steal_pct"] = 2.5
        self.check(rec, good, "steal 2.5 % on CPU 0")
        host["cpus"][0]["steal_pct"] = 0
        host["cpus"][0]["foreign_pct"] = 1.5
        self.check(rec, good, "foreign CPU 1.5 %")
        host["cpus"][0]["foreign_pct"] = 0
        host["hiccup_us"]["max"] = 900
        self.check(rec, good, "hiccup 900 us > p99 200 us")
        # Absent or malformed keys: no host verdict, no crash.
        for odd in ({}, {"cpus": None, "hiccup_us": None}, {"cpus": [{"cpu": 0}, 7]},
                    {"hiccup_us": {"max": "x"}}):
            self.check(dict(self.REC, load={"host": odd}), good)
        self.check(dict(self.REC, load={"host": "yes"}), good)


class Knee(unittest.TestCase):
    def test_latency_knee(self):
        # Capacity 100k: the p99 crosses 10 x light p50 where 4.6/(1-rho) > 10 x 30/(1-0.1)
        # ... i.e. rho above about 0.86: the knee is the sweep point below that.
        samples = sweep(100e3, 100e3)
        k = curve.find_knee(samples)
        self.assertIsNotNone(k["rps"])
        self.assertLess(k["rps"], k["first_past_rps"])
        self.assertLessEqual(k["rps"], 86e3)
        self.assertIn("light-load p50", k["reason"])

    def test_throughput_knee(self):
        # A flat tail: only achieved/offered marks the knee (at the own maximum).
        ss = [curve.Sample(r, [{"rps": min(r, 1000.0), "p50": 10.0, "p99": 20.0}])
              for r in (100.0, 500.0, 1000.0, 1200.0)]
        k = curve.find_knee(ss)
        self.assertEqual((k["rps"], k["first_past_rps"]), (1000.0, 1200.0))
        self.assertIn("achieved/offered", k["reason"])
        self.assertEqual(curve.knee_probe(ss), 1100.0)

    def test_no_knee(self):
        ss = [curve.Sample(r, [{"rps": r, "p50": 10.0, "p99": 20.0}]) for r in (1.0, 2.0)]
        k = curve.find_knee(ss)
        self.assertIsNone(k["rps"])
        self.assertIn("not reached", k["reason"])
        self.assertIsNone(curve.knee_probe(ss))
        ss[0].runs[0]["rps"] = 0.5  # already behind at the lightest load
        self.assertIn("lightest", curve.find_knee(ss)["reason"])
        self.assertEqual(curve.find_knee([])["rps"], None)

    def test_refinement_narrows(self):
        samples = sweep(100e3, 100e3)
        before = curve.find_knee(samples)
        m = measurer(100e3)
        for _ in range(3):
            samples.append(m(curve.knee_probe(samples)))
        after = curve.find_knee(samples)
        self.assertLess(after["first_past_rps"] - after["rps"],
                        before["first_past_rps"] - before["rps"])


class Capacity(unittest.TestCase):
    def test_bisection_within_tolerance(self):
        # p99 = 138/(1-rho) us <= 1000 us <=> rho <= 0.862: capacity 86.2k of 100k.
        slo = curve.parse_slo("p99:1ms")
        samples = sweep(100e3, 100e3)
        calls = []
        steps = curve.search_capacity(samples, slo, measurer(100e3, calls=calls))
        self.assertEqual(steps, len(calls))
        self.assertLessEqual(steps, curve.SLO_MAX_STEPS)
        lo, hi = curve.slo_bracket(samples, slo)
        self.assertLessEqual(hi - lo, curve.SLO_TOLERANCE * lo)
        true = 100e3 * (1 - 138.0 / 1000)
        self.assertLessEqual(lo, true)
        self.assertGreaterEqual(lo, true * (1 - curve.SLO_TOLERANCE))
        c = curve.capacity(samples, slo, 100e3)
        self.assertEqual(c["rps"], lo)
        self.assertAlmostEqual(c["vs_own_max"], lo / 100e3)
        self.assertEqual(c["achieved_rps_range"], [lo, lo])
        self.assertLessEqual(c["latency_us_range"][1], 1000)

    def test_stopping_rule(self):
        self.assertTrue(curve.bisect_done(None, 10.0, 0))
        self.assertTrue(curve.bisect_done(10.0, None, 0))
        self.assertTrue(curve.bisect_done(100.0, 102.0, 0))   # within 2 %
        self.assertFalse(curve.bisect_done(100.0, 102.5, 0))
        self.assertTrue(curve.bisect_done(100.0, 200.0, curve.SLO_MAX_STEPS))
        # The step bound holds when the bracket cannot close (a server whose tail is lost at
        # every rate above the lightest).
        flip = iter([True] + [False] * 50)

        def noisy(rate):
            ok = next(flip)
            return curve.Sample(rate, [{"rps": rate, "p99": 10.0 if ok else 1e6}])
        samples = [noisy(1.0), noisy(1e9)]
        steps = curve.search_capacity(samples, curve.parse_slo("p99:1ms"), noisy)
        self.assertEqual(steps, curve.SLO_MAX_STEPS)

    def test_never_meets(self):
        # Saturated from the start: nothing achieves 97 % of its offer.
        slo = curve.parse_slo("p99:1s")
        samples = [curve.Sample(r, [{"rps": r * 0.5, "p99": 10.0}]) for r in (10.0, 20.0)]
        calls = []
        self.assertEqual(curve.search_capacity(samples, slo, measurer(1, calls=calls)), 0)
        self.assertEqual(calls, [])
        c = curve.capacity(samples, slo, 40.0)
        self.assertIsNone(c["rps"])
        self.assertIn("none at this SLO", c["reason"])

    def test_light_load_tail_above(self):
        slo = curve.parse_slo("p99:50us")
        samples = sweep(100e3, 100e3)  # light-load p99 is about 153 us
        self.assertEqual(curve.search_capacity(samples, slo, measurer(100e3)), 0)
        c = curve.capacity(samples, slo, 100e3)
        self.assertIsNone(c["rps"])
        self.assertIn("lightest offered load already misses it (p99 153 us)", c["reason"])

    def test_vs_threads(self):
        caps = {"threads": [{"slo": "p99:1ms", "rps": 100.0}, {"slo": "p99:9us", "rps": None}],
                "epoll": [{"slo": "p99:1ms", "rps": 150.0}, {"slo": "p99:9us", "rps": 5.0}]}
        curve.add_vs_threads(caps)
        self.assertEqual(caps["epoll"][0]["vs_threads"], 1.5)
        self.assertIsNone(caps["epoll"][1]["vs_threads"])
        self.assertEqual(caps["threads"][0]["vs_threads"], 1.0)


def record(backend: str, rate: float, own: float, repeat: int, capacity: float) -> dict:
    """A saved run record of a curve point, as runner.py writes it."""
    m = model(rate, capacity)
    return {"ok": True, "file": f"runs/{backend}-{rate}-{repeat}.json", "repeat": repeat,
            "point": {"backend": backend, "proto": "tcp", "size": 64, "connections": 64,
                      "rate": rate, "label": curve.fraction_label(rate / own), "probe": False,
                      "shards": None, "role": "sweep", "mode": "open",
                      "key": f"tcp-64B-c64-open{curve.fraction_label(rate / own)[:-1]}"},
            "placement": {"server_cpus": [0], "load_cpus": [1], "load_threads": 1},
            "load": {"throughput_rps": m["rps"], "client_busy": 0.5,
                     "latency_us": {k: m[k] for k in ("p50", "p99", "p999")}},
            "server": {"utime_s": 0.1, "stime_s": 0.1, "wall_s": 2.0,
                       "requests_served": m["rps"] * 2,
                       "ctx_switches": {"total": 0, "source": "perf"}}}


class Summary(unittest.TestCase):
    def test_curves_from_runs(self):
        own = {"threads": 50e3, "epoll": 100e3}
        meta = {"curve": {"point": "tcp-64B-c64-closed", "own_max_rps": own,
                          "slos": [curve.parse_slo("p99:1ms").record(),
                                   curve.parse_slo("p99:10us").record()]}}
        runs = [record(b, round(own[b] * f), own[b], r, own[b])
                for b in own for f in curve.sweep_fractions(6, 0.1, 1.2) for r in range(3)]
        runs[0]["load"]["client_busy"] = 0.99   # one repeat of threads' lightest point
        runs[1]["load"]["client_busy"] = 0.99   # ... and a second: the point is not valid
        got = summary.summarize(meta, runs)["curves"]
        self.assertEqual(sorted(got), ["epoll", "threads"])
        for b, c in got.items():
            self.assertEqual(len(c["points"]), 6)
            self.assertTrue(all(isinstance(p["valid"], bool) for p in c["points"]))
            self.assertIsNotNone(c["knee"]["rps"])
            self.assertIsNotNone(c["p99_at_half_max"])
            ok, none = c["capacities"]
            self.assertIsNotNone(ok["rps"])
            self.assertIsNone(none["rps"])
            self.assertIn("none at this SLO", none["reason"])
            past = c["points"][-1]
            self.assertFalse(past["valid"])
            self.assertTrue(any("achieved" in r for r in past["reasons"]))
        light = got["threads"]["points"][0]
        self.assertEqual((light["valid"], light["valid_repeats"]), (False, 1))
        self.assertTrue(got["epoll"]["points"][0]["valid"])
        self.assertAlmostEqual(got["epoll"]["capacities"][0]["vs_threads"],
                               got["epoll"]["capacities"][0]["rps"]
                               / got["threads"]["capacities"][0]["rps"])
        self.assertEqual(summary.summarize({}, runs)["curves"], {})
        header, rows = report.curve_rows({"curves": got})
        self.assertEqual(header[-2:], ["capacity p99:1ms", "capacity p99:10us"])
        self.assertEqual([r[0] for r in rows], ["threads", "epoll"])
        self.assertEqual((rows[0][4], rows[1][4]), ("4/6", "5/6"))
        self.assertEqual(rows[1][-1], "none at this SLO")
        self.assertRegex(rows[1][-2], r"^\S+ \[\S+-\S+\] \(0\.\d\d of max, 2\.00x threads\)$")


if __name__ == "__main__":
    unittest.main()
