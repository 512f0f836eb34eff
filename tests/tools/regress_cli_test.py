"""tools/regress's A/B mode end to end with the measurement replaced by synthetic samples
(UPCASE_REGRESS_FAKE_SAMPLES): exit status 0 / 1 / 2, report.md and regress.json; plus the
errors that stop it before measuring (no such base, bad flags). Only reads this repository.

    /usr/bin/python3 tests/tools/regress_cli_test.py
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
REGRESS = ROOT / "tools" / "regress"


def series(rng, n, value, shift=0.0, noise=0.003):
    base = [value * math.exp(rng.gauss(0, noise)) for _ in range(n)]
    cand = [b * (1 + shift) * math.exp(rng.gauss(0, noise)) for b in base]
    return base, cand


def metric(name, family, base, cand):
    return {"name": name, "family": family, "label": name, "base": base, "candidate": cand}


class CliTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="regress-cli-test-")
        self.dir = pathlib.Path(self.tmp.name)
        self.rng = random.Random(7)

    def tearDown(self):
        self.tmp.cleanup()

    def run_regress(self, *args, metrics=None, failures=(), fake=True):
        env = dict(os.environ)
        if fake:
            path = self.dir / "samples.json"
            path.write_text(json.dumps({"metrics": metrics or [], "failures": list(failures)}))
            env["UPCASE_REGRESS_FAKE_SAMPLES"] = str(path)
        r = subprocess.run([str(REGRESS), "--base=HEAD", "--out", str(self.dir / "out"), *args],
                           capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
        return r

    def steady_metrics(self, cpu_shift=0.0, rps_shift=0.0, gbps_shift=0.0):
        out = []
        for b in ("threads", "epoll", "uring"):
            out.append(metric(f"cpu_us_per_req/{b}/tcp-64B-c64", "cpu_us_per_req",
                              *series(self.rng, 12, 5.0, cpu_shift if b == "epoll" else 0.0)))
            out.append(metric(f"rps/{b}/tcp-64B-c64", "rps",
                              *series(self.rng, 12, 2e5, rps_shift if b == "epoll" else 0.0)))
        out.append(metric("gbps/BM_Uppercase/avx2/1024", "gbps",
                          *series(self.rng, 12, 90.0, gbps_shift)))
        return out

    def test_no_change_passes(self):
        r = self.run_regress(metrics=self.steady_metrics())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("PASS", r.stdout)
        data = json.loads((self.dir / "out" / "regress.json").read_text())
        self.assertEqual(data["exit_status"], 0)
        self.assertEqual(data["verdicts"]["same"], 7)

    def test_a_regression_exits_1_and_is_reported(self):
        metrics = self.steady_metrics(cpu_shift=0.06)
        r = self.run_regress(metrics=metrics)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        report = (self.dir / "out" / "report.md").read_text()
        self.assertIn("| cpu_us_per_req/epoll/tcp-64B-c64 |", report)
        row = next(line for line in report.splitlines()
                   if line.startswith("| cpu_us_per_req/epoll/"))
        self.assertIn("**regressed**", row)
        self.assertIn("+6.", row)
        self.assertIn("1 regressed", report)
        self.assertIn(report.strip().splitlines()[0], r.stdout)  # printed as well
        data = json.loads((self.dir / "out" / "regress.json").read_text())
        self.assertEqual(data["exit_status"], 1)
        m = next(x for x in data["metrics"] if x["name"] == "cpu_us_per_req/epoll/tcp-64B-c64")
        self.assertEqual(m["verdict"], "regressed")
        self.assertEqual(m["base"], metrics[2]["base"])  # every sample of both sides
        self.assertEqual(m["candidate"], metrics[2]["candidate"])
        self.assertGreater(m["interval"][0], 0.02)
        for key in ("base", "candidate", "machine", "command", "tolerances", "alpha_side"):
            self.assertIn(key, data)
        self.assertEqual(len(data["base"]["rev"]), 40)
        # Only that metric: the others stay same.
        self.assertEqual(data["verdicts"], {"regressed": 1, "improved": 0, "same": 6,
                                            "inconclusive": 0})

    def test_lower_throughput_is_a_regression_higher_is_not(self):
        self.assertEqual(self.run_regress(metrics=self.steady_metrics(rps_shift=-0.10))
                         .returncode, 1)
        r = self.run_regress(metrics=self.steady_metrics(rps_shift=0.10, gbps_shift=0.10))
        self.assertEqual(r.returncode, 0, r.stdout)
        data = json.loads((self.dir / "out" / "regress.json").read_text())
        self.assertEqual(data["verdicts"]["improved"], 2)

    def test_tolerance_flag_changes_the_verdict(self):
        metrics = self.steady_metrics(cpu_shift=0.06)
        r = self.run_regress("--tolerance", "cpu_us_per_req=0.10", metrics=metrics)
        self.assertEqual(r.returncode, 0, r.stdout)

    def test_too_noisy_is_inconclusive_and_passes(self):
        base = [5.0] * 12
        cand = [5.0 * (1 + 0.03 * (r % 5 - 2)) for r in range(12)]  # -6 % .. +6 %, centred on 0
        r = self.run_regress(metrics=[metric("cpu_us_per_req/epoll/tcp-64B-c64",
                                             "cpu_us_per_req", base, cand)])
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertRegex(r.stdout, r"inconclusive \(~\d+ more rounds\)")

    def test_could_not_measure_exits_2(self):
        r = self.run_regress(metrics=self.steady_metrics(),
                             failures=["candidate: backend uring did not start: boom"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("uring did not start", r.stderr)
        self.assertIn("Could not measure everything",
                      (self.dir / "out" / "report.md").read_text())
        self.assertEqual(self.run_regress(metrics=[]).returncode, 2)  # nothing judged

    def test_a_regression_outranks_a_failure(self):
        r = self.run_regress(metrics=self.steady_metrics(cpu_shift=0.06),
                             failures=["base: a run failed"])
        self.assertEqual(r.returncode, 1)

    def test_unknown_base_exits_2_with_one_line(self):
        env = dict(os.environ)
        env.pop("UPCASE_REGRESS_FAKE_SAMPLES", None)
        r = subprocess.run([str(REGRESS), "--base=no-such-rev-xyz", "--out",
                            str(self.dir / "out")], capture_output=True, text=True, timeout=60,
                           env=env, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.strip().splitlines(),
                         ["tools/regress: base 'no-such-rev-xyz' is not a commit in this "
                          "repository (fetch it, or pass another --base)"])

    def test_a_lower_knee_or_capacity_is_a_regression(self):
        # --curve's figures: the peak (rps) unchanged, the capacity at the objective 8 % lower.
        metrics = self.steady_metrics()
        metrics.append(metric("capacity_rps/epoll/tcp-64B-c64/p99:1ms", "capacity_rps",
                              *series(self.rng, 12, 1.5e5, -0.08, noise=0.01)))
        metrics.append(metric("knee_rps/epoll/tcp-64B-c64", "knee_rps",
                              *series(self.rng, 12, 1.6e5, 0.0, noise=0.01)))
        r = self.run_regress(metrics=metrics)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        data = json.loads((self.dir / "out" / "regress.json").read_text())
        verdict = {m["name"]: m["verdict"] for m in data["metrics"]}
        self.assertEqual(verdict["capacity_rps/epoll/tcp-64B-c64/p99:1ms"], "regressed")
        self.assertEqual(verdict["knee_rps/epoll/tcp-64B-c64"], "same")
        self.assertIn("capacity_rps", data["tolerances"])

    def test_bad_flags_exit_2(self):
        for args in (["--tolerance", "nonsense=0.1"], ["--rounds", "0"], ["--alpha", "2"],
                     ["--curve=udp:64B"], ["--slo=p99:fast"], ["--slo=p42:1ms"],
                     ["--curve", "--against-baseline"],
                     ["--base-server-arg=--uring-levers=none", "--against-baseline"]):
            r = self.run_regress(*args, metrics=self.steady_metrics())
            self.assertEqual(r.returncode, 2, args)
            # the last line says what is wrong with which flag
            flag = next(a for a in args if a.startswith("--")).split("=")[0]
            self.assertIn(flag, r.stderr.strip().splitlines()[-1], r.stderr)

    def test_help(self):
        r = subprocess.run([str(REGRESS), "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0)
        for word in ("--base", "--against-baseline", "--update-baseline", "Exit status",
                     "--curve", "--slo", "--base-server-arg"):
            self.assertIn(word, r.stdout)


if __name__ == "__main__":
    unittest.main()
