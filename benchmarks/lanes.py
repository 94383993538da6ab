"""The test lanes' wall-clock goals, measured here rather than asserted in a test a loaded machine would fail.

    .venv/bin/python benchmarks/lanes.py check                       # `make check` against its 90 s goal
    .venv/bin/python benchmarks/lanes.py workers integration         # the lane with 2 xdist workers vs none
    .venv/bin/python benchmarks/lanes.py workers unit --rounds 2 -- -k theory
    .venv/bin/python benchmarks/lanes.py workers integration --counts 2 3   # two workers vs three

``check`` runs `make check` (after `make setup`) and prints its time as a ratio
of the 90 s goal; exit 1 if it fails or misses the goal. ``workers`` runs one
lane through tools/lanes.py with ``EO_TEST_WORKERS=0`` and ``=2`` (or ``--counts``) alternately,
round after round, so both see the same machine, and prints the median of
each and their ratio; exit 1 if a run fails. Each run of a lane that needs a
stack starts its own, inside the time measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK_GOAL_SECONDS = 90.0


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[int, float]:
    """Run ``command`` in the checkout; (exit code, seconds)."""
    started = time.monotonic()
    code = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return code, time.monotonic() - started


def check() -> int:
    """`make check` against its goal."""
    code, _ = timed(["make", "setup"])
    if code:
        print("make setup failed", file=sys.stderr)
        return 1
    code, seconds = timed(["make", "check"])
    print(f"make check: {'passed' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s, "
          f"{seconds / CHECK_GOAL_SECONDS:.2f} of its {CHECK_GOAL_SECONDS:.0f} s goal")
    if code == 0 and seconds > CHECK_GOAL_SECONDS:
        print(f"make check took {seconds:.0f} s: over its {CHECK_GOAL_SECONDS:.0f} s goal", file=sys.stderr)
    return 0 if code == 0 and seconds <= CHECK_GOAL_SECONDS else 1


def workers(lane: str, rounds: int, extra: list[str], counts: tuple[int, int] = (0, 2)) -> int:
    """The lane with ``counts[1]`` xdist workers against ``counts[0]``, alternately; medians and their ratio."""
    command = [sys.executable, "tools/lanes.py", lane, *(["--", *extra] if extra else [])]
    times: dict[int, list[float]] = {n: [] for n in counts}
    for round_no in range(rounds):
        for n in counts if round_no % 2 == 0 else counts[::-1]:
            code, seconds = timed(command, {"EO_TEST_WORKERS": str(n)})
            print(f"round {round_no + 1}: {lane} with {n} workers: {seconds:.0f} s (exit {code})", flush=True)
            if code:
                return 1
            times[n].append(seconds)
    first, second = (statistics.median(times[n]) for n in counts)
    print(f"median: {counts[0]} workers {first:.0f} s, {counts[1]} workers {second:.0f} s; "
          f"ratio {counts[0]} / {counts[1]}: {first / second:.2f}x ({os.cpu_count()} cores here)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("check", help="make check against its goal")
    lanes = sub.add_parser("workers", help="a lane with two xdist workers vs none (or --counts A B)")
    lanes.add_argument("lane", choices=["unit", "integration", "notebooks", "browser"])
    lanes.add_argument("--rounds", type=int, default=1)
    lanes.add_argument("--counts", type=int, nargs=2, default=(0, 2), metavar=("A", "B"),
                       help="the two worker counts to compare (default: 0 2)")
    args = parser.parse_args(argv)
    return check() if args.what == "check" else workers(args.lane, args.rounds, extra, tuple(args.counts))


if __name__ == "__main__":
    sys.exit(main())
