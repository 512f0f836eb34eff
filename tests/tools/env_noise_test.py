"""The tools' side of host noise (issue 23) on synthetic inputs: the fingerprint comparison that
refuses an A/B whose sides ran in different environments (tools/upcase/fingerprint.py), the
choice of pairs tools/regress measures again when a run reported `host.noisy`, and the
"inconclusive: host noise" verdict (tools/upcase/regress/verdicts.py), also end to end through
tools/regress with synthetic samples; and `tools/compare --check-env` against the real
upcase-load of $UPCASE_BIN (exit 0, the advice lines).

    UPCASE_BIN=build/release/bin /usr/bin/python3 tests/tools/env_noise_test.py
"""
import json
import math
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from upcase import fingerprint, points  # noqa: E402
from upcase.regress import ab, stats, verdicts  # noqa: E402

BIN = pathlib.Path(os.environ.get("UPCASE_BIN", ROOT / "build" / "release" / "bin"))

ENV = {"kernel": "6.1.0-28-cloud-amd64", "cpu_model": "AMD EPYC", "virtualization": "kvm",
       "clocksource": "tsc", "scaling_driver": None, "scaling_governor": None, "boost": None,
       "smt": "notsupported", "mitigations": {"spectre_v2": "Mitigation: Retpolines"},
       "isolcpus": False, "nohz_full": False, "irqbalance": False, "io_uring": True,
       "io_uring_ops": ["nop", "readv"], "io_uring_disabled": 0, "liburing": "2.3",
       "rmem_max": 212992, "transparent_hugepage": "madvise"}


class FingerprintTest(unittest.TestCase):
    def test_equal_fingerprints_are_accepted(self):
        self.assertEqual(fingerprint.differences(ENV, dict(ENV)), [])
        self.assertIsNone(fingerprint.refusal(ENV, dict(ENV)))

    def test_build_time_and_momentary_keys_do_not_refuse(self):
        other = dict(ENV, liburing="2.5", irqbalance=True, rmem_max=4194304)
        self.assertIsNone(fingerprint.refusal(ENV, other))

    def test_a_measurement_key_that_differs_is_refused_in_one_line(self):
        for key, value in (("kernel", "6.12.0"), ("scaling_governor", "performance"),
                           ("smt", "on"), ("io_uring", False),
                           ("mitigations", {"spectre_v2": "Vulnerable"})):
            why = fingerprint.refusal(ENV, dict(ENV, **{key: value}))
            self.assertIsNotNone(why, key)
            self.assertNotIn("\n", why)
            self.assertIn(key, why)
        why = fingerprint.refusal(ENV, dict(ENV, kernel="6.12.0", smt="on"))
        self.assertIn("kernel", why)
        self.assertIn("smt", why)
        self.assertNotIn("cpu_model", why)

    def test_an_unknown_fingerprint_is_not_refused(self):
        self.assertIsNone(fingerprint.refusal(None, ENV))
        self.assertIsNone(fingerprint.refusal(ENV, None))


class RefusalCliTest(unittest.TestCase):
    """tools/regress with synthetic samples and fingerprints: refused before judging when the
    sides' environments differ, judged (and `env` in regress.json) when they agree."""

    def run_regress(self, tmp, env):
        path = pathlib.Path(tmp) / "samples.json"
        path.write_text(json.dumps({"env": env, "metrics": [{
            "name": "rps/epoll/tcp-64B-c64", "family": "rps",
            "base": [1e5 + i for i in range(12)], "candidate": [1e5 + 2 * i for i in range(12)]}]}))
        return subprocess.run([str(ROOT / "tools" / "regress"), "--base=HEAD", "--out",
                               f"{tmp}/out"], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, UPCASE_REGRESS_FAKE_SAMPLES=str(path)),
                              stdin=subprocess.DEVNULL)

    def test_different_kernels_are_refused_in_one_line(self):
        with tempfile.TemporaryDirectory(prefix="env-noise-test-") as tmp:
            r = self.run_regress(tmp, {"base": ENV, "candidate": dict(ENV, kernel="6.12.0")})
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, r.stderr)
            self.assertIn("kernel", lines[0])
            self.assertFalse((pathlib.Path(tmp) / "out" / "regress.json").exists())

    def test_equal_fingerprints_are_judged_and_recorded(self):
        with tempfile.TemporaryDirectory(prefix="env-noise-test-") as tmp:
            r = self.run_regress(tmp, {"base": ENV, "candidate": dict(ENV, liburing="2.5")})
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            data = json.loads((pathlib.Path(tmp) / "out" / "regress.json").read_text())
            self.assertEqual(data["env"]["base"]["kernel"], ENV["kernel"])
            self.assertEqual(data["env"]["candidate"]["liburing"], "2.5")


class NoisyMeasurement(ab.Measurement):
    """Pairs from a script: script[(item, round)] is a list of (base, candidate, noisy), one
    per time the pair is measured; the load generators' gauges stay equal (never disturbed)."""

    def __init__(self, script, rounds):
        plan = ab.Plan([points.Point("epoll", "tcp", 64, 64),
                        points.Point("uring", "tcp", 64, 64)], [], False)
        super().__init__(plan, {}, {}, ab.Settings(rounds=rounds), None, pathlib.Path("/"),
                         log=lambda _: None)
        self.script = {k: list(v) for k, v in script.items()}
        self.measured = []

    def _pair(self, i, r):
        self.noisy.discard((i, r))
        self.measured.append((i, r))
        a, b, noisy = self.script[(i, r)].pop(0)
        self.client[(i, r)] = {"base": 1.0, "candidate": 1.0}
        if noisy:
            self.noisy.add((i, r))
        name = f"cpu_us_per_req/{i}"
        self._record(i, name, "cpu_us_per_req", name, "base", r, a, "base")
        self._record(i, name, "cpu_us_per_req", name, "candidate", r, b, "base")


class RemeasureNoisyTest(unittest.TestCase):
    def run_all(self, script, rounds):
        m = NoisyMeasurement(script, rounds)
        for r in range(rounds):
            for i in range(2):
                m._pair(i, r)
        m._remeasure()
        return m

    def test_a_noisy_pair_is_measured_again_until_quiet(self):
        script = {(i, r): [(1.0, 1.0, False)] for i in range(2) for r in range(10)}
        script[(0, 3)] = [(1.0, 1.4, True), (1.0, 1.01, False)]
        m = self.run_all(script, 10)
        self.assertEqual(m.measured[20:], [(0, 3)])
        self.assertEqual(m.metrics["cpu_us_per_req/0"].candidate[3], 1.01)
        self.assertTrue(m.remeasured[0]["host_noisy"])
        self.assertFalse(any(m.metrics["cpu_us_per_req/0"].noisy))
        self.assertEqual(m.excluded, [])

    def test_a_pair_that_stays_noisy_is_bounded_kept_and_marked(self):
        script = {(i, r): [(1.0, 1.0, False)] for i in range(2) for r in range(10)}
        script[(1, 6)] = [(1.0, 1.3, True)] * (ab.REMEASURE_ATTEMPTS + 1)
        m = self.run_all(script, 10)
        self.assertEqual(m.measured[20:], [(1, 6)] * ab.REMEASURE_ATTEMPTS)
        metric = m.metrics["cpu_us_per_req/1"]
        self.assertEqual([r for r, x in enumerate(metric.noisy) if x], [6])
        self.assertEqual(metric.candidate[6], 1.3)   # kept: the verdict decides
        self.assertEqual(m.excluded, [])

    def test_quiet_runs_are_not_measured_again(self):
        script = {(i, r): [(1.0, 1.0 + 0.001 * r, False)] for i in range(2) for r in range(8)}
        m = self.run_all(script, 8)
        self.assertEqual(len(m.measured), 16)


def series(rng, n, noise):
    base = [5.0 * math.exp(rng.gauss(0, 0.002)) for _ in range(n)]
    return base, [b * math.exp(rng.gauss(0, noise)) for b in base]


def judged(noise, noisy_rounds, n=16, seed=3):
    base, cand = series(random.Random(seed), n, noise)
    m = ab.Metric("cpu_us_per_req/epoll/tcp-64B-c64", "cpu_us_per_req", "epoll CPU", base, cand,
                  ["base"] * n, [r in noisy_rounds for r in range(n)])
    rows, alpha_side = verdicts.judge([m], {}, 0.05)
    return rows[0], alpha_side


class HostNoiseVerdictTest(unittest.TestCase):
    def test_noisy_rounds_and_a_floor_above_the_tolerance_give_no_verdict(self):
        row, alpha_side = judged(0.08, {2, 5})
        self.assertTrue(row.host_noise)
        self.assertGreater(row.noise_floor, row.tolerance)
        self.assertEqual(verdicts.verdict_text(row, alpha_side), "inconclusive: host noise")
        self.assertEqual(verdicts.rows_json([row])[0]["verdict"], "inconclusive: host noise")
        self.assertEqual(verdicts.rows_json([row])[0]["host_noisy_rounds"], 2)
        self.assertEqual(verdicts.counts([row])[stats.INCONCLUSIVE], 1)

    def test_the_same_scatter_without_host_noise_is_an_ordinary_verdict(self):
        row, alpha_side = judged(0.08, set())
        self.assertFalse(row.host_noise)
        self.assertNotIn("host noise", verdicts.verdict_text(row, alpha_side))

    def test_noisy_rounds_under_the_tolerance_keep_their_verdict(self):
        row, alpha_side = judged(0.002, {4})
        self.assertFalse(row.host_noise)
        self.assertLess(row.noise_floor, row.tolerance)
        self.assertEqual(verdicts.verdict_text(row, alpha_side), stats.SAME)

    def test_regress_end_to_end_says_inconclusive_host_noise(self):
        base, cand = series(random.Random(5), 14, 0.08)
        noisy = [r in (1, 9) for r in range(14)]
        samples = {"metrics": [{"name": "cpu_us_per_req/epoll/tcp-64B-c64",
                                "family": "cpu_us_per_req", "base": base, "candidate": cand,
                                "noisy": noisy}]}
        with tempfile.TemporaryDirectory(prefix="env-noise-test-") as tmp:
            path = pathlib.Path(tmp) / "samples.json"
            path.write_text(json.dumps(samples))
            r = subprocess.run([str(ROOT / "tools" / "regress"), "--base=HEAD", "--out",
                                f"{tmp}/out"], capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, UPCASE_REGRESS_FAKE_SAMPLES=str(path)),
                               stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("inconclusive: host noise", (pathlib.Path(tmp) / "out" /
                                                       "report.md").read_text())
            data = json.loads((pathlib.Path(tmp) / "out" / "regress.json").read_text())
            self.assertEqual(data["metrics"][0]["verdict"], "inconclusive: host noise")


class CheckEnvTest(unittest.TestCase):
    def test_check_env_exits_0_and_prints_upcase_load_env_check(self):
        r = subprocess.run([str(ROOT / "tools" / "compare"), "--check-env"], capture_output=True,
                           text=True, timeout=60, env=dict(os.environ, UPCASE_BIN=str(BIN)),
                           stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertTrue(lines, "no lines")
        self.assertTrue(lines[0].startswith("upcase-load env --check:"), lines[0])
        direct = subprocess.run([str(BIN / "upcase-load"), "env", "--check"], capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(r.stdout, direct.stdout)

    def test_the_fingerprint_is_upcase_loads_json(self):
        env = fingerprint.load_env(BIN)
        for key in ("kernel", "cpu_model", "io_uring", "mitigations"):
            self.assertIn(key, env)


if __name__ == "__main__":
    unittest.main()
