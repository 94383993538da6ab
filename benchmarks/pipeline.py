"""What the safety costs, measured side by side in one run on one broker and one provider.

(a) consumer throughput with both layers (dedup table + Idempotency-Key) vs with none, on the one-shot path;
(b) the idempotent producer (enable.idempotence, acks=all) vs a non-idempotent one (acks=all);
(c) the consumer on the official Stripe SDK vs the consumer's client before it (httpx, JSON bodies):
    the one-shot charge through each, and the SDK on the PaymentIntent path (create, store the id,
    confirm), all with both layers, dedup per message. ``--only sdk`` runs (c) alone.

    python benchmarks/pipeline.py [--messages 1000] [--producer-messages 20000] [--rounds 3] [--backend tansu]

Runs on the stack ``python -m effectively_once up`` started, or on one it starts
and stops. Consumer throughput is timed on a warmed-up consumer, from just before the
measured messages are produced to the last one's charge event, so process
start-up and group joins do not count. Rounds alternate the two sides so that drift on a shared machine hits both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from effectively_once import stack as stack_mod  # noqa: E402
from effectively_once.measure import IDEMPOTENT, PLAIN, measure_idempotence_cost  # noqa: E402
from effectively_once.payments.children import ProviderProcess  # noqa: E402
from effectively_once.payments.lab import PaymentLab  # noqa: E402

HTTPX, SDK_ONE_SHOT, SDK_INTENTS = "httpx, one-shot", "SDK, one-shot", "SDK, PaymentIntent"
# (c)'s consumers: the step each runs (None: the default step of its api) and its api.
CLIENTS = {HTTPX: ("httpx_baseline:process_charge_httpx", "charges"), SDK_ONE_SHOT: (None, "charges"),
           SDK_INTENTS: (None, "payment_intents")}


def consumer_rate(stack: stack_mod.Stack, provider: ProviderProcess, shop_dsn: str, variant: str,
                  messages: int) -> float:
    """Charges per second of a warmed-up consumer over ``messages`` fresh messages.

    One message first warms the consumer up (group joined, provider connection
    open). The clock then starts in PostgreSQL, the clock the consumer stamps its
    events with, just before the measured messages are produced, and stops at the
    last one's event. Every charge falls inside that interval, so batching the
    dedup work cannot hide any of it (stamping each batch's events after the batch
    would, if the interval started at the first event).
    """
    layers = "none" if variant == "none" else "both"
    step, api = CLIENTS.get(variant, (None, "charges"))
    with PaymentLab(stack, layers, provider=provider, shop_dsn=shop_dsn, api=api) as lab, \
            psycopg.connect(shop_dsn, autocommit=True) as conn:
        lab.produce(1, seed=1)
        consumer = lab.start_consumer(exit_when_idle=2.0, batch_dedup=variant == "both, per poll", step=step)
        charged = "SELECT count(*), max(created_at) FROM consumer_events WHERE topic = %s AND result = 'charged'"
        deadline = time.monotonic() + 60
        while conn.execute(charged, (lab.topic,)).fetchone()[0] < 1:
            if time.monotonic() > deadline or not consumer.running:
                raise RuntimeError(f"the consumer never charged the warm-up message:\n{consumer.log_tail()}")
            time.sleep(0.02)
        started = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        lab.produce(messages, seed=2)
        if consumer.wait(600) != 0:
            raise RuntimeError(f"the consumer failed:\n{consumer.log_tail()}")
        count, last = conn.execute(charged, (lab.topic,)).fetchone()
        report = lab.report()
    if count != messages + 1 or not report.ok:
        raise RuntimeError(f"{layers}: {count} of {messages + 1} charged; {report}")
    return messages / (last - started).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="charge messages per consumer run")
    parser.add_argument("--producer-messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="auto",
                        help="with no running stack, start this one (embedded: Apache Kafka; tansu: Tansu)")
    parser.add_argument("--only", choices=("sdk",), default=None, help="run only (c), the SDK against httpx")
    args = parser.parse_args(argv)
    # The consumers import the httpx baseline step from this directory.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent),
                                                           os.environ.get("PYTHONPATH")) if p)
    stack = stack_mod.attach_or_start(args.backend, progress=lambda s: print(s, file=sys.stderr))
    run = stack_mod.new_run_id()
    provider_dsn = stack.create_database(f"bench_provider_{run}")
    shop_dsn = stack.create_database(f"bench_shop_{run}")
    consumers = (HTTPX, SDK_ONE_SHOT, SDK_INTENTS)
    if args.only is None:
        consumers = ("none", "both, per message", "both, per poll", *consumers)
    cost = None
    try:
        with ProviderProcess(provider_dsn) as provider:
            rates: dict[str, list[float]] = {v: [] for v in consumers}
            for round_no in range(args.rounds):
                order = consumers if round_no % 2 == 0 else tuple(reversed(consumers))
                for variant in order:
                    rates[variant].append(consumer_rate(stack, provider, shop_dsn, variant, args.messages))
                    print(f"  consumer, layers {variant:<18} round {round_no + 1}: {rates[variant][-1]:7.1f} msg/s",
                          file=sys.stderr)
        # (b) shares its code with notebook 03: both sides warmed up, modes alternated round by round.
        if args.only is None:
            cost = measure_idempotence_cost(stack, messages=args.producer_messages, rounds=args.rounds,
                                            progress=lambda s: print(f"  producer, {s}", file=sys.stderr))
    finally:
        stack.drop_database(f"bench_provider_{run}")
        stack.drop_database(f"bench_shop_{run}")
        if stack.owned:
            stack.stop()
    c = {v: statistics.median(r) for v, r in rates.items()}
    print(f"broker: {stack.broker_flavor}; medians of {args.rounds} rounds")
    if cost is not None:
        print(f"(a) consumer, {args.messages} messages: none {c['none']:.1f} msg/s; both layers per message "
              f"{c['both, per message']:.1f} msg/s; both layers, dedup per poll {c['both, per poll']:.1f} msg/s")
        print(f"    ratio both/none = {c['both, per poll'] / c['none']:.2f} (dedup per poll), "
              f"{c['both, per message'] / c['none']:.2f} (dedup per message)")
        low, high = min(cost.round_ratios()), max(cost.round_ratios())
        print(f"(b) producer, {args.producer_messages} messages: non-idempotent "
              f"{cost.median_per_second(PLAIN):.0f} msg/s, idempotent {cost.median_per_second(IDEMPOTENT):.0f} msg/s")
        print(f"    ratio idempotent/non-idempotent = {cost.ratio:.2f} (per-round ratios {low:.2f} to {high:.2f})")
    print(f"(c) consumer, {args.messages} messages, both layers: {HTTPX} {c[HTTPX]:.1f} msg/s; {SDK_ONE_SHOT} "
          f"{c[SDK_ONE_SHOT]:.1f} msg/s; {SDK_INTENTS} {c[SDK_INTENTS]:.1f} msg/s")
    ratios = [a / b for a, b in zip(rates[SDK_ONE_SHOT], rates[HTTPX], strict=True)]
    print(f"    ratio SDK/httpx, one-shot = {c[SDK_ONE_SHOT] / c[HTTPX]:.2f} (per-round ratios "
          f"{min(ratios):.2f} to {max(ratios):.2f}); SDK PaymentIntent/httpx one-shot = "
          f"{c[SDK_INTENTS] / c[HTTPX]:.2f} (two calls per message, create and confirm, and one more UPDATE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
