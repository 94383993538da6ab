"""What it costs to start a Python child that dies with its parent, from a parent as large as a notebook kernel.

Three ways to start the same child (``python -c pass``), alternated round after
round from one process holding ``--parent-mb`` of memory (a kernel with
pandas, matplotlib and a few clients holds a few hundred MB):

- plain ``subprocess.Popen``: the floor; the child does not die with its parent;
- ``lifetime.spawn``: the child asks for its parent-death signal itself
  (``effectively_once.die_with_parent``), so Popen keeps its cheap ``vfork()``;
- a ``preexec_fn`` that asks for it between fork and exec, which makes Popen
  ``fork()`` the whole parent (what ``spawn`` still does for the JVM and PostgreSQL).

Prints the median time of each and the ratios to the floor. Linux only.

    .venv/bin/python benchmarks/spawn.py [--parent-mb 400] [--rounds 7] [--children 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from effectively_once import lifetime

CHILD = [sys.executable, "-c", "pass"]


def seconds_per_child(start, children: int) -> float:
    began = time.perf_counter()
    for _ in range(children):
        start(CHILD).wait()
    return (time.perf_counter() - began) / children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent-mb", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--children", type=int, default=5)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("the parent-death signal is Linux's: nothing to measure here")
        return 0
    ballast = bytearray(args.parent_mb * 2**20)
    for i in range(0, len(ballast), 4096):  # touch every page, as a kernel's heap is
        ballast[i] = 1
    preexec = lifetime._parent_death_signal(lifetime.SIGKILL)
    ways = {
        "plain Popen": lambda argv: subprocess.Popen(argv, start_new_session=True),
        "lifetime.spawn": lambda argv: lifetime.spawn(argv, start_new_session=True),
        "preexec_fn": lambda argv: lifetime._SPAWNER.call(
            lambda: subprocess.Popen(argv, start_new_session=True, preexec_fn=preexec)),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for number in range(args.rounds):
        for name, start in ways.items():
            times[name].append(seconds_per_child(start, args.children))
        print(f"round {number + 1}: " + ", ".join(f"{n} {t[-1] * 1000:.0f} ms" for n, t in times.items()), flush=True)
    floor = statistics.median(times["plain Popen"])
    print(f"\nmedian per child, from a {args.parent_mb} MB parent:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<15} {median * 1000:6.0f} ms  {median / floor:4.2f}x the plain Popen")
    return 0


if __name__ == "__main__":
    sys.exit(main())
