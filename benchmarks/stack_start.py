"""How long the embedded stack takes from nothing to ready, against the floor.

Ready means: the broker answers a metadata request and PostgreSQL answers
``select 1``. The floor is a bare PostgreSQL ``initdb`` + start with the same
binaries, the least any stack with a fresh database can take. Both are measured
alternately in one run (this machine is noisy; only the ratio is comparable
between runs). Goal: at most 1.5x.

    .venv/bin/python benchmarks/stack_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from effectively_once import stack as stack_mod
from effectively_once.stack.embedded import EmbeddedPostgres


def time_stack(base: Path) -> float:
    started = time.perf_counter()
    running = stack_mod.start("embedded", root=Path(tempfile.mkdtemp(dir=base)), progress=lambda *_: None)
    health = running.health()
    elapsed = time.perf_counter() - started
    assert health["broker"] and health["postgres"], health
    running.stop()
    return elapsed


def time_floor(base: Path) -> float:
    started = time.perf_counter()
    postgres = EmbeddedPostgres(Path(tempfile.mkdtemp(dir=base)))
    postgres.initdb()
    postgres.start()
    elapsed = time.perf_counter() - started
    postgres.stop()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="eo-bench-"))
    base.chmod(0o755)
    time_floor(base)  # warm the page cache for the binaries once, outside the measurement
    stack_times, floor_times = [], []
    for round_no in range(args.rounds):
        floor_times.append(time_floor(base))
        stack_times.append(time_stack(base))
        print(f"round {round_no + 1}: floor {floor_times[-1]:.2f} s, embedded stack {stack_times[-1]:.2f} s",
              flush=True)
    floor, stack = statistics.median(floor_times), statistics.median(stack_times)
    ratio = stack / floor
    print(f"median floor (initdb + start PostgreSQL): {floor:.2f} s")
    print(f"median embedded stack (PostgreSQL + Tansu, ready): {stack:.2f} s")
    print(f"ratio stack / floor: {ratio:.2f}x (goal <= 1.5x)")
    import shutil

    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
