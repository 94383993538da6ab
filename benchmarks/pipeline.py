"""What the safety costs, measured side by side in one run on one broker and one provider.

(a) consumer throughput with both layers (dedup table + Idempotency-Key) vs with none;
(b) the idempotent producer (enable.idempotence, acks=all) vs a non-idempotent one (acks=all).

    python benchmarks/pipeline.py [--messages 1000] [--producer-messages 20000] [--rounds 3]

Runs on the stack ``python -m effectively_once up`` started, or on one it starts
and stops. Consumer throughput is taken from the consumer's own event
timestamps (first to last charge), so process start-up and group joins do not
count. Rounds alternate the two sides so that drift on a shared machine hits both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from effectively_once import stack as stack_mod  # noqa: E402
from effectively_once.payments.children import ProviderProcess  # noqa: E402
from effectively_once.payments.lab import PaymentLab  # noqa: E402
from effectively_once.payments.producer import charge_records, send_records  # noqa: E402


def consumer_rate(stack, provider: ProviderProcess, shop_dsn: str, variant: str, messages: int) -> float:
    """Charges per second of one consumer over ``messages`` fresh messages."""
    layers = "none" if variant == "none" else "both"
    with PaymentLab(stack, layers, provider=provider, shop_dsn=shop_dsn) as lab:
        lab.produce(messages, seed=1)
        consumer = lab.start_consumer(exit_when_idle=1.0, batch_dedup=variant == "both, per poll")
        if consumer.wait(600) != 0:
            raise RuntimeError(f"the consumer failed:\n{consumer.log_tail()}")
        with psycopg.connect(shop_dsn) as conn:
            count, seconds = conn.execute(
                "SELECT count(*), extract(epoch FROM max(created_at) - min(created_at)) FROM consumer_events"
                " WHERE topic = %s AND result = 'charged'", (lab.topic,)).fetchone()
        report = lab.report()
    if count != messages or not report.ok:
        raise RuntimeError(f"{layers}: {count} of {messages} charged; {report}")
    return (count - 1) / float(seconds)


PRODUCERS = {
    "non-idempotent": (False, {}),
    "non-idempotent, 5 in flight": (False, {"max.in.flight.requests.per.connection": 5}),
    "idempotent": (True, {}),
}


def producer_rate(stack, variant: str, messages: int) -> float:
    """Messages per second of one producer, from the first send to the last acknowledgement."""
    idempotent, config = PRODUCERS[variant]
    topic = stack.create_topic(f"bench.producer.{stack_mod.new_run_id()}", partitions=3)
    records = charge_records(messages, seed=5, prefix="bench")
    try:
        started = time.perf_counter()
        send_records(stack, topic, records, idempotent=idempotent, config=config)
        return messages / (time.perf_counter() - started)
    finally:
        stack.delete_topics(topic)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="charge messages per consumer run")
    parser.add_argument("--producer-messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    stack = stack_mod.attach_or_start("auto", progress=lambda s: print(s, file=sys.stderr))
    run = stack_mod.new_run_id()
    provider_dsn = stack.create_database(f"bench_provider_{run}")
    shop_dsn = stack.create_database(f"bench_shop_{run}")
    consumers = ("none", "both, per message", "both, per poll")
    try:
        with ProviderProcess(provider_dsn) as provider:
            rates: dict[str, list[float]] = {v: [] for v in consumers}
            for round_no in range(args.rounds):
                order = consumers if round_no % 2 == 0 else tuple(reversed(consumers))
                for variant in order:
                    rates[variant].append(consumer_rate(stack, provider, shop_dsn, variant, args.messages))
                    print(f"  consumer, layers {variant:<18} round {round_no + 1}: {rates[variant][-1]:7.1f} msg/s",
                          file=sys.stderr)
        produced: dict[str, list[float]] = {v: [] for v in PRODUCERS}
        for round_no in range(args.rounds):
            order = tuple(PRODUCERS) if round_no % 2 == 0 else tuple(reversed(PRODUCERS))
            for variant in order:
                produced[variant].append(producer_rate(stack, variant, args.producer_messages))
                print(f"  producer, {variant:<28} round {round_no + 1}: {produced[variant][-1]:9.0f} msg/s",
                      file=sys.stderr)
    finally:
        stack.drop_database(f"bench_provider_{run}")
        stack.drop_database(f"bench_shop_{run}")
        if stack.owned:
            stack.stop()
    c = {v: statistics.median(r) for v, r in rates.items()}
    p = {v: statistics.median(r) for v, r in produced.items()}
    print(f"broker: {stack.broker_flavor}; medians of {args.rounds} rounds")
    print(f"(a) consumer, {args.messages} messages: none {c['none']:.1f} msg/s; both layers per message "
          f"{c['both, per message']:.1f} msg/s; both layers, dedup per poll {c['both, per poll']:.1f} msg/s")
    print(f"    ratio both/none = {c['both, per poll'] / c['none']:.2f} (dedup per poll), "
          f"{c['both, per message'] / c['none']:.2f} (dedup per message)")
    print(f"(b) producer, {args.producer_messages} messages: non-idempotent {p['non-idempotent']:.0f} msg/s "
          f"(capped at 5 in flight: {p['non-idempotent, 5 in flight']:.0f}), idempotent {p['idempotent']:.0f} msg/s")
    print(f"    ratio idempotent/non-idempotent = {p['idempotent'] / p['non-idempotent']:.2f}; "
          f"vs the same 5-in-flight cap = {p['idempotent'] / p['non-idempotent, 5 in flight']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
