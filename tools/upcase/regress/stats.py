"""The A/B check's statistics: paired Hodges-Lehmann estimates with Wilcoxon signed-rank
intervals, verdicts against a tolerance, and a family-wise (Bonferroni) confidence level.

tools/regress measures base (A) and candidate (B) in rounds; in every round each metric gets one
A sample and one B sample taken back to back (A B, then B A in the next round, ...). What it
analyses is the per-round log ratio d = ln(B / A): on this VM the machine's speed drifts by 10-30 %
over minutes (every sample of a point slows down together), while two runs seconds apart agree
within 1-2 % for the steady metrics. Comparing the two sides' samples unpaired (a Mann-Whitney
interval, or a bootstrap of the ratio of medians) would put that drift into the interval; pairing
removes it.

For the n ratios d_1..d_n of a metric:
  estimate  the Hodges-Lehmann estimate: the median of the n(n+1)/2 Walsh averages (d_i + d_j)/2
  interval  Tukey's distribution-free interval for the centre of a symmetric distribution: the
            C-th smallest and C-th largest Walsh average, C from the exact null distribution of
            the Wilcoxon signed-rank statistic. Symmetry holds when A and B are exchangeable
            within a round, which the alternating order gives (an effect of going second, e.g. a
            warm cache or a hot CPU, hits A and B equally often).
Reported as a relative change exp(d) - 1, candidate/base - 1.

Multiple comparisons: a run judges k metrics; each interval has confidence 1 - alpha/k (Bonferroni)
so that, with no real change, the chance that any of the k intervals misses the true value is at
most alpha (default 0.05), hence at most alpha/2 for a wrong `regressed`. The tolerance lowers that
further. The exact signed-rank distribution cannot reach every level: with n rounds the smallest
one-sided tail is 2^-n, so a level needs n >= log2(2k/alpha) rounds (10 for 24 metrics); with fewer,
the interval is unbounded and the verdict is `inconclusive`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics

# Verdicts, in the order the report sorts them.
REGRESSED, IMPROVED, SAME, INCONCLUSIVE = "regressed", "improved", "same", "inconclusive"


@functools.lru_cache(maxsize=None)
def signed_rank_counts(n: int) -> tuple[int, ...]:
    """counts[w] = how many of the 2^n sign patterns give the signed-rank statistic W+ = w."""
    counts = [1]
    for rank in range(1, n + 1):
        nxt = counts + [0] * rank
        for w, c in enumerate(counts):
            nxt[w + rank] += c
        counts = nxt
    return tuple(counts)


def critical_count(n: int, alpha_side: float) -> int:
    """The largest C with P(W+ <= C - 1) <= alpha_side under the null; 0 when even W+ = 0 is
    more likely than that (too few rounds for this level)."""
    total = 2 ** n
    cumulative, c = 0, 0
    for count in signed_rank_counts(n):
        if (cumulative + count) / total > alpha_side:
            break
        cumulative += count
        c += 1
    return c


def min_rounds(alpha_side: float) -> int:
    """Fewest rounds whose interval can be bounded at this one-sided level: 2^-n <= alpha_side."""
    return max(1, math.ceil(math.log2(1 / alpha_side) - 1e-9))


def walsh_averages(d: list[float]) -> list[float]:
    return sorted((d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d)))


def hodges_lehmann(d: list[float], alpha_side: float) -> tuple[float, float, float]:
    """(estimate, lower, upper) for the centre of d; the bounds are -inf/inf when n is too small
    for the level."""
    if not d:
        return math.nan, -math.inf, math.inf
    w = walsh_averages(d)
    est = statistics.median(w)
    c = critical_count(len(d), alpha_side)
    if c == 0:
        return est, -math.inf, math.inf
    return est, w[c - 1], w[len(w) - c]


def bonferroni_alpha_side(alpha: float, k: int) -> float:
    """One-sided tail of each metric's interval so that k two-sided intervals hold together with
    probability >= 1 - alpha."""
    return alpha / (2 * max(1, k))


def robust_sd(d: list[float]) -> float:
    """Spread of d: 1.4826 x the median absolute deviation (the standard deviation for normal
    data, but one slow run does not inflate it); the sample standard deviation when the MAD is 0
    but the values differ."""
    if len(d) < 2:
        return math.nan
    med = statistics.median(d)
    mad = statistics.median(abs(x - med) for x in d)
    return 1.4826 * mad if mad > 0 else statistics.stdev(d)


@dataclasses.dataclass
class Judgement:
    n: int                    # rounds with both samples
    change: float             # candidate/base - 1 (Hodges-Lehmann)
    low: float                # interval of candidate/base - 1
    high: float
    verdict: str
    more_rounds: int | None   # inconclusive: estimated extra rounds to decide; None = not
    #                           estimable (no spread) or the change sits right at the tolerance


def _rel(x: float) -> float:
    return math.expm1(x) if math.isfinite(x) else x


def verdict(low: float, high: float, better: str, tolerance: float) -> str:
    """`regressed` only when the whole interval of candidate/base - 1 lies beyond the tolerance
    in the bad direction, `improved` symmetrically, `same` when it lies within +-tolerance."""
    worse_low, worse_high = (low, high) if better == "lower" else (-high, -low)
    if worse_low > tolerance:
        return REGRESSED
    if worse_high < -tolerance:
        return IMPROVED
    if -tolerance <= worse_low and worse_high <= tolerance:
        return SAME
    return INCONCLUSIVE


def judge(d: list[float], better: str, tolerance: float, alpha_side: float) -> Judgement:
    """Judges a metric from its per-round log ratios d = ln(candidate / base)."""
    est, lo, hi = hodges_lehmann(d, alpha_side)
    low, high = _rel(lo), _rel(hi)
    v = verdict(low, high, better, tolerance)
    more = more_rounds(d, est, lo, hi, tolerance, alpha_side) if v == INCONCLUSIVE else None
    return Judgement(len(d), _rel(est), low, high, v, more)


def more_rounds(d: list[float], est: float, lo: float, hi: float, tolerance: float,
                alpha_side: float) -> int | None:
    """Rounds to add so that the interval would clear the tolerance on one side: inside
    +-tolerance when the estimate is inside it, beyond it otherwise. An interval's width shrinks
    as 1/sqrt(n), so from the interval seen now (the observed spread, outliers included) the
    rounds needed are n x (width now / width that would decide)^2. With too few rounds for the
    level (unbounded interval) the width comes from the normal approximation, z x sd x
    sqrt(pi/3) / sqrt(n) (pi/3: the Hodges-Lehmann estimate's variance relative to the mean's).
    None when the estimate sits on the tolerance (no number of rounds decides) or d has no
    spread."""
    n = len(d)
    t_hi, t_lo = math.log1p(tolerance), math.log1p(-tolerance) if tolerance < 1 else -math.inf
    floor = min_rounds(alpha_side)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        sd = robust_sd(d)
        if not math.isfinite(sd) or sd == 0:
            return floor - n if n < floor else None
        half = statistics.NormalDist().inv_cdf(1 - alpha_side) * sd * math.sqrt(math.pi / 3)
        half /= math.sqrt(n)
        lo, hi = est - half, est + half
    factors = []
    if t_lo < est < t_hi:      # to become `same`, both ends must come inside
        if hi > t_hi:
            factors.append((hi - est) / (t_hi - est))
        if lo < t_lo:
            factors.append((est - lo) / (est - t_lo))
    elif est >= t_hi:          # to become regressed/improved, the lower end must pass t_hi
        factors.append((est - lo) / (est - t_hi) if est - t_hi > 1e-4 else math.inf)
    else:
        factors.append((hi - est) / (t_lo - est) if t_lo - est > 1e-4 else math.inf)
    f = max(factors, default=1.0)
    if not math.isfinite(f) or f > 100:
        return None
    return max(math.ceil(n * f * f), floor, n + 1) - n


def log_ratios(base: list[float | None], candidate: list[float | None]) -> list[float]:
    """ln(candidate/base) of every round where both samples exist and are positive."""
    return [math.log(b / a) for a, b in zip(base, candidate)
            if a is not None and b is not None and a > 0 and b > 0]
