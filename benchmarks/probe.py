"""How long the guarantee probe takes on the broker at hand, against its goal of a minute.

The probe (``effectively_once.guarantees.probe``: the idempotent producer,
read_committed, the zombie fence, stale generations) is what notebook 03 and
``python -m effectively_once probe`` run, so a learner waits for it. Each round
times the whole probe; the script prints the median and its ratio to the 60 s
goal, and exits 1 if the median misses the goal or a check could not run.

    .venv/bin/python benchmarks/probe.py [--rounds 3] [--backend embedded]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from effectively_once import guarantees
from effectively_once import stack as stack_mod

GOAL_SECONDS = 60.0


def main(argv: list[str] | None = None) -> int:
    """Run the probe ``--rounds`` times on a private stack; print the times and the ratio to the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="embedded")
    args = parser.parse_args(argv)
    with stack_mod.start(args.backend, progress=lambda *a: print(*a, file=sys.stderr)) as stack:
        totals: list[float] = []
        for round_no in range(args.rounds):
            report = guarantees.probe(stack)
            failed = [c.guarantee for c in report.checks if "could not complete" in c.evidence]
            if failed:
                print(f"checks that could not run: {failed}", file=sys.stderr)
                return 1
            totals.append(report.seconds)
            print(f"round {round_no + 1}: {report.seconds:.1f} s on {report.broker_flavor}", flush=True)
        median = statistics.median(totals)
        print(f"median probe: {median:.1f} s, {median / GOAL_SECONDS:.2f} of the {GOAL_SECONDS:.0f} s goal")
    if median >= GOAL_SECONDS:
        print(f"the probe took {median:.1f} s: over its {GOAL_SECONDS:.0f} s goal", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
