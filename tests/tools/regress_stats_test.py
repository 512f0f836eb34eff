"""tools/upcase/regress/stats.py on synthetic samples: the signed-rank distribution against brute
force, Hodges-Lehmann estimates, verdicts for a known shift / no shift / too little data, the
repeats estimate, and the family-wise (Bonferroni) control over many metrics.

    /usr/bin/python3 tests/tools/regress_stats_test.py
"""
import itertools
import math
import pathlib
import random
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

from upcase.regress import stats as st  # noqa: E402

# The default check: 24 metrics at a family-wise 5 %.
ALPHA_SIDE = st.bonferroni_alpha_side(0.05, 24)


def paired_rounds(rng, n, shift, noise, drift=0.0, outliers=0.0, value=5.0):
    """n rounds of (base, candidate): both move with a shared drift (as the VM's speed does), each
    has its own noise, a share `outliers` of rounds has one side 10-20 % off, and the candidate is
    `shift` (relative) off the base."""
    base, cand = [], []
    for _ in range(n):
        level = value * math.exp(rng.gauss(0, drift))
        a = level * math.exp(rng.gauss(0, noise))
        b = level * (1 + shift) * math.exp(rng.gauss(0, noise))
        if rng.random() < outliers:
            if rng.random() < 0.5:
                a *= 1 + rng.uniform(0.1, 0.2)
            else:
                b *= 1 + rng.uniform(0.1, 0.2)
        base.append(a)
        cand.append(b)
    return base, cand


def judge(base, cand, better="lower", tol=0.02, alpha_side=ALPHA_SIDE):
    return st.judge(st.log_ratios(base, cand), better, tol, alpha_side)


class SignedRankTest(unittest.TestCase):
    def test_counts_match_brute_force(self):
        for n in range(1, 11):
            brute = [0] * (n * (n + 1) // 2 + 1)
            for signs in itertools.product((0, 1), repeat=n):
                brute[sum(rank for rank, s in zip(range(1, n + 1), signs) if s)] += 1
            self.assertEqual(list(st.signed_rank_counts(n)), brute, n)

    def test_critical_count_is_the_largest_within_the_tail(self):
        for n in (6, 10, 12, 20):
            for a in (0.0005, 0.001, 0.01, 0.05):
                c = st.critical_count(n, a)
                counts = st.signed_rank_counts(n)
                self.assertLessEqual(sum(counts[:c]) / 2 ** n, a)
                self.assertGreater(sum(counts[:c + 1]) / 2 ** n, a)

    def test_min_rounds(self):
        self.assertEqual(st.min_rounds(ALPHA_SIDE), 10)  # 2^-10 = 0.00098 <= 0.00104
        self.assertEqual(st.critical_count(9, ALPHA_SIDE), 0)
        self.assertEqual(st.critical_count(10, ALPHA_SIDE), 1)
        self.assertEqual(st.min_rounds(0.025), 6)

    def test_hodges_lehmann_on_known_data(self):
        est, lo, hi = st.hodges_lehmann([1.0, 2.0, 3.0], 0.2)
        self.assertEqual(est, 2.0)  # Walsh averages 1, 1.5, 2, 2, 2.5, 3
        self.assertEqual((lo, hi), (1.0, 3.0))  # P(W+ = 0) = 1/8 <= 0.2 < 2/8
        est, lo, hi = st.hodges_lehmann([1.0, 2.0, 3.0], 0.1)
        self.assertEqual((lo, hi), (-math.inf, math.inf))  # 3 rounds cannot reach 90 %

    def test_interval_covers_the_true_shift(self):
        # Skewed, heavy-tailed but symmetric-difference noise; 90 % intervals, 400 trials.
        rng = random.Random(13)
        covered = 0
        for _ in range(400):
            base, cand = paired_rounds(rng, 12, 0.03, 0.02, drift=0.2, outliers=0.1)
            _, lo, hi = st.hodges_lehmann(st.log_ratios(base, cand), 0.05)
            covered += lo <= math.log(1.03) <= hi
        self.assertGreaterEqual(covered / 400, 0.86)


class VerdictTest(unittest.TestCase):
    def test_verdict_rules(self):
        self.assertEqual(st.verdict(0.03, 0.07, "lower", 0.02), st.REGRESSED)
        self.assertEqual(st.verdict(0.01, 0.07, "lower", 0.02), st.INCONCLUSIVE)
        self.assertEqual(st.verdict(-0.01, 0.015, "lower", 0.02), st.SAME)
        self.assertEqual(st.verdict(-0.07, -0.03, "lower", 0.02), st.IMPROVED)
        # Higher is better: a drop is the bad direction.
        self.assertEqual(st.verdict(-0.07, -0.03, "higher", 0.02), st.REGRESSED)
        self.assertEqual(st.verdict(0.03, 0.07, "higher", 0.02), st.IMPROVED)

    def test_known_shift_is_found_despite_drift(self):
        rng = random.Random(1)
        # 5 % more CPU per request under a drift of +-20 % that hits both sides.
        base, cand = paired_rounds(rng, 12, 0.05, 0.005, drift=0.2)
        j = judge(base, cand)
        self.assertEqual(j.verdict, st.REGRESSED)
        self.assertAlmostEqual(j.change, 0.05, delta=0.01)
        self.assertLess(j.low, j.change)
        self.assertGreater(j.high, j.change)
        # The same samples as a higher-is-better metric (req/s): improved.
        self.assertEqual(judge(base, cand, better="higher").verdict, st.IMPROVED)
        # 5 % fewer requests/s is a regression of a higher-is-better metric.
        base, cand = paired_rounds(rng, 12, -0.05, 0.005, drift=0.2)
        self.assertEqual(judge(base, cand, better="higher", tol=0.02).verdict, st.REGRESSED)

    def test_pairing_is_what_removes_the_drift(self):
        # Unpaired, the +-20 % drift would swamp a 5 % shift; paired, it is found every time.
        rng = random.Random(2)
        for _ in range(20):
            base, cand = paired_rounds(rng, 12, 0.05, 0.005, drift=0.2)
            self.assertEqual(judge(base, cand).verdict, st.REGRESSED)

    def test_identical_distributions_are_same(self):
        rng = random.Random(3)
        for _ in range(20):
            base, cand = paired_rounds(rng, 12, 0.0, 0.003, drift=0.2)
            self.assertEqual(judge(base, cand).verdict, st.SAME)
        # Deterministic figures (syscalls of a blocking server): same, a point interval.
        j = judge([2.0] * 12, [2.0] * 12)
        self.assertEqual((j.verdict, j.low, j.high), (st.SAME, 0.0, 0.0))

    def test_noisy_small_sample_is_inconclusive_with_an_estimate(self):
        rng = random.Random(4)
        base, cand = paired_rounds(rng, 5, 0.0, 0.01)
        j = judge(base, cand)
        self.assertEqual(j.verdict, st.INCONCLUSIVE)  # 5 rounds cannot reach the level
        self.assertEqual((j.low, j.high), (-math.inf, math.inf))
        self.assertGreaterEqual(j.more_rounds, st.min_rounds(ALPHA_SIDE) - 5)
        # Enough rounds but too noisy for +-2 %: inconclusive, and the estimate of the rounds
        # needed is about right: with that many, most trials decide.
        base, cand = paired_rounds(rng, 12, 0.0, 0.03)
        j = judge(base, cand)
        self.assertEqual(j.verdict, st.INCONCLUSIVE)
        self.assertGreater(j.more_rounds, 0)
        n = 12 + j.more_rounds
        decided = sum(judge(*paired_rounds(rng, n, 0.0, 0.03)).verdict == st.SAME
                      for _ in range(20))
        self.assertGreaterEqual(decided, 10, f"{n} rounds")

    def test_regression_near_the_tolerance_is_not_called(self):
        rng = random.Random(5)
        base, cand = paired_rounds(rng, 12, 0.02, 0.01)
        self.assertNotEqual(judge(base, cand).verdict, st.REGRESSED)

    def test_missing_rounds_are_skipped(self):
        d = st.log_ratios([1.0, None, 2.0, 0.0], [1.1, 1.0, None, 1.0])
        self.assertEqual(len(d), 1)
        self.assertAlmostEqual(d[0], math.log(1.1))


class MultipleComparisonTest(unittest.TestCase):
    """Many metrics with no real change and no tolerance to hide behind (tol = 0: every interval
    that misses 0 is a verdict): the Bonferroni level keeps runs with any false verdict at or
    below alpha; 95 % per metric does not."""

    def false_alarm_share(self, alpha_side, runs=300, metrics=24, seed=6):
        rng = random.Random(seed)
        bad = 0
        for _ in range(runs):
            verdicts = set()
            for _ in range(metrics):
                base, cand = paired_rounds(rng, 12, 0.0, 0.02, drift=0.1)
                verdicts.add(judge(base, cand, tol=0.0, alpha_side=alpha_side).verdict)
            bad += bool(verdicts & {st.REGRESSED, st.IMPROVED})
        return bad / runs

    def test_bonferroni_holds(self):
        share = self.false_alarm_share(ALPHA_SIDE)
        self.assertLessEqual(share, 0.05 + 0.02)  # 0.05 plus ~1.6 binomial standard errors

    def test_without_the_correction_false_alarms_are_common(self):
        self.assertGreater(self.false_alarm_share(0.025, runs=100), 0.4)


if __name__ == "__main__":
    unittest.main()
