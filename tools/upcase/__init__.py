"""upcase: the Python behind tools/ (tools/compare, tools/regress, tools/lab-cost,
tools/loadgen-efficiency, tools/quiet and the results/ drivers). The entry points parse their
flags and call in here; one module per concern:

- procfs      /proc and CPU sets: the one place that reads and parses /proc
- counters    perf stat and strace -c: what works here, counting a PID, parsing their output
- processes   child processes reaped by PID, the server until its ready line, upcase-load
- hosts       this machine (LOCAL) and another one through ssh (SshHost, RemotePerf)
- points      what a run measures (Point) and how it runs (RunSettings)
- runner      the point runner (one run's record) and Runner (a sequence, saved as runs/*.json)
- build       the tree, its binaries, the backends they offer, the release build
- units       sizes, counts and durations as printed and parsed
- errors      the one-line exceptions (HarnessError, ToolExit, ...)
- plan        tools/compare's matrices, matrix and placement flags
- compare     tools/compare's steps: plan, environment, run, report
- summary     from runs/*.json to medians, ratios and shard scaling
- hdr         upcase-load's HdrHistogram latency spectra
- plots       the comparison's plots
- report      report.md and the terminal tables
- regress/    tools/regress: ab, stats, verdicts, base, check, baseline
- labcost     tools/lab-cost's measurement
- efficiency  tools/loadgen-efficiency's measurement
"""
