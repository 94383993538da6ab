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

    ``minutes`` is the notebook's own "Time:" line, measured as a fresh learner would
    spend it: reading at a stated pace plus the measured Run All time
    (``python tools/learner_time.py`` prints both and says how). ``exercise_minutes``
    is its exercise notebook's (in ``solutions/`` and ``labs/``), when it has one: the
    same reading and running, plus time to write the code. ``tools/notebooks.py course``
    writes both, and README's course map, from here.
    """

    stem: str
    title: str
    teaches: str
    minutes: int
    needs_services: bool
    exercise_minutes: int | None = None


COURSE = (
    Notebook("00_start_here", "Start here", "the map, choosing a backend, a live check of your services", 15, True),
    Notebook("01_two_generals", "The Two Generals", "why exactly-once delivery is impossible, and why a receiver "
             "with durable dedup state, written atomically with the effect, still acts on each message once", 25,
             False, exercise_minutes=20),
    Notebook("02_message_loss", "Watching messages get lost", "at-most-once, at-least-once, the idempotent "
             "producer and effectively-once, animated and counted", 20, False, exercise_minutes=20),
    Notebook("03_kafka_guarantees", "What Kafka guarantees", "producer ids and sequence numbers and how long the "
             "broker remembers them, transactions and read_committed, the probe on Apache Kafka and Tansu side by "
             "side, and why Kafka's exactly-once cannot reach PostgreSQL", 40, True, exercise_minutes=25),
    Notebook("03b_kafka_4x", "Kafka 4.x and exactly-once", "transactions version 2 and what librdkafka uses, a "
             "producer killed mid-transaction, the consumer protocol, Streams' exactly_once_v2, share groups and "
             "two-phase commit, each checked against your broker and client", 45, True),
    Notebook("04_kill_the_consumer", "Kill the consumer", "the hybrid exactly-once pattern in a real payment "
             "pipeline killed with SIGKILL at every step: the dedup table, the Idempotency-Key, where the msg_id "
             "comes from, and the traps in the textbook recipe", 45, True, exercise_minutes=25),
    Notebook("04b_beyond_the_dedup_table", "Beyond the dedup table", "offsets stored with the charge in one "
             "PostgreSQL transaction, crashed at every step, and its limit without the key; a transactional "
             "outbox and an inbox, and an outbox in production", 20, True, exercise_minutes=15),
    Notebook("04c_two_workers_one_message", "Two workers, one message", "a zombie consumer, live; leases and "
             "fencing tokens; row and advisory locks; a sweeper for stuck 'pending' rows", 30, True),
    Notebook("04d_order", "Exactly once, out of order", "a dead-letter topic and two outbox relays each reorder "
             "one customer's messages, and what keeps the order", 10, True),
    Notebook("04e_the_provider_talks_back", "The provider talks back", "signed webhooks verified with the Stripe "
             "SDK, an inbox that records each event once, 'pending' rows settled by events and by a sweeper that "
             "retrieves their PaymentIntent, reconciliation", 25, True, exercise_minutes=20),
    Notebook("05_observability", "Seeing delivery semantics", "lag, DLQ depth and age, dedup hit rate, "
             "side-effect and retry p99 and why they are histograms, trace ids, alert rules", 45, True,
             exercise_minutes=20),
    Notebook("06_incidents", "Four stories from the field, replayed", "Stripe 2020, AWS SQS 2019, Stripe 2023 "
             "and Slack 2022, told in the field with no public post-mortem: each mechanism replayed before and "
             "after its fix", 45, True, exercise_minutes=30),
    Notebook("07_review", "Review", "five review questions, answered with what you measured", 25, False),
)


def total_minutes() -> int:
    """How long the whole course takes, in minutes."""
    return sum(nb.minutes for nb in COURSE)


def exercise_minutes() -> int:
    """How long all the labs take, in minutes."""
    return sum(nb.exercise_minutes or 0 for nb in COURSE)


LAB = "lab "


@dataclass(frozen=True)
class WorkshopPlan:
    """A workshop day: blocks in order, each a notebook stem, ``"lab <stem>"`` or a break of N minutes.

    A notebook's and a lab's minutes come from ``COURSE``; only breaks carry their
    own. What does not fit the day is ``homework``. ``tools/notebooks.py course``
    writes each plan into docs/instructor-guide.md.
    """

    title: str
    length_minutes: int
    blocks: tuple[str | tuple[str, int], ...]
    homework: tuple[str, ...] = ()

    @staticmethod
    def minutes(block: str | tuple[str, int]) -> int:
        """The minutes ``block`` takes (a break is ``(name, minutes)``)."""
        if isinstance(block, tuple):
            return block[1]
        by_stem = {nb.stem: nb for nb in COURSE}
        if block.startswith(LAB):
            lab = by_stem[block.removeprefix(LAB)].exercise_minutes
            if lab is None:
                raise ValueError(f"{block!r}: that notebook has no lab")
            return lab
        return by_stem[block].minutes

    def schedule(self) -> list[tuple[int, str, int]]:
        """(start minute, block name, minutes) for each block in order."""
        out, start = [], 0
        for block in self.blocks:
            name = block[0] if isinstance(block, tuple) else block
            out.append((start, name, self.minutes(block)))
            start += self.minutes(block)
        return out

    def total(self) -> int:
        """The minutes the blocks add up to (a test holds it to ``length_minutes``)."""
        return sum(self.minutes(block) for block in self.blocks)

    def markdown(self) -> str:
        """The plan as a Markdown table with clock times from 0:00, and its homework."""
        rows = [f"### {self.title} ({self.length_minutes} minutes)", "",
                "| time | block | minutes |", "|:---|:---|---:|"]
        for start, name, minutes in self.schedule():
            shown = f"lab `{name.removeprefix(LAB)}`" if name.startswith(LAB) else \
                f"`{name}`" if name[:2].isdigit() else name
            rows.append(f"| {start // 60}:{start % 60:02d} | {shown} | {minutes} |")
        end = self.total()
        rows.append(f"| {end // 60}:{end % 60:02d} | end | |")
        if self.homework:
            rows += ["", "After the day, as homework: " + ", ".join(
                f"lab `{h.removeprefix(LAB)}`" if h.startswith(LAB) else f"`{h}`" for h in self.homework) + "."]
        return "\n".join(rows)


WORKSHOP_PLANS = (
    WorkshopPlan(
        "Half day", 240,
        ("00_start_here", "01_two_generals", "02_message_loss", "lab 02_message_loss", ("break", 15),
         "03_kafka_guarantees", "04_kill_the_consumer", ("break", 10), "lab 04_kill_the_consumer", "07_review"),
        homework=("lab 01_two_generals", "lab 03_kafka_guarantees", "03b_kafka_4x", "04b_beyond_the_dedup_table",
                  "lab 04b_beyond_the_dedup_table", "04c_two_workers_one_message", "04d_order",
                  "04e_the_provider_talks_back", "lab 04e_the_provider_talks_back", "05_observability",
                  "lab 05_observability", "06_incidents", "lab 06_incidents"),
    ),
    WorkshopPlan(
        "Full day", 630,
        ("00_start_here", "01_two_generals", "lab 01_two_generals", "02_message_loss", "lab 02_message_loss",
         ("break", 10), "03_kafka_guarantees", "lab 03_kafka_guarantees", "03b_kafka_4x", ("lunch", 45),
         "04_kill_the_consumer", "lab 04_kill_the_consumer", "04b_beyond_the_dedup_table",
         "lab 04b_beyond_the_dedup_table", "04c_two_workers_one_message", "04d_order",
         "04e_the_provider_talks_back", "lab 04e_the_provider_talks_back", ("break", 10),
         "05_observability", "lab 05_observability", "06_incidents", "lab 06_incidents", "07_review"),
    ),
)


# JupyterLab right-aligns table cells unless told otherwise; prose reads from the left.
_LEFT = "style='text-align:left'"


def course_map_html(notebook_dir: Path | None = None) -> str:
    """The course map as an HTML table (with links when ``notebook_dir`` is given)."""
    rows = []
    for nb in COURSE:
        name = f"{nb.stem}.ipynb"
        link = f"<a href='{name}'>{html.escape(name)}</a>" if notebook_dir else html.escape(name)
        services = "broker + PostgreSQL" if nb.needs_services else "none"
        rows.append(f"<tr><td {_LEFT}>{link}</td><td {_LEFT}><b>{html.escape(nb.title)}</b>: "
                    f"{html.escape(nb.teaches)}</td><td style='text-align:right'>{nb.minutes}</td>"
                    f"<td {_LEFT}>{services}</td></tr>")
    head = (f"<tr><th {_LEFT}>notebook</th><th {_LEFT}>what you learn</th><th>minutes</th>"
            f"<th {_LEFT}>services</th></tr>")
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
