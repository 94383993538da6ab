"""The probe's command line: ``python -m effectively_once probe [--json] [--only CHECK] [--strict]``.

The same runs as ``python -m effectively_once.guarantees``.
"""

from __future__ import annotations

import argparse
import json
import sys

from effectively_once import stack as stack_mod
from effectively_once.guarantees.broker_checks import CHECKS, probe

HELP = "check live which Kafka guarantees the running broker gives"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m effectively_once probe``."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--only", action="append", choices=[name for name, _ in CHECKS], metavar="CHECK",
                        help="run only this check (repeatable): " + ", ".join(name for name, _ in CHECKS))
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any guarantee fails (by default the report is the result)")


def run(args: argparse.Namespace) -> int:
    """Probe the running stack (or start a private one) and print the report."""
    try:
        with stack_mod.command_stack() as stack:
            report = probe(stack, only=args.only, progress=stack_mod.to_stderr)
    except stack_mod.StackError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict()) if args.json else report.as_text())
    return 1 if args.strict and not report.all_hold else 0


def main(argv: list[str] | None = None) -> int:
    """The probe as a command of its own: ``python -m effectively_once.guarantees``."""
    parser = argparse.ArgumentParser(prog="python -m effectively_once.guarantees", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
