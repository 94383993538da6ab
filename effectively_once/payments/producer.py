"""The shop's side: publish charge requests. ``python -m effectively_once.payments.producer``.

Each message: key = customer, value = JSON ``{"msg_id", "customer", "amount",
"currency"}``, headers ``msg_id`` and a W3C ``traceparent``. The producer is
idempotent (``enable.idempotence``, ``acks=all``) unless asked otherwise, which
only the benchmark does, to measure what idempotence costs.

With a spans file, each record also gets a ``send {topic}`` span of kind
PRODUCER whose context is the record's ``traceparent`` (see
``observe.spans.SendSpans``); the consumer's process span links to it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from effectively_once.payments.messages import new_traceparent
from effectively_once.progress import text_bar


@dataclass(frozen=True)
class Sent:
    """One record the broker acknowledged: which message, and where it landed."""

    msg_id: str | None
    partition: int
    offset: int


def charge_value(msg_id: str, customer: str, amount: int, currency: str = "usd") -> bytes:
    """The JSON value of a charge message."""
    return json.dumps({"msg_id": msg_id, "customer": customer, "amount": amount, "currency": currency}).encode()


def producer_config(bootstrap: str, *, idempotent: bool = True, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for the charge producer (idempotent, acks=all by default)."""
    from effectively_once.kafka import client_settings, quiet_logger

    config: dict[str, Any] = {"bootstrap.servers": bootstrap, **client_settings(), "linger.ms": 5,
                              "logger": quiet_logger()}
    if idempotent:
        config.update({"enable.idempotence": True, "acks": "all"})
    else:
        # The same durability (acks=all) without the sequence numbers: the only difference measured.
        config.update({"enable.idempotence": False, "acks": "all"})
    config.update(overrides)
    return config


def _bootstrap_of(target: Any) -> str:
    return target if isinstance(target, str) else target.kafka_bootstrap


def send_records(target: Any, topic: str, records: Sequence[tuple[bytes | None, bytes | None, list]], *,
                 idempotent: bool = True, progress: Callable[[int, int], None] | None = None,
                 timeout: float = 60.0, config: dict[str, Any] | None = None,
                 spans_file: str | os.PathLike | None = None) -> list[Sent]:
    """Produce ``(key, value, headers)`` records in order; return where each one landed.

    ``target`` is a ``Stack`` or a bootstrap string; ``config`` overrides librdkafka
    settings. With ``spans_file``, each record's ``send {topic}`` PRODUCER span
    is appended there (JSON lines, as ``observe.spans.load_spans`` reads them);
    its context is the record's ``traceparent``. Raises if any record is not
    acknowledged.
    """
    from confluent_kafka import Producer

    from effectively_once.observe.spans import SendSpans

    producer = Producer(producer_config(_bootstrap_of(target), idempotent=idempotent, **(config or {})))
    sent: list[Sent | None] = [None] * len(records)
    errors: list[str] = []
    spans = SendSpans(spans_file) if spans_file is not None else None
    open_spans: dict[int, Any] = {}

    def delivered(index: int, msg_id: str | None):
        def callback(err, record):
            span = open_spans.pop(index, None)
            if err is not None:
                errors.append(f"{msg_id}: {err}")
                if span is not None:
                    SendSpans.failed(span, err.name(), str(err))
            else:
                sent[index] = Sent(msg_id, record.partition(), record.offset())
                if span is not None:
                    SendSpans.delivered(span, record.partition(), record.offset())
        return callback

    step = max(1, len(records) // 50)
    try:
        for index, (key, value, headers) in enumerate(records):
            msg_id = next((v.decode() for k, v in headers if k == "msg_id"), None)
            if spans is not None:
                open_spans[index], headers = spans.start(topic, key, headers, msg_id)
            while True:
                try:
                    producer.produce(topic, key=key, value=value, headers=headers,
                                     on_delivery=delivered(index, msg_id))
                    break
                except BufferError:  # the local queue is full: let deliveries drain, then go on
                    producer.poll(0.1)
            producer.poll(0)
            if progress and (index + 1) % step == 0:
                progress(index + 1, len(records))
        remaining = producer.flush(timeout)
    finally:
        for span in open_spans.values():  # never acknowledged (a timeout, or produce() raised)
            SendSpans.failed(span, "_OTHER", "no delivery report")
        if spans is not None:
            spans.close()
    if remaining or errors or any(s is None for s in sent):
        raise RuntimeError(f"{remaining} record(s) unacknowledged after {timeout} s; errors: {errors[:3]}")
    if progress:
        progress(len(records), len(records))
    return [s for s in sent if s is not None]


def charge_records(n: int, *, seed: int = 0, prefix: str | None = None, customers: int = 5,
                   start: int = 0) -> list[tuple[bytes, bytes, list]]:
    """``n`` seeded charge messages as ``(key, value, headers)``; msg_ids are ``msg-<prefix>-<i>``.

    Each ``traceparent`` header starts a new trace; its ids, drawn from the
    seeded generator, become those of the record's send span when
    ``send_records`` writes spans.
    """
    prefix = prefix or uuid.uuid4().hex[:8]
    rng = random.Random(f"{seed}:{prefix}")
    records = []
    for i in range(start, start + n):
        msg_id = f"msg-{prefix}-{i:05d}"
        customer = f"cus_{rng.randint(1, customers):03d}"
        amount = rng.randrange(500, 50000, 100)
        currency = "usd" if rng.random() < 0.8 else "eur"
        headers = [("msg_id", msg_id.encode()), ("traceparent", new_traceparent(rng=rng).encode())]
        records.append((customer.encode(), charge_value(msg_id, customer, amount, currency), headers))
    return records


def produce_charges(target: Any, n: int, *, topic: str, seed: int = 0, prefix: str | None = None,
                    idempotent: bool = True, progress: Callable[[int, int], None] | None = None,
                    sent: list[Sent] | None = None, spans_file: str | os.PathLike | None = None) -> list[str]:
    """Publish ``n`` seeded charge messages to ``topic``; return their msg_ids in order.

    ``target`` is a ``Stack`` or a bootstrap string. Pass a list as ``sent`` to
    also get the partition and offset of each record, and ``spans_file`` to
    write each record's PRODUCER span there.
    """
    records = charge_records(n, seed=seed, prefix=prefix)
    landed = send_records(target, topic, records, idempotent=idempotent, progress=progress, spans_file=spans_file)
    if sent is not None:
        sent.extend(landed)
    return [s.msg_id for s in landed if s.msg_id]


text_progress = text_bar("producing")  # a one-line progress bar on stderr


def main(argv: list[str] | None = None) -> int:
    """Publish N charge messages and print their msg_ids' prefix."""
    parser = argparse.ArgumentParser(prog="python -m effectively_once.payments.producer",
                                     description="Publish seeded charge messages to a topic.")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default=None, help="msg_id prefix (random by default)")
    parser.add_argument("--not-idempotent", action="store_true", help="turn enable.idempotence off")
    parser.add_argument("--spans-file", default=None, metavar="PATH",
                        help="append a send span per record to PATH as JSON lines")
    args = parser.parse_args(argv)
    if args.messages < 0:
        parser.error("--messages must be >= 0")
    progress = text_progress if args.messages >= 1000 else None
    ids = produce_charges(args.bootstrap, args.messages, topic=args.topic, seed=args.seed, prefix=args.prefix,
                          idempotent=not args.not_idempotent, progress=progress, spans_file=args.spans_file)
    print(f"produced {len(ids)} charge message(s) to {args.topic}" + (f": {ids[0]} .. {ids[-1]}" if ids else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
