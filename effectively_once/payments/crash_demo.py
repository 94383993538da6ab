"""``python -m effectively_once demo``: one crash scenario of the payment pipeline, end to end.

It produces a few charge messages, starts a consumer that SIGKILLs itself at
``--crash-at``, restarts it, waits until every message is settled, and prints
what happened to the money. The run has its own topic and its own shop and
provider databases; ``--keep`` leaves the databases for inspection.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from effectively_once.payments.consumer_settings import APIS, NAMED_LAYER_SETS, resolve_layers
from effectively_once.payments.lab import run_scenario
from effectively_once.payments.lab_reports import REPORT_KEYS, PaymentReport
from effectively_once.protocol import ALL_CRASH_POINTS, LAYERS
from effectively_once.run_results import RunRecord, record_run

HELP = "run one crash scenario of the payment pipeline and report duplicate and lost charges"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` command's options."""
    parser.add_argument("--crash-at", choices=(*ALL_CRASH_POINTS, "none"), default="after_provider_call",
                        help="where the consumer kills itself with SIGKILL (default: after_provider_call; the "
                             "after_intent_* points are the PaymentIntent path's)")
    parser.add_argument("--api", choices=APIS, default="payment_intents",
                        help="the consumer's path: a PaymentIntent created, its id stored, then confirmed "
                             "(default), or one charge call")
    parser.add_argument("--layers", default="both",
                        help=f"a layer set ({', '.join(NAMED_LAYER_SETS)}) or a comma list of "
                             f"{', '.join(LAYERS)} (default: both)")
    parser.add_argument("--messages", type=int, default=5, help="how many charge messages (default: 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expire-keys", action="store_true",
                        help="age the provider's idempotency keys past their TTL before the restart")
    parser.add_argument("--keep", action="store_true", help="keep the run's databases and topics for inspection")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--backend", default="auto", help="backend to start if no stack is running")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds each consumer may take before the run is called stuck (default: 120)")


def render(report: PaymentReport, keep: bool) -> str:
    """The report as a few lines of text."""
    lines = [f"layers {','.join(report.layers) or 'none'}, crash at {report.crash_at or 'nowhere'}"]
    lines += [f"  {key:<18} {getattr(report, key)}" for key in REPORT_KEYS]
    if report.ok:
        lines.append("every message was charged exactly once")
    if report.duplicated:
        lines.append("charged more than once: " + ", ".join(report.duplicated))
    if report.lost:
        lines.append("never charged: " + ", ".join(report.lost))
    if keep:
        lines.append(f"shop database:     {report.shop_dsn}")
        lines.append(f"provider database: {report.provider_dsn}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the scenario; exit 0 whatever the counts, 1 only when it could not run."""
    from effectively_once import stack as stack_mod

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        layers = resolve_layers(args.layers)
    except ValueError as exc:
        note(str(exc))
        return 2
    if args.messages < 1:
        note("--messages must be at least 1")
        return 2
    if args.timeout <= 0:
        note("--timeout must be a positive number of seconds")
        return 2
    try:
        stack = stack_mod.attach_or_start(args.backend, progress=note)
    except Exception as exc:
        note(f"No stack to run the demo on: {exc}")
        return 1
    crash_at = None if args.crash_at == "none" else args.crash_at
    started = time.monotonic()
    try:
        report = run_scenario(stack, crash_at, layers, args.messages, seed=args.seed, keep=args.keep,
                              expire_keys=args.expire_keys, timeout=args.timeout,
                              consumer_options={"api": args.api})
    except Exception as exc:
        note(f"The scenario could not run: {exc}")
        _record(stack, RunRecord("demo", time.time(), time.monotonic() - started, ok=False, crash_at=crash_at,
                                 layers=tuple(layers), messages=args.messages, error=str(exc).splitlines()[0]),
                note)
        if stack.owned:
            stack.stop()
        return 1
    _record(stack, RunRecord("demo", time.time(), time.monotonic() - started, ok=report.ok, crash_at=crash_at,
                             layers=tuple(report.layers), messages=report.messages, charges=report.charges,
                             duplicate_charges=report.duplicate_charges, lost_charges=report.lost_charges), note)
    if stack.owned:
        stack.stop()
    if args.json:
        print(json.dumps({**report.as_dict(), "shop_dsn": report.shop_dsn, "provider_dsn": report.provider_dsn}))
    else:
        print(render(report, args.keep))
    return 0


def _record(stack, record: RunRecord, note) -> None:
    """Keep the run's result in the learner's runs topic (``effectively_once.runs``), for ``workshop status``."""
    why = record_run(stack.kafka_bootstrap, stack.namespace, record)
    if why is not None:
        note(f"(the run's result was not recorded for the instructor: {why})")
