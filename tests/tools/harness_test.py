"""Unit tests of the comparison harness's pure logic on synthetic input: the report's medians and
ratios (tools/upcase/summary.py, report.py), the regression check's ratios and tolerances
(tools/upcase/regress/baseline.py), tools/compare's flags, placement and shard scaling, and parsing of the
tools' output. No server or load generator runs.

    /usr/bin/python3 tests/tools/harness_test.py
"""
import json
import pathlib
import shutil
import sys
import tempfile
import unittest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

from upcase import hosts as upcase_remote  # noqa: E402
from upcase import plan as compare  # noqa: E402
from upcase import points, processes, procfs, runner, summary, units  # noqa: E402
from upcase import report as upcase_report  # noqa: E402
from upcase.regress import baseline as upcase_regress  # noqa: E402

# A made-up machine where requests cost these many server-CPU µs.
CPU_US = {"iterative": 9.0, "threads": 12.0, "epoll": 6.0, "uring": 4.0}
SYSCALLS = {"iterative": 2.0, "threads": 2.0, "epoll": 2.2, "uring": 0.3}


def synthetic_run(backend, proto="tcp", size=64, conns=64, rate=0.0, label="", repeat=0,
                  probe=False, rps=None, shards=None):
    """One record shaped like runner.run_point's, with upcase-load's JSON keys."""
    point = points.Point(backend, proto, size, conns, rate, label, probe, shards)
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
        a = points.Point("epoll", "tcp", 64, 64, 1000.0, "50%")
        b = points.Point("uring", "tcp", 64, 64, 1000.0, "50%")
        self.assertEqual(a.key, b.key)
        self.assertEqual(a.key, "tcp-64B-c64-open50")
        self.assertEqual(points.Point("t", "udp", 16384, 1).key, "udp-16384B-c1-closed")

    def test_formatting(self):
        self.assertEqual(units.fmt_count(123456), "123k")
        self.assertEqual(units.fmt_count(1.5e6), "1.5M")
        self.assertEqual(units.fmt_size(16384), "16KiB")
        self.assertEqual(units.fmt_duration(0.5), "500ms")
        self.assertEqual(units.fmt_duration(2), "2s")



# ---------------------------------------------------------------------------------------------
# tools/compare: flags, placement, shard scaling.

class CpuListTest(unittest.TestCase):
    def test_parse_and_format(self):
        self.assertEqual(procfs.parse_cpu_list("0-3,8"), [0, 1, 2, 3, 8])
        self.assertEqual(procfs.parse_cpu_list("5, 1-2,2"), [1, 2, 5])
        self.assertEqual(procfs.fmt_cpu_list([8, 0, 1, 2, 3, 5]), "0-3,5,8")
        self.assertEqual(procfs.fmt_cpu_list([1]), "1")

    def test_bad_lists_have_one_line_reasons(self):
        for text in ("3-1", "a", "", "1,,2", "-1"):
            with self.assertRaises(ValueError) as e:
                procfs.parse_cpu_list(text, flag="--server-cpus")
            self.assertIn("--server-cpus=", str(e.exception))
            self.assertNotIn("\n", str(e.exception))
        with self.assertRaisesRegex(ValueError, r"--load-cpus=2-3: CPU 2-3 not in the allowed set "
                                                r"0-1$"):
            procfs.parse_cpu_list("2-3", [0, 1], "--load-cpus")


class CompareFlagsTest(unittest.TestCase):
    def test_lists(self):
        self.assertEqual(compare.parse_list("64,1K,16k,64", "--sizes", compare.parse_size),
                         [64, 1024, 16384])
        self.assertEqual(compare.parse_list("tcp", "--protos", compare.proto), ["tcp"])
        for text, flag, conv, why in (
                (",", "--sizes", compare.parse_size, "empty list"),
                ("", "--shards", compare.positive("a shard count"), "empty list"),
                ("1,0", "--shards", compare.positive("a shard count"), ">= 1"),
                ("2,x", "--connections", compare.positive("a connection count"), ">= 1"),
                ("64,1G", "--sizes", compare.parse_size, "byte count"),
                ("tcp,sctp", "--protos", compare.proto, "not tcp or udp")):
            with self.assertRaises(ValueError, msg=text) as e:
                compare.parse_list(text, flag, conv)
            self.assertIn(why, str(e.exception))
            self.assertTrue(str(e.exception).startswith(flag), str(e.exception))

    def test_sizes_out_of_range(self):
        compare.check_sizes([8, 65507], ["udp"])
        compare.check_sizes([1, 16 << 20], ["tcp"])
        with self.assertRaisesRegex(ValueError, "70000 bytes is out of range for udp"):
            compare.check_sizes([64, 70000], ["tcp", "udp"])
        with self.assertRaisesRegex(ValueError, "out of range for tcp"):
            compare.check_sizes([(16 << 20) + 1], ["tcp"])

    def test_matrix_lists_replace_their_dimension(self):
        default = compare.MATRICES["default"]["closed"]
        self.assertEqual(compare.matrix_points(default, sizes=[64]),
                         [("tcp", 64, 1), ("tcp", 64, 64), ("tcp", 64, 512), ("udp", 64, 64)])
        self.assertEqual(compare.matrix_points(default, protos=["udp"], connections=[1, 8]),
                         [("udp", 64, 1), ("udp", 64, 8)])
        self.assertEqual(compare.matrix_points(default), default)
        self.assertEqual(compare.open_base([("tcp", 1024, 8), ("tcp", 64, 1), ("tcp", 64, 8)]),
                         ("tcp", 64, 8))
        self.assertIsNone(compare.open_base([("udp", 64, 64), ("tcp", 64, 1)]))

    def test_default_placement_on_two_cpus_is_todays(self):
        p = compare.resolve_placement([0, 1], [0, 1], True)
        self.assertEqual((p["server_cpus"], p["load_cpus"], p["shards"], p["load_threads"],
                          p["overlap_cpus"], p["notes"]), ([0], [1], [1], 1, [], []))

    def test_default_placement_splits_more_cpus_in_halves(self):
        p = compare.resolve_placement(list(range(8)), list(range(8)), True)
        self.assertEqual((p["server_cpus"], p["load_cpus"], p["shards"], p["load_threads"]),
                         ([0, 1, 2, 3], [4, 5, 6, 7], [4], 4))
        # A container limited to CPUs 4-7 (the allowed set, not os.cpu_count()).
        p = compare.resolve_placement([4, 5, 6, 7], [4, 5, 6, 7], True)
        self.assertEqual((p["server_cpus"], p["load_cpus"]), ([4, 5], [6, 7]))
        p = compare.resolve_placement([3], [3], True)
        self.assertEqual((p["server_cpus"], p["load_cpus"]), ([3], [3]))
        self.assertIn("only CPU 3", p["notes"][0])

    def test_one_side_given_takes_the_rest(self):
        p = compare.resolve_placement(list(range(8)), list(range(8)), True, server_cpus="0-5")
        self.assertEqual(p["load_cpus"], [6, 7])
        p = compare.resolve_placement(list(range(8)), list(range(8)), True, load_cpus="7",
                                      load_threads=2)
        self.assertEqual((p["server_cpus"], p["load_threads"]), (list(range(7)), 2))

    def test_separate_hosts_use_all_their_cpus(self):
        p = compare.resolve_placement(list(range(32)), list(range(16)), False,
                                      shards="32,1,2,4")
        self.assertEqual((p["server_cpus"], p["load_cpus"], p["shards"], p["load_threads"],
                          p["overlap_cpus"]), (list(range(32)), list(range(16)), [1, 2, 4, 32],
                                               16, []))

    def test_overlap_is_allowed_and_stated(self):
        p = compare.resolve_placement([0, 1], [0, 1], True, server_cpus="0-1", load_cpus="1",
                                      shards="1,2")
        self.assertEqual((p["overlap_cpus"], p["shards"]), ([1], [1, 2]))
        text = upcase_report.overlap_text(p)
        self.assertIn("Server CPUs 0-1 and load CPUs 1 overlap on CPU 1", text)
        self.assertIsNone(upcase_report.overlap_text(
            compare.resolve_placement([0, 1], [0, 1], True)))

    def test_placement_errors(self):
        for kw, why in ((dict(server_cpus="9"), "--server-cpus=9: CPU 9 not in the allowed set"),
                        (dict(load_cpus="0-9"), "--load-cpus=0-9: CPU 2-9 not in"),
                        (dict(shards="0"), "--shards=0"),
                        (dict(load_threads=0), "--load-threads must be >= 1")):
            with self.assertRaisesRegex(ValueError, why):
                compare.resolve_placement([0, 1], [0, 1], True, **kw)
        p = compare.resolve_placement([0, 1], [0, 1], True, shards="1,4")
        self.assertIn("--shards up to 4 on 1 server CPU", p["notes"][0])

    def test_plan_sweeps_sharded_backends_only(self):
        matrix = compare.MATRICES["quick"]
        closed = compare.matrix_points(matrix["closed"], protos=["tcp"], sizes=[64])
        epoll_closed, epoll_probes = compare.plan_for("epoll", matrix, closed, closed[-1:], [1, 2])
        self.assertEqual([(p.connections, p.shards) for p in epoll_closed],
                         [(1, 1), (64, 1), (1, 2), (64, 2)])
        self.assertEqual([(p.connections, p.shards) for p in epoll_probes], [(64, 2)])
        thr_closed, _ = compare.plan_for("threads", matrix, closed, closed[-1:], [1, 2])
        self.assertEqual([p.shards for p in thr_closed], [None, None])
        it_closed, it_probes = compare.plan_for("iterative", matrix, closed, closed[-1:], None)
        self.assertEqual([(p.connections, p.probe) for p in it_closed + it_probes],
                         [(1, False), (1, True)])


class FakeHost:
    name, remote = "fake", False

    def binary(self, name, bin_dir=None):
        return name


class LoadSplitTest(unittest.TestCase):
    def test_default_commands_are_unchanged(self):
        s = points.RunSettings()
        p = points.Point("epoll", "tcp", 64, 64)
        cmd = processes.load_command(p, 5050, s, "/x.json", FakeHost())
        self.assertEqual(cmd[:4], ["taskset", "-c", "1", "upcase-load"])
        self.assertIn("--threads=1", cmd)
        self.assertFalse([a for a in cmd if a.startswith(("--cpus", "--start-at"))])
        self.assertEqual(cmd[-2:], ["127.0.0.1", "5050"])
        self.assertEqual(s.bind_addr(), "127.0.0.1")
        self.assertEqual(runner.placement(p, s)["server_cpus"], [0])

    def test_load_cpus_threads_and_hosts(self):
        a, b = FakeHost(), FakeHost()
        s = points.RunSettings(load_cpus=(4, 5, 6, 7), load_threads=4,
                                       server_cpus=(0, 1, 2, 3), load_hosts=(a, b),
                                       server_addr="198.18.0.1")
        p = points.Point("uring", "tcp", 64, 3, rate=900.0, label="50%", shards=2)
        shares = runner.load_shares(p, s)
        self.assertEqual([(h is a, c, r) for h, c, r in shares], [(True, 2, 600.0),
                                                                 (False, 1, 300.0)])
        cmd = processes.load_command(p, 5050, s, "/x.json", a, 2, 600.0, 1e9)
        self.assertEqual(cmd[:3], ["taskset", "-c", "4-7"])
        for arg in ("--threads=4", "--cpus=4-7", "--connections=2", "--rate=600",
                    "--start-at=1000000000.000", "198.18.0.1"):
            self.assertIn(arg, cmd)
        self.assertEqual(s.bind_addr(), "198.18.0.1")
        self.assertEqual(points.RunSettings(server_addr="bench-a").bind_addr(),
                         "0.0.0.0")
        one = points.Point("uring", "tcp", 64, 1)
        self.assertEqual(len(runner.load_shares(one, s)), 1)
        place = runner.placement(p, s)
        self.assertEqual((place["shards"], place["pin"], place["load_hosts"],
                          place["overlap_cpus"]), (2, False, ["fake", "fake"], []))

    def test_ssh_destinations(self):
        self.assertEqual(upcase_remote.split_destination("root@198.18.0.1"),
                         ("root@198.18.0.1", None, "198.18.0.1"))
        self.assertEqual(upcase_remote.split_destination("ssh://me@bench-a:2222"),
                         ("me@bench-a", "2222", "bench-a"))
        self.assertEqual(upcase_remote.split_destination("bench-b")[2], "bench-b")
        for bad in ("-oProxyCommand=x", "a b", "ssh://", ""):
            with self.assertRaises(ValueError):
                upcase_remote.split_destination(bad)


def sharded_dir(d: pathlib.Path, overlap=True):
    """epoll and uring at 1, 2 and 4 shards (epoll scaling 1, 0.9, 0.75), threads once."""
    (d / "runs").mkdir(parents=True)
    runs = []
    for r in range(3):
        for n, eff in ((1, 1.0), (2, 0.9), (4, 0.75)):
            runs.append(synthetic_run("epoll", shards=n, rps=100e3 * n * eff * (1 + r / 100),
                                      repeat=r))
            runs.append(synthetic_run("uring", shards=n, rps=110e3 * n * (1 + r / 100),
                                      repeat=r))
            runs.append(synthetic_run("epoll", conns=1, shards=n, rps=20e3, repeat=r))
        runs.append(synthetic_run("threads", rps=80e3, repeat=r))
        runs.append(synthetic_run("threads", conns=1, rps=15e3, repeat=r))
    for i, rec in enumerate(runs):
        (d / "runs" / f"{i:03d}.json").write_text(json.dumps(rec))
    (d / "meta.json").write_text(json.dumps({
        "command": "tools/compare --shards=1,2,4", "machine": {}, "notes": [],
        "settings": {"duration_s": 1, "warmup_s": 0.3, "repeat": 3, "server_cpus": [0, 1, 2, 3],
                     "load_cpus": [3, 4] if overlap else [4, 5], "shards": [1, 2, 4],
                     "pin": True, "load_threads": 2, "load_hosts": ["local"],
                     "server_host": "local", "server_addr": "127.0.0.1",
                     "overlap_cpus": [3] if overlap else []}}))


class ScalingTest(unittest.TestCase):
    def test_efficiency(self):
        self.assertAlmostEqual(summary.efficiency(150e3, 2, 100e3), 0.75)
        self.assertAlmostEqual(summary.efficiency(300e3, 4, 200e3, base=2), 0.75)
        self.assertIsNone(summary.efficiency(None, 2, 100e3))
        self.assertIsNone(summary.efficiency(1e3, 2, 0))

    def test_summary_keeps_the_largest_shard_count_and_scales_the_rest(self):
        with tempfile.TemporaryDirectory() as tmp:
            sharded_dir(pathlib.Path(tmp))
            summary = upcase_report.summarize(*upcase_report.load_dir(pathlib.Path(tmp)))
        index = {(p["backend"], p["key"]): p for p in summary["points"]}
        self.assertEqual(index[("epoll", "tcp-64B-c64-closed")]["shards"], 4)
        self.assertIsNone(index[("threads", "tcp-64B-c64-closed")]["shards"])
        self.assertEqual(len([p for p in summary["points"] if p["backend"] == "epoll"]), 2)
        rows = summary["scaling"]["epoll"]["tcp-64B-c64-closed"]
        self.assertEqual([r["shards"] for r in rows], [1, 2, 4])
        self.assertEqual([round(r["efficiency"], 3) for r in rows], [1.0, 0.9, 0.75])
        self.assertAlmostEqual(rows[2]["ideal_rps"], 4 * 101e3)  # median of the repeats
        self.assertAlmostEqual(rows[2]["cpu_us_per_req"], 6.0)
        self.assertEqual([round(r["efficiency"], 3) for r in
                          summary["scaling"]["uring"]["tcp-64B-c64-closed"]], [1.0, 1.0, 1.0])
        self.assertEqual(upcase_report.scaling_key(summary), "tcp-64B-c64-closed")
        self.assertEqual(set(upcase_report.scaling_reference(summary, "tcp-64B-c64-closed")),
                         {"threads"})
        self.assertEqual(upcase_report.scaling_rows(rows)[1][:4], ["2", "182k", "202k", "0.9"])

    def test_report_and_plot(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = pathlib.Path(tmp)
            sharded_dir(d)
            printed = []
            upcase_report.build(d, out=printed.append)
            self.assertGreater((d / upcase_report.SCALING_PLOT).stat().st_size, 10000)
            report = (d / "report.md").read_text()
        first = report.splitlines()[:6]
        self.assertTrue(any(l.startswith("Placement: server on this host, CPUs 0-3 (epoll/uring "
                                          "`--shards=1,2,4` `--pin`") for l in first), first)
        self.assertTrue(any("overlap on CPU 3" in l for l in first), first)
        self.assertIn("## Shard scaling", report)
        self.assertIn("| 4 | 303k | 404k | 0.75 |", report)
        self.assertIn("For reference, at their one configuration (all the server CPUs): "
                      "threads 80k req/s", report)
        self.assertIn("![scaling](scaling.png)", report)
        self.assertIn("== epoll shard scaling", "\n".join(printed))

    def test_no_sweep_no_scaling(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = pathlib.Path(tmp)
            synthetic_dir(d)
            upcase_report.build(d, out=lambda line: None)
            self.assertFalse((d / upcase_report.SCALING_PLOT).exists())
            report = (d / "report.md").read_text()
        self.assertNotIn("Shard scaling", report)
        self.assertIn("Placement: server (`--shards=1`) pinned to CPU 0, upcase-load (1 thread) "
                      "to CPU 1; loopback", report)
        self.assertNotIn("overlap", report.split("## Headline")[0])

    def test_replot_of_a_committed_set_without_placement_fields(self):
        old = TOOLS.parent / "results" / "reference-2core"
        if not (old / "runs").is_dir():
            self.skipTest("results/reference-2core is not in this tree")
        with tempfile.TemporaryDirectory() as tmp:
            d = pathlib.Path(tmp) / "set"
            shutil.copytree(old, d)
            summary = upcase_report.build(d, out=lambda line: None)
            report = (d / "report.md").read_text()
        self.assertEqual(summary["scaling"], {})
        self.assertEqual(summary["backends"], ["iterative", "threads", "epoll", "uring"])
        self.assertIn("pinned to CPU 0", report)


if __name__ == "__main__":
    unittest.main()
