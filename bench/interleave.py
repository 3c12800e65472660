#!/usr/bin/env python3
"""Interleaved start-up medians: ROUNDS rounds, each running every command once in turn
(posix_spawn + wait, stdout on /dev/null), so a loaded or drifting machine disturbs every
command alike; prints each median and its ratio to the first command's.

    bench/interleave.py ROUNDS 'CMD ARGS...' 'CMD ARGS...' ...

Commands are split on spaces (no shell). Used for the before/after rows in docs/BENCHMARKS.md
where hyperfine's one-command-after-another runs moved more than the difference measured."""
import os
import statistics
import sys
import time


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rounds, cmds = int(sys.argv[1]), [c.split() for c in sys.argv[2:]]
    times = [[] for _ in cmds]
    null = os.open(os.devnull, os.O_WRONLY)
    actions = [(os.POSIX_SPAWN_DUP2, null, 1)]
    for _ in range(rounds):
        for i, argv in enumerate(cmds):
            t0 = time.perf_counter_ns()
            pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
            _, status = os.waitpid(pid, 0)
            times[i].append(time.perf_counter_ns() - t0)
            if status != 0:
                sys.exit(f"interleave: {' '.join(argv)} failed (wait status {status})")
    base = statistics.median(times[0])
    for argv, t in zip(cmds, times):
        m = statistics.median(t)
        print(f"{m / 1e6:8.3f} ms  {m / base:5.2f}x  {' '.join(argv)}")


if __name__ == "__main__":
    main()
