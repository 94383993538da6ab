"""The course map and the live environment check that notebook 00 shows."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

from effectively_once.db import one
from effectively_once.kafka import poll_records, quiet_logger
from effectively_once.stack import Stack, new_run_id


@dataclass(frozen=True)
class Notebook:
    """One notebook of the course: its file stem, title, what it teaches, and minutes.

    ``minutes`` is the notebook's own "Time:" line; ``exercise_minutes`` is its
    exercise notebook's (in ``solutions/`` and ``labs/``), when it has one.
    ``tools/notebooks.py course`` writes both, and README's course map, from here.
    """

    stem: str
    title: str
    teaches: str
    minutes: int
    needs_services: bool
    exercise_minutes: int | None = None


COURSE = (
    Notebook("00_start_here", "Start here", "the map, choosing a backend, a live check of your services", 10, True),
    Notebook("01_two_generals", "The Two Generals", "why exactly-once delivery is impossible, and why one-sided "
             "dedup makes exactly-once processing possible", 25, False, exercise_minutes=20),
    Notebook("02_message_loss", "Watching messages get lost", "at-most-once, at-least-once, the idempotent "
             "producer and effectively-once, animated and counted", 25, False, exercise_minutes=20),
    Notebook("03_kafka_guarantees", "What Kafka guarantees", "producer ids and sequence numbers, transactions, "
             "read_committed, zombie fencing, and what Kafka's exactly-once cannot span", 30, True,
             exercise_minutes=25),
    Notebook("04_kill_the_consumer", "Kill the consumer", "a real payment pipeline killed with SIGKILL at every "
             "step; the dedup table and the Idempotency-Key; the traps in the textbook snippet", 40, True,
             exercise_minutes=25),
    Notebook("04b_beyond_the_dedup_table", "Beyond the dedup table", "offsets stored with the charge in one "
             "PostgreSQL transaction, crashed at every step; its limit without the key; a transactional outbox and "
             "an inbox; zombies, leases, fencing tokens and ordering", 25, True, exercise_minutes=15),
    Notebook("05_observability", "Seeing delivery semantics", "lag, DLQ depth and age, dedup hit rate, "
             "side-effect and retry p99, trace ids, alert rules", 30, True, exercise_minutes=20),
    Notebook("06_incidents", "Four incidents, replayed", "Stripe 2020, AWS SQS 2019, Stripe 2023 and Slack 2022, "
             "replayed before and after the fix", 35, True, exercise_minutes=30),
    Notebook("07_review", "Review", "five review questions, answered with what you measured", 15, False),
)


def total_minutes() -> int:
    """How long the whole course takes, in minutes."""
    return sum(nb.minutes for nb in COURSE)


def course_map_html(notebook_dir: Path | None = None) -> str:
    """The course map as an HTML table (with links when ``notebook_dir`` is given)."""
    rows = []
    for nb in COURSE:
        name = f"{nb.stem}.ipynb"
        link = f"<a href='{name}'>{html.escape(name)}</a>" if notebook_dir else html.escape(name)
        services = "broker + PostgreSQL" if nb.needs_services else "none"
        rows.append(f"<tr><td>{link}</td><td><b>{html.escape(nb.title)}</b>: {html.escape(nb.teaches)}</td>"
                    f"<td style='text-align:right'>{nb.minutes}</td><td>{services}</td></tr>")
    head = "<tr><th>notebook</th><th>what you learn</th><th>minutes</th><th>services</th></tr>"
    foot = f"<tr><td></td><td style='text-align:right'><i>total</i></td><td style='text-align:right'>" \
           f"{total_minutes()}</td><td></td></tr>"
    return f"<table>{head}{''.join(rows)}{foot}</table>"


@dataclass
class RoundTrip:
    """What the environment check sent and got back."""

    sent: list[str]
    received: list[str]
    sql_answer: int
    seconds: float

    @property
    def ok(self) -> bool:
        return sorted(self.sent) == sorted(self.received) and self.sql_answer == 1


def round_trip(stack: Stack, messages: int = 3, timeout: float = 30.0) -> RoundTrip:
    """Send ``messages`` records through the broker and read them back; ask PostgreSQL ``select 1``.

    It uses a topic and a group of its own (namespaced, random suffix) and deletes the topic after.
    """
    import psycopg
    from confluent_kafka import Consumer, Producer

    started = time.monotonic()
    run = new_run_id()
    topic = stack.create_topic(f"hello.{run}", partitions=1)
    sent = [f"hello {i}" for i in range(messages)]
    # A broker that has just started answers "coordinator load in progress" for a moment; librdkafka
    # retries and succeeds, so its log line would only alarm a learner.
    producer = Producer(stack.producer_config(logger=quiet_logger()))
    for value in sent:
        producer.produce(topic, value=value.encode())
    producer.flush(15)
    consumer = Consumer(stack.consumer_config(**{"group.id": stack.group(f"hello.{run}"), "logger": quiet_logger()}))
    consumer.subscribe([topic])
    received: list[str] = []
    try:
        for msg in poll_records(consumer, timeout=timeout) if sent else ():
            received.append(msg.value().decode())
            if len(received) == len(sent):
                break
    finally:
        consumer.close()
        stack.delete_topics(topic)
    with psycopg.connect(stack.postgres_dsn("postgres"), connect_timeout=5) as conn:
        answer = one(conn.execute("select 1"), "select 1")[0]
    return RoundTrip(sent, received, answer, time.monotonic() - started)
