"""Unit tests of the comparison harness's pure logic on synthetic input: the report's medians and
ratios (tools/upcase_report.py), the regression check's ratios and tolerances
(tools/upcase_regress.py), and parsing of the tools' output. No server or load generator runs.

    /usr/bin/python3 tests/tools/harness_test.py
"""
import json
import pathlib
import sys
import tempfile
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

import upcase_harness  # noqa: E402
import upcase_regress  # noqa: E402
import upcase_report  # noqa: E402

# A made-up machine where requests cost these many server-CPU µs.
CPU_US = {"iterative": 9.0, "threads": 12.0, "epoll": 6.0, "uring": 4.0}
SYSCALLS = {"iterative": 2.0, "threads": 2.0, "epoll": 2.2, "uring": 0.3}


def synthetic_run(backend, proto="tcp", size=64, conns=64, rate=0.0, label="", repeat=0,
                  probe=False, rps=None):
    """One record shaped like upcase_harness.run_point's, with upcase-load's JSON keys."""
    point = upcase_harness.Point(backend, proto, size, conns, rate, label, probe)
    rps = rps or rate or 1e6 / CPU_US[backend] * (1 + 0.01 * repeat)
    served = rps * 2.0
    cpu = served * CPU_US[backend] / 1e6
    base = 20.0 * (1 + rate / 2e5) * (1.5 if backend == "threads" else 1)
    lat = {"p50": base, "p90": base * 2, "p99": base * 4, "p999": base * 8,
           "p9999": base * 16, "max": base * 30, "mean": base * 1.3}
    server = {"utime_s": cpu * 0.3, "stime_s": cpu * 0.7, "wall_s": 2.0,
              "threads_peak": conns + 2 if backend == "threads" else 2,
              "thread_names": {"upcase-server": 2},
              "ctx_switches": {"total": served * (2 if backend == "threads" else 0.1),
                               "source": "perf"},
              "requests_served": served, "stats": {}}
    if probe:
        server["syscalls"] = {"total": served * SYSCALLS[backend], "source": "perf",
                              "by_name": {"recvfrom": served, "sendto": served}}
    return {"point": dict(vars(point)) | {"key": point.key, "mode": point.mode},
            "ok": True, "server": server,
            "load": {"config": {}, "requests": served / 1.33, "throughput_rps": rps,
                     "bytes_per_s": rps * size, "latency_us": lat,
                     "latency_uncorrected_us": lat, "errors": {}, "mismatches": 0,
                     "udp": {"sent": 0, "received": 0, "lost": 0, "reordered": 0,
                             "duplicated": 0},
                     "client_cpu_s": 1.0}}


def synthetic_dir(d: pathlib.Path, backends=("iterative", "threads", "epoll", "uring")):
    (d / "runs").mkdir(parents=True)
    runs = []
    for b in backends:
        conns = (1,) if b == "iterative" else (1, 64, 512)
        for r in range(3):
            for size in (64, 16384):
                runs += [synthetic_run(b, size=size, conns=c, repeat=r) for c in conns]
            runs.append(synthetic_run(b, proto="udp", repeat=r))
            if b != "iterative":
                runs += [synthetic_run(b, rate=rate, label=lab, repeat=r)
                         for rate, lab in ((125e3, "50%"), (225e3, "90%"))]
        runs.append(synthetic_run(b, conns=1 if b == "iterative" else 64, probe=True))
    for i, rec in enumerate(runs):
        (d / "runs" / f"{i:03d}.json").write_text(json.dumps(rec))
    (d / "meta.json").write_text(json.dumps({
        "command": "tools/compare --synthetic", "date": "today", "git": "abc",
        "machine": {"nproc": 2, "kernel": "6.1", "cpu_model": "Test CPU", "memory": "1 GiB"},
        "settings": {"duration_s": 1.5, "warmup_s": 0.5, "repeat": 3, "server_cpu": 0,
                     "load_cpu": 1}, "notes": ["synthetic"]}))


class ReportTest(unittest.TestCase):
    def test_medians_and_ratios_against_threads(self):
        with tempfile.TemporaryDirectory() as tmp:
            synthetic_dir(pathlib.Path(tmp))
            meta, runs = upcase_report.load_dir(pathlib.Path(tmp))
            summary = upcase_report.summarize(meta, runs)
        index = {(p["backend"], p["key"]): p for p in summary["points"]}
        self.assertEqual(summary["backends"], ["iterative", "threads", "epoll", "uring"])
        epoll = index[("epoll", "tcp-64B-c64-closed")]
        self.assertEqual(epoll["repeats"], 3)
        self.assertAlmostEqual(epoll["metrics"]["cpu_us_per_req"], 6.0)
        self.assertAlmostEqual(epoll["metrics"]["rps"], 1e6 / 6 * 1.01)  # median of 3
        self.assertAlmostEqual(epoll["vs_threads"]["cpu_per_req"], 0.5)
        self.assertAlmostEqual(epoll["vs_threads"]["rps"], 2.0)
        self.assertAlmostEqual(epoll["metrics"]["syscalls_per_req"], 2.2)
        self.assertAlmostEqual(epoll["metrics"]["sys_share"], 0.7)
        self.assertNotIn("vs_threads", index[("threads", "tcp-64B-c64-closed")])
        self.assertIn(("uring", "tcp-64B-c64-open50"), index)

    def test_build_writes_report_and_plots(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = pathlib.Path(tmp)
            synthetic_dir(d)
            printed = []
            upcase_report.build(d, out=printed.append)
            for name in upcase_report.PLOTS + ("report.md", "summary.json"):
                self.assertGreater((d / name).stat().st_size, 1000, name)
            report = (d / "report.md").read_text()
            self.assertIn("tools/compare --synthetic", report)
            self.assertIn("### uring: where its cost goes", report)
            self.assertIn("perf stat", report)
            self.assertIn("== headline", "\n".join(printed))
            self.assertNotIn("every server also ran with", report)

    def test_report_names_extra_server_flags(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = pathlib.Path(tmp)
            synthetic_dir(d)
            meta = json.loads((d / "meta.json").read_text())
            meta["settings"]["server_args"] = ["--conn-buffer=1M"]
            (d / "meta.json").write_text(json.dumps(meta))
            upcase_report.build(d, out=lambda line: None)
            self.assertIn("every server also ran with `--conn-buffer=1M`",
                          (d / "report.md").read_text())


class RegressTest(unittest.TestCase):
    BASE = {"metrics": {
        "cpu_per_req.epoll/threads": {"value": 0.5, "better": "lower", "tolerance": 0.25},
        "kernel.swar/memcpy": {"value": 0.8, "better": "higher", "tolerance": 0.2},
        "syscalls_per_req.uring": {"value": 0.3, "better": "lower", "tolerance": 0.3,
                                   "abs_tolerance": 0.2},
    }}

    def verdicts(self, current):
        return {r.name: r.verdict for r in upcase_regress.compare(self.BASE, current)}

    def test_within_tolerance_passes(self):
        v = self.verdicts({"cpu_per_req.epoll/threads": 0.6, "kernel.swar/memcpy": 0.7,
                           "syscalls_per_req.uring": 0.55})
        self.assertEqual(set(v.values()), {"ok"})

    def test_worse_beyond_tolerance_regresses(self):
        v = self.verdicts({"cpu_per_req.epoll/threads": 0.63, "kernel.swar/memcpy": 0.6,
                           "syscalls_per_req.uring": 0.7})
        self.assertEqual(set(v.values()), {"REGRESSED"})

    def test_better_beyond_tolerance_is_reported_not_failed(self):
        v = self.verdicts({"cpu_per_req.epoll/threads": 0.2, "kernel.swar/memcpy": 1.2,
                           "syscalls_per_req.uring": 0.05})
        self.assertEqual(v["cpu_per_req.epoll/threads"], "improved")
        self.assertEqual(v["kernel.swar/memcpy"], "improved")
        self.assertEqual(v["syscalls_per_req.uring"], "ok")  # within the absolute slack

    def test_missing_metric_is_skipped(self):
        self.assertEqual(self.verdicts({})["kernel.swar/memcpy"], "missing")
        rows = upcase_regress.compare(self.BASE, {})
        self.assertFalse(upcase_regress.failed(rows))
        self.assertTrue(upcase_regress.failed(rows, strict=True))

    def test_macro_metrics_from_summary(self):
        with tempfile.TemporaryDirectory() as tmp:
            synthetic_dir(pathlib.Path(tmp))
            meta, runs = upcase_report.load_dir(pathlib.Path(tmp))
            summary = upcase_report.summarize(meta, runs)
        m = upcase_regress.macro_metrics(summary)
        self.assertAlmostEqual(m["cpu_per_req.tcp-64B-c64.epoll/threads"], 0.5)
        self.assertAlmostEqual(m["cpu_per_req.tcp-64B-c64.uring/epoll"], 4 / 6)
        self.assertAlmostEqual(m["syscalls_per_req.tcp-64B-c64.uring"], 0.3)

    def test_micro_metrics_from_google_benchmark_json(self):
        def bm(name, gbps):
            return {"name": name + "_median", "run_name": name, "aggregate_name": "median",
                    "run_type": "aggregate", "bytes_per_second": gbps * 1e9}
        data = {"benchmarks": [bm("BM_Memcpy/16384", 20), bm("BM_Uppercase/swar/16384", 5),
                               bm("BM_Uppercase/avx2/16384", 16),
                               bm("BM_UppercaseInPlace/16384", 15), bm("BM_Memcpy/64", 8), bm("BM_Uppercase/swar/64", 2),
                               bm("BM_UppercaseInPlace/64", 4)]}
        m = upcase_regress.micro_metrics(data)
        self.assertAlmostEqual(m["kernel.swar/memcpy.16KiB"], 0.25)
        self.assertAlmostEqual(m["kernel.avx2/memcpy.16KiB"], 0.8)
        self.assertAlmostEqual(m["kernel.inplace/memcpy.16KiB"], 0.75)
        self.assertAlmostEqual(m["kernel.inplace/memcpy.64B"], 0.5)
        self.assertNotIn("kernel.swar/memcpy.64B", m)  # per-kernel only at 16 KiB


class HarnessParsingTest(unittest.TestCase):
    def test_point_keys_match_across_backends(self):
        a = upcase_harness.Point("epoll", "tcp", 64, 64, 1000.0, "50%")
        b = upcase_harness.Point("uring", "tcp", 64, 64, 1000.0, "50%")
        self.assertEqual(a.key, b.key)
        self.assertEqual(a.key, "tcp-64B-c64-open50")
        self.assertEqual(upcase_harness.Point("t", "udp", 16384, 1).key, "udp-16384B-c1-closed")

    def test_formatting(self):
        self.assertEqual(upcase_harness.fmt_count(123456), "123k")
        self.assertEqual(upcase_harness.fmt_count(1.5e6), "1.5M")
        self.assertEqual(upcase_harness.fmt_size(16384), "16KiB")
        self.assertEqual(upcase_harness.fmt_duration(0.5), "500ms")
        self.assertEqual(upcase_harness.fmt_duration(2), "2s")


if __name__ == "__main__":
    unittest.main()
