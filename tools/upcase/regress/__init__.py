"""tools/regress's library: is a change slower than its base?

- ab        the A/B measurement: plan, interleaved rounds of both sides, disturbed pairs again
- stats     paired Hodges-Lehmann estimates, Wilcoxon signed-rank intervals, Bonferroni
- verdicts  each metric judged against its tolerance; report.md's table, regress.json's rows
- base      the base revision: choosing it, its git worktree and its build
- check     the A/B check end to end (what `tools/regress` runs by default), exit status
- baseline  --against-baseline / --update-baseline: ratios against bench/regress-baseline.json
"""
