"""tools/quiet: the busy-share arithmetic over recorded /proc/stat samples (procfs.QuietWatch),
and end to end: it runs a command and passes its exit status on, gives up with 75 after
--timeout, and refuses bad flags with one line.

    /usr/bin/python3 tests/tools/quiet_test.py
"""
import pathlib
import subprocess
import sys
import unittest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

from upcase import procfs  # noqa: E402


def stat(*cpus):
    """A /proc/stat text: per CPU (user, system, idle, iowait) jiffies; the "cpu" line sums."""
    def line(name, u, s, i, w):
        # user nice system idle iowait irq softirq steal guest guest_nice
        return f"{name} {u} 0 {s} {i} {w} 0 0 0 0 0"
    total = [sum(c[k] for c in cpus) for k in range(4)]
    lines = [line("cpu ", *total)] + [line(f"cpu{n}", *c) for n, c in enumerate(cpus)]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 12345", "btime 1700000000"]) + "\n"


class ArithmeticTest(unittest.TestCase):
    def test_busy_is_everything_but_idle_and_iowait(self):
        times = procfs.parse_cpu_times(stat((10, 5, 80, 5), (0, 0, 100, 0)))
        self.assertEqual(times[0], (15, 100))
        self.assertEqual(times[1], (0, 100))
        self.assertEqual(times[None], (15, 200))

    def test_shares_between_samples(self):
        a = procfs.parse_cpu_times(stat((10, 5, 80, 5), (0, 0, 100, 0)))
        b = procfs.parse_cpu_times(stat((13, 6, 170, 11), (50, 50, 100, 0)))
        shares = procfs.busy_shares(a, b, [0, 1])
        self.assertAlmostEqual(shares[0], 4 / 100)   # 4 busy of 100 jiffies
        self.assertAlmostEqual(shares[1], 1.0)
        self.assertEqual(procfs.busy_shares(a, a, [0]), {0: 0.0})  # no tick: idle

    def test_watch_needs_settle_seconds_in_a_row(self):
        w = procfs.QuietWatch([0, 1], max_busy=0.05, settle=2.0)
        cpu0, cpu1 = [0, 0, 0, 0], [0, 0, 0, 0]

        def feed(t, busy0, busy1):
            # 100 jiffies per CPU per second; busy0/busy1 of them busy.
            for c, busy in ((cpu0, busy0), (cpu1, busy1)):
                c[0] += busy
                c[2] += 100 - busy
            return w.feed(t, stat(tuple(cpu0), tuple(cpu1)))
        self.assertFalse(feed(0.0, 0, 0))      # first sample: nothing to compare yet
        self.assertFalse(feed(1.0, 3, 5))      # 3 % and 5 %: quiet (at the threshold)
        self.assertFalse(feed(2.0, 0, 6))      # CPU 1 at 6 %: the stretch starts again here
        self.assertEqual(w.busiest, (1, 0.06))
        self.assertFalse(feed(3.0, 1, 1))
        self.assertTrue(feed(4.0, 2, 0))       # quiet from 2.0 to 4.0
        only0 = procfs.QuietWatch([0], max_busy=0.05, settle=1.0)
        only0.feed(0.0, stat((0, 0, 0, 0), (0, 0, 0, 0)))
        self.assertTrue(only0.feed(1.0, stat((1, 0, 99, 0), (100, 0, 0, 0))))  # CPU 1 ignored

    def test_an_offline_cpu_is_refused(self):
        with self.assertRaisesRegex(ValueError, "CPU 5 is not online"):
            procfs.QuietWatch([5], 0.05, 1.0).feed(0.0, stat((0, 0, 1, 0)))


class EndToEndTest(unittest.TestCase):
    def quiet(self, *args):
        return subprocess.run([str(TOOLS / "quiet"), *args], capture_output=True, text=True,
                              timeout=60)

    def test_runs_the_command_and_passes_its_status_on(self):
        # Any load passes at --max-busy=100: the test does not depend on an idle machine.
        r = self.quiet("--settle=0.3", "--max-busy=100", "--timeout=30", "--",
                       "sh", "-c", "echo ran; exit 7")
        self.assertEqual(r.returncode, 7, r.stderr)
        self.assertEqual(r.stdout, "ran\n")
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)  # the one progress line
        self.assertIn("waiting for CPU", r.stderr)
        r = self.quiet("--settle=0", "--max-busy=100%", "--", "true")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_gives_up_after_the_timeout(self):
        # A 5 s stretch cannot fit in a 0.5 s timeout, however idle the machine is.
        r = self.quiet("--settle=5", "--timeout=0.5", "--", "sh", "-c", "echo ran")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertRegex(r.stderr.splitlines()[-1], r"^tools/quiet: CPU .* did not stay below")

    def test_bad_input_is_one_line_and_status_2(self):
        for args in (["--max-busy=abc", "--", "true"], ["--settle=-1", "--", "true"],
                     ["--cpus=0-", "--", "true"], ["--cpus=100000", "--", "true"],
                     ["--settle=0"]):
            r = self.quiet(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertEqual(len(r.stderr.splitlines()), 1, (args, r.stderr))
            self.assertTrue(r.stderr.startswith("tools/quiet: "), r.stderr)
        r = self.quiet("--settle=0", "--max-busy=100", "--", "/nonexistent/command")
        self.assertEqual(r.returncode, 127)
        self.assertIn("cannot run /nonexistent/command", r.stderr)


if __name__ == "__main__":
    unittest.main()
