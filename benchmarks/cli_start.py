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

import sys

from consumer_start import compare

NOW = [sys.executable, "-m", "effectively_once", "status", "--help"]
BEFORE = [sys.executable, "-c",
          "from effectively_once import cli; cli.build_parser(None).parse_args(['status', '--help'])"]


if __name__ == "__main__":
    sys.exit(compare(BEFORE, NOW, __doc__))
