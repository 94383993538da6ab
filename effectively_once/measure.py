"""Measurements on the broker at hand: what the idempotent producer costs.

``measure_idempotence_cost(stack)`` produces the same seeded charge messages
with ``enable.idempotence=true`` and with it off, both with ``acks=all``,
alternating the two modes round after round, and reports the median throughput
of each and their ratio. A single run on a shared machine is noise; the ratio
of medians measured side by side is the number worth reading.

What differs between the modes is the producer id, the sequence numbers and
the cap on requests in flight: with idempotence on, librdkafka allows at most
five per connection; with it off, its default (1,000,000) applies. There is no
``transactional.id`` and no transaction in either mode. The often-quoted "3%"
is another measurement: Confluent's 2017 benchmark of a *transactional*
producer (1 KB messages, 100 ms transactions) against an ``acks=all`` producer
with one request in flight,
https://www.confluent.io/blog/exactly-once-semantics-are-possible-heres-how-apache-kafka-does-it/

    .venv/bin/python -m effectively_once.measure [--messages 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from effectively_once import stack as stack_mod
from effectively_once.payments.producer import charge_records, producer_config

IDEMPOTENT = "idempotent"
PLAIN = "not idempotent"
FLUSH_TIMEOUT = 60.0


@dataclass(frozen=True)
class ProducerRun:
    """One timed batch: the mode, how many records were sent and acknowledged, and how long it took."""

    mode: str
    round: int
    sent: int
    acknowledged: int
    errors: list[str]
    seconds: float

    @property
    def per_second(self) -> float:
        """Acknowledged records per second."""
        return self.acknowledged / self.seconds if self.seconds > 0 else 0.0


@dataclass
class IdempotenceCost:
    """Every run of ``measure_idempotence_cost`` and what they add up to."""

    broker_flavor: str
    messages: int
    rounds: int
    runs: list[ProducerRun] = field(default_factory=list)

    def of(self, mode: str) -> list[ProducerRun]:
        """The runs in ``mode`` (``IDEMPOTENT`` or ``PLAIN``), in the order they ran."""
        return [run for run in self.runs if run.mode == mode]

    def median_per_second(self, mode: str) -> float:
        """The median throughput (acknowledged records per second) of the runs in ``mode``."""
        return statistics.median(run.per_second for run in self.of(mode))

    @property
    def ratio(self) -> float:
        """Idempotent throughput over non-idempotent throughput (1.0 = idempotence is free)."""
        return self.median_per_second(IDEMPOTENT) / self.median_per_second(PLAIN)

    @property
    def cost_percent(self) -> float:
        """Throughput lost to idempotence, in percent (negative when the idempotent runs were faster)."""
        return (1.0 - self.ratio) * 100.0

    def round_ratios(self) -> list[float]:
        """Idempotent over non-idempotent throughput within each round: their spread shows the noise."""
        ratios = []
        for round_no in range(1, self.rounds + 1):
            pair = {run.mode: run.per_second for run in self.runs if run.round == round_no}
            if pair.get(PLAIN):
                ratios.append(pair.get(IDEMPOTENT, 0.0) / pair[PLAIN])
        return ratios

    @property
    def all_acknowledged(self) -> bool:
        """True when every record of every run was acknowledged without an error."""
        return all(run.acknowledged == run.sent and not run.errors for run in self.runs)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (what ``--json`` prints)."""
        return {"broker_flavor": self.broker_flavor, "messages": self.messages, "rounds": self.rounds,
                "median_per_second": {mode: round(self.median_per_second(mode)) for mode in (IDEMPOTENT, PLAIN)},
                "ratio": round(self.ratio, 3), "cost_percent": round(self.cost_percent, 1),
                "round_ratios": [round(r, 3) for r in self.round_ratios()],
                "all_acknowledged": self.all_acknowledged,
                "runs": [dict(asdict(run), per_second=round(run.per_second)) for run in self.runs]}

    def as_text(self) -> str:
        """A short table: one line per run, then the medians and the ratio."""
        lines = [f"{self.messages} charge messages per run, acks=all in both modes, broker {self.broker_flavor}",
                 f"{'round':>5}  {'mode':<15} {'acknowledged':>12} {'seconds':>8} {'msg/s':>9}"]
        for run in self.runs:
            lines.append(f"{run.round:>5}  {run.mode:<15} {run.acknowledged:>12} {run.seconds:>8.3f} "
                         f"{run.per_second:>9,.0f}")
        idem, plain = self.median_per_second(IDEMPOTENT), self.median_per_second(PLAIN)
        lines.append(f"median: idempotent {idem:,.0f} msg/s, not idempotent {plain:,.0f} msg/s")
        lines.append(f"ratio idempotent / not idempotent = {self.ratio:.3f} "
                     f"(idempotence costs {self.cost_percent:+.1f}% throughput here)")
        spread = self.round_ratios()
        if len(spread) > 1:
            lines.append(f"the same ratio within each round ranged from {min(spread):.3f} to {max(spread):.3f}: "
                         "differences inside that range are noise")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return "<pre>" + self.as_text() + "</pre>"


def _timed_run(bootstrap: str, topic: str, records: list, mode: str, round_no: int) -> ProducerRun:
    """Produce ``records`` with a warmed-up producer in ``mode``; time from the first send to the last ack."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(bootstrap, idempotent=(mode == IDEMPOTENT)))
    # The connection, the metadata and (when idempotent) the producer id are fetched once per producer:
    # pay for them before the clock starts, so the runs compare steady-state sending only.
    producer.produce(topic, value=b"warm-up")
    if producer.flush(FLUSH_TIMEOUT):
        raise RuntimeError(f"the broker did not acknowledge a warm-up record within {FLUSH_TIMEOUT:.0f} s")
    acknowledged = 0
    errors: list[str] = []

    def delivered(err, _msg):
        nonlocal acknowledged
        if err is None:
            acknowledged += 1
        else:
            errors.append(err.name())

    started = time.perf_counter()
    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let acknowledgements drain first
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(FLUSH_TIMEOUT)
    seconds = time.perf_counter() - started
    if left:
        errors.append(f"{left} record(s) still unacknowledged after {FLUSH_TIMEOUT:.0f} s")
    return ProducerRun(mode, round_no, len(records), acknowledged, errors, seconds)


def measure_idempotence_cost(stack: stack_mod.Stack, *, messages: int = 5000, rounds: int = 5, seed: int = 0,
                             progress: Callable[[str], None] | None = None) -> IdempotenceCost:
    """Throughput of an idempotent vs a non-idempotent ``acks=all`` producer on ``stack``'s broker.

    Each of ``rounds`` rounds runs both modes on the same ``messages`` seeded
    charge records; the order alternates between rounds so that neither mode
    always goes first. Uses its own topic (one partition) and deletes it.
    """
    if messages < 1:
        raise ValueError(f"messages must be at least 1, got {messages}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    run_id = stack_mod.new_run_id()
    topic = stack.create_topic(f"idempotence-cost-{run_id}", partitions=1)
    records = charge_records(messages, seed=seed, prefix=f"cost-{seed}")
    result = IdempotenceCost(stack.broker_flavor, messages, rounds)
    try:
        for round_no in range(1, rounds + 1):
            order = (IDEMPOTENT, PLAIN) if round_no % 2 else (PLAIN, IDEMPOTENT)
            for mode in order:
                if progress:
                    progress(f"round {round_no}/{rounds}: producing {messages} records, {mode}")
                result.runs.append(_timed_run(stack.kafka_bootstrap, topic, records, mode, round_no))
    finally:
        stack.delete_topics(topic)
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure on the running stack (or a private one) and print the table and the ratio."""
    import json

    parser = argparse.ArgumentParser(prog="python -m effectively_once.measure",
                                     description="What the idempotent producer costs on the broker at hand.")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    try:
        with stack_mod.command_stack() as running:
            cost = measure_idempotence_cost(running, messages=args.messages, rounds=args.rounds,
                                            progress=stack_mod.to_stderr)
    except stack_mod.StackError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(cost.as_dict()) if args.json else cost.as_text())
    return 0 if cost.all_acknowledged else 1


if __name__ == "__main__":
    sys.exit(main())
