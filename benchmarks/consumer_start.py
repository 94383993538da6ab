"""What it costs to start the consumer program, as the crash matrix starts it dozens of times.

Two ways to start the same program (``python -m effectively_once.payments.consumer --help``,
which loads every module the consumer needs and exits), alternated round after round:

- as it starts now: the Stripe SDK is loaded with httpx hidden (see the top of ``payments/consumer.py``);
- as it started before: httpx imported first, as the SDK imports it when it is installed.

Prints the median wall-clock time and CPU time of one start of each, and their ratios.

    .venv/bin/python benchmarks/consumer_start.py [--rounds 7] [--starts 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

from effectively_once import lifetime

NOW = [sys.executable, "-m", "effectively_once.payments.consumer", "--help"]
BEFORE = [sys.executable, "-c",
          "import httpx, runpy, sys; sys.argv = ['consumer', '--help']; "
          "runpy.run_module('effectively_once.payments.consumer', run_name='__main__', alter_sys=True)"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_start(command: list[str], starts: int, **run: object) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one start, averaged over ``starts`` starts (``run``: more for subprocess.run)."""
    cpu, began = children_cpu(), time.perf_counter()
    for _ in range(starts):
        # lifetime.spawn: a start in progress dies with the benchmark, however the benchmark dies.
        child = lifetime.spawn(command, stdout=subprocess.DEVNULL, **run)
        if child.wait() != 0:
            raise SystemExit(f"{' '.join(command)} exited {child.returncode}")
    return (time.perf_counter() - began) / starts, (children_cpu() - cpu) / starts


def medians(results: dict[str, list[tuple[float, float]]]) -> tuple[dict[str, float], dict[str, float]]:
    """The median wall and CPU seconds of each way's rounds."""
    return ({name: statistics.median(r[0] for r in rows) for name, rows in results.items()},
            {name: statistics.median(r[1] for r in rows) for name, rows in results.items()})


def compare(before: list[str], now: list[str], doc: str) -> int:
    """Start ``before`` and ``now`` alternately, round after round; print the medians of one start and the ratios.

    The command line of a benchmark built on this one: ``--rounds`` and ``--starts``; ``doc`` is its docstring.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
    for round_no in range(args.rounds):
        order = (("before", before), ("now", now)) if round_no % 2 == 0 else (("now", now), ("before", before))
        for name, command in order:
            results[name].append(one_start(command, args.starts))
    wall, cpu = medians(results)
    for name in ("before", "now"):
        print(f"{name:<7} {wall[name] * 1000:6.0f} ms wall   {cpu[name] * 1000:6.0f} ms CPU   per start")
    print(f"now/before: {wall['now'] / wall['before']:.2f} wall, {cpu['now'] / cpu['before']:.2f} CPU "
          f"({args.rounds} rounds of {args.starts} starts each)")
    return 0


if __name__ == "__main__":
    sys.exit(compare(BEFORE, NOW, __doc__))
