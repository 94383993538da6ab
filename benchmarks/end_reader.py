"""How long a read to the end of a topic takes, with Kafka's default fetch wait and with END_READER_SETTINGS.

``read_topic(..., until_end=True)`` stops when every partition has sent its end-of-partition
event. The event comes with a fetch answer, and the broker holds a fetch at a partition's end
for ``fetch.wait.max.ms`` (500 ms by default) hoping for new records. The course's readers
(``lab.report()``'s dead-letter read, the outbox, relay, ordering and redrive readers) use
``effectively_once.kafka.END_READER_SETTINGS``, which asks for 10 ms. Both kinds of reader
read the same two topics (3 partitions, one empty and one with 9 records), alternately, on
the stack ``python -m effectively_once up`` started, and the medians and their ratio are printed.

    .venv/bin/python benchmarks/end_reader.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from confluent_kafka import Consumer

from effectively_once.kafka import END_READER_SETTINGS, client_settings, quiet_logger, read_topic
from effectively_once.payments.producer import send_records
from effectively_once.stack import attach, new_run_id

DEFAULT_READER = {"enable.partition.eof": True}


def read_to_end(bootstrap: str, topic: str, settings: dict) -> tuple[float, int]:
    """Seconds for a fresh consumer to read ``topic`` to the end of every partition, and the records read."""
    started = time.perf_counter()
    consumer = Consumer({"bootstrap.servers": bootstrap, **client_settings(), "group.id": f"bench-{new_run_id()}",
                         "enable.auto.commit": False, "logger": quiet_logger(), **settings})
    try:
        records = sum(1 for _ in read_topic(consumer, topic, until_end=True, timeout=30))
    finally:
        consumer.close()
    return time.perf_counter() - started, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    stack = attach()
    run = new_run_id()
    empty = stack.create_topic(f"bench.end-reader.empty.{run}", 3)
    full = stack.create_topic(f"bench.end-reader.full.{run}", 3)
    try:
        send_records(stack, full, [(f"k{i}".encode(), b"v", []) for i in range(9)])
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, settings in (("default", DEFAULT_READER), ("END_READER", END_READER_SETTINGS)):
                for label, topic, expected in (("empty", empty, 0), ("9 records", full, 9)):
                    seconds, records = read_to_end(stack.kafka_bootstrap, topic, settings)
                    if records != expected:
                        print(f"{name} read {records} records of {label}, expected {expected}", file=sys.stderr)
                        return 1
                    times.setdefault((name, label), []).append(seconds)
    finally:
        stack.delete_topics(empty, full)
    print(f"read to the end of a 3-partition topic, median of {args.rounds} (fetch.wait.max.ms default vs "
          f"{END_READER_SETTINGS['fetch.wait.max.ms']}):")
    for label in ("empty", "9 records"):
        before, after = (statistics.median(times[(name, label)]) for name in ("default", "END_READER"))
        print(f"  {label:<10} default {before:.3f} s, END_READER_SETTINGS {after:.3f} s, ratio {after / before:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
