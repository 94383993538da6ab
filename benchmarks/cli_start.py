"""What a course command costs to start, when the command line imports every command's module and when only its own.

Tests, notebooks and learners run ``python -m effectively_once status`` (``up``, ``down``, ``clean``...) over
and over. Two ways to start the same command (``status --help``, which builds the command line and exits),
alternated round after round:

- as it starts now: the plugin commands other than the one named are not imported (``cli.command_named``);
- as it started before: every plugin command's module imported to build the command line.

Prints the median wall-clock time and CPU time of one start of each, and their ratios.

    .venv/bin/python benchmarks/cli_start.py [--rounds 7] [--starts 5]
"""

from __future__ import annotations

import argparse
import sys

from consumer_start import medians, one_start

NOW = [sys.executable, "-m", "effectively_once", "status", "--help"]
BEFORE = [sys.executable, "-c",
          "from effectively_once import cli; cli.build_parser(None).parse_args(['status', '--help'])"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
    for round_no in range(args.rounds):
        for name in (("before", "now") if round_no % 2 == 0 else ("now", "before")):
            results[name].append(one_start(NOW if name == "now" else BEFORE, args.starts))
    wall, cpu = medians(results)
    for name in ("before", "now"):
        print(f"{name:<7} {wall[name] * 1000:6.0f} ms wall   {cpu[name] * 1000:6.0f} ms CPU   per start")
    print(f"now/before: {wall['now'] / wall['before']:.2f} wall, {cpu['now'] / cpu['before']:.2f} CPU "
          f"({args.rounds} rounds of {args.starts} starts each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
