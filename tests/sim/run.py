"""Run the simulation from the command line.

    .venv/bin/python -m tests.sim.run --seed 1234            # replay one seed, with its trace
    .venv/bin/python -m tests.sim.run --seeds 100000         # the long run: seeds 0..99999
    .venv/bin/python -m tests.sim.run --seeds 1000 --start 5000 --mutation answer_before_commit
    .venv/bin/python -m tests.sim.run --seeds 2000 --zombie [--unfenced]   # the unfenced-writer hazard

The long run prints progress and stops at the first failure, printing its seed; exit status 1.
"""

import argparse
import sys
import time

from .sim import MUTATIONS, simulate
from .world import SimFailure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="run this one seed verbosely")
    which.add_argument("--seeds", type=int, help="run this many seeds, from --start")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--mutation", choices=MUTATIONS, help="run a deliberately broken shard")
    ap.add_argument("--zombie", action="store_true",
                    help="hazard: a dead actor's last COMMIT may land after its successor loaded")
    ap.add_argument("--unfenced", action="store_true",
                    help="the journal writer before its fix: head updates not conditional on the expected lsn")
    ap.add_argument("--every", type=int, default=1000, help="progress line every N seeds")
    args = ap.parse_args(argv)
    if args.seed is not None:
        try:
            stats = simulate(args.seed, mutation=args.mutation, verbose=True, zombie=args.zombie,
                             fenced=not args.unfenced)
        except SimFailure as f:
            print(f"\nFAIL {f}", file=sys.stderr)
            return 1
        print(f"\nok {stats}")
        return 0
    started = time.perf_counter()
    events = 0
    for i, seed in enumerate(range(args.start, args.start + args.seeds), 1):
        try:
            events += simulate(seed, mutation=args.mutation, zombie=args.zombie, fenced=not args.unfenced).events
        except SimFailure as f:
            print(f"\nFAIL after {i - 1} passing seeds: {f}", file=sys.stderr)
            return 1
        if i % args.every == 0 or i == args.seeds:
            s = time.perf_counter() - started
            print(f"{i}/{args.seeds} seeds ok ({i / s:.0f} seeds/s, {events / s:.0f} events/s, {s:.1f} s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
