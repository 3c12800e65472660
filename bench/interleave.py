#!/usr/bin/env python3
"""Interleaved start-up medians: ROUNDS rounds, each running every command once in turn
(posix_spawn + wait, stdout on /dev/null), so a loaded or drifting machine disturbs every
command alike; prints each median and its ratio to the first command's.

    bench/interleave.py [--json FILE] [-n NAME]... ROUNDS 'CMD ARGS...' 'CMD ARGS...' ...

Commands are split on spaces (no shell). --json writes hyperfine's layout ({"results": [{"command":
NAME, "median", "mean", "stddev", "times" in seconds, "exit_codes"}]}) for bench/measure.py; -n names the
commands in order (default: the command line). A failed run is kept and reported, as hyperfine -i
does. Used where hyperfine's one-command-after-another runs drift more on this VM than the
differences measured: the cache-start floor rows, the corpus's bun rows, before/after rows in
docs/BENCHMARKS.md."""
import argparse
import json
import os
import statistics
import sys
import time


def measure(rounds, cmds):
    """Per command: (times in ns, exit statuses)."""
    times = [[] for _ in cmds]
    codes = [[] for _ in cmds]
    null = os.open(os.devnull, os.O_WRONLY)
    actions = [(os.POSIX_SPAWN_DUP2, null, 1)]
    for _ in range(rounds):
        for i, argv in enumerate(cmds):
            t0 = time.perf_counter_ns()
            pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
            _, status = os.waitpid(pid, 0)
            times[i].append(time.perf_counter_ns() - t0)
            codes[i].append(os.waitstatus_to_exitcode(status))
    return times, codes


def main():
    p = argparse.ArgumentParser(usage=__doc__)
    p.add_argument("--json")
    p.add_argument("-n", dest="names", action="append", default=[])
    p.add_argument("rounds", type=int)
    p.add_argument("cmds", nargs="+")
    a = p.parse_args()
    cmds = [c.split() for c in a.cmds]
    names = a.names + [" ".join(c) for c in cmds[len(a.names):]]
    times, codes = measure(a.rounds, cmds)
    base = statistics.median(times[0])
    for name, t, c in zip(names, times, codes):
        m = statistics.median(t)
        failed = sum(1 for x in c if x != 0)
        print(f"{m / 1e6:8.3f} ms  {m / base:5.2f}x  {name}" + (f"  ({failed} runs failed)" if failed else ""))
    if a.json:
        results = [
            {"command": name, "median": statistics.median(t) / 1e9, "mean": statistics.mean(t) / 1e9,
             "stddev": statistics.pstdev(t) / 1e9, "times": [x / 1e9 for x in t], "exit_codes": c}
            for name, t, c in zip(names, times, codes)
        ]
        with open(a.json, "w") as f:
            json.dump({"results": results, "interleaved_rounds": a.rounds}, f)


if __name__ == "__main__":
    sys.exit(main())
