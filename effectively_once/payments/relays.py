"""Two outbox relays that skip each other's locked rows, and the order that costs; and cleaning the outbox.

    relay A:  BEGIN; SELECT ... FROM outbox ... ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED   -> row 1
    relay B:  BEGIN; SELECT ... same ...                                                     -> row 2
    relay B:  publish row 2; UPDATE ... published; COMMIT
    relay A:  publish row 1; UPDATE ... published; COMMIT

``SKIP LOCKED`` is what lets several relays share one outbox without waiting for each
other, and it is also why they can publish one customer's messages out of order: B
took the row after A's, and was faster. The story runs in one thread, one step after
the other, so the interleaving is the same on every run; both relays publish to a
one-partition topic and the topic is read back. ``run(relays=1)`` is the control: one
relay publishes in insert order.

``delete_published(conn, older_than)`` is the outbox's cleanup: published rows are
history the relay no longer needs.

    with RelayRace(stack) as race:
        two = race.run(relays=2)     # two.published == ["order-2", "order-1"]
        one = race.run(relays=1)     # one.published == ["order-1", "order-2"]
"""

from __future__ import annotations

import atexit
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from effectively_once.payments.outbox import migrate, place_order

if TYPE_CHECKING:
    from effectively_once.stack import Stack

CLAIM = ("SELECT id, msg_id, topic, key, payload FROM outbox WHERE published_at IS NULL"
         " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")


def delete_published(conn: psycopg.Connection, older_than_seconds: float) -> int:
    """Delete outbox rows published more than ``older_than_seconds`` ago; return how many went."""
    return conn.execute("DELETE FROM outbox WHERE published_at < clock_timestamp() - make_interval(secs => %s)",
                        (older_than_seconds,)).rowcount


@dataclass
class RaceResult:
    """What one run inserted, which relay published which row in which order, and what the topic holds."""

    relays: int
    inserted: list[str]
    steps: list[tuple[str, str]]
    published: list[str]

    @property
    def in_order(self) -> bool:
        """True when the topic holds the messages in the order the shop inserted them."""
        return self.published == self.inserted


class RaceTopicError(RuntimeError):
    """The topic did not hand back every published message in time."""


class RelayRace:
    """An outbox in a private database and one-partition topics: run the two-relay story, then ``stop()``."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._token = uuid.uuid4().hex[:8]
        self._database = f"relays_{self._token}"
        self.dsn = stack.create_database(self._database)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)
        self._topics: list[str] = []
        self._runs = 0
        self._stopped = False
        atexit.register(self.stop)

    def _producer(self):
        from confluent_kafka import Producer

        from effectively_once.kafka import quiet_logger

        return Producer(self.stack.producer_config(logger=quiet_logger()))

    def run(self, relays: int = 2) -> RaceResult:
        """Two orders of one customer, then ``relays`` relays (1 or 2) claim and publish them as described above."""
        if relays not in (1, 2):
            raise ValueError(f"relays must be 1 or 2, not {relays}")
        self._runs += 1
        topic = self.stack.create_topic(f"relays.{self._token}.{self._runs}", partitions=1)
        self._topics.append(topic)
        producer = self._producer()
        steps: list[tuple[str, str]] = []

        def publish(conn: psycopg.Connection, row: tuple | None, relay: str) -> None:
            if row is None:
                raise RuntimeError(f"relay {relay} found no unpublished outbox row to claim")
            row_id, msg_id, row_topic, key, payload = row
            producer.produce(row_topic, key=key.encode(), value=json.dumps(payload).encode(),
                             headers=[("msg_id", msg_id.encode())])
            if producer.flush(30):
                raise RuntimeError("the broker did not acknowledge an outbox message within 30 s")
            conn.execute("UPDATE outbox SET published_at = clock_timestamp() WHERE id = %s", (row_id,))
            steps.append((relay, msg_id))

        with psycopg.connect(self.dsn, autocommit=True) as shop:
            inserted = [place_order(shop, f"run{self._runs}-{n}", "cus_007", 1000 * n, topic) for n in (1, 2)]
        with psycopg.connect(self.dsn) as a, psycopg.connect(self.dsn) as b:
            row_a = a.execute(CLAIM).fetchone()  # A's transaction stays open, holding the first row
            if relays == 2:
                row_b = b.execute(CLAIM).fetchone()  # skips A's locked row: the second one
                publish(b, row_b, "B")
                b.commit()
                publish(a, row_a, "A")
                a.commit()
            else:
                publish(a, row_a, "A")
                a.commit()
                publish(a, a.execute(CLAIM).fetchone(), "A")
                a.commit()
        return RaceResult(relays, inserted, steps, self._read(topic, len(inserted)))

    def _read(self, topic: str, expected: int, timeout: float = 20.0) -> list[str]:
        from confluent_kafka import Consumer

        from effectively_once.kafka import END_READER_SETTINGS, client_settings, quiet_logger, read_topic

        reader = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap, **client_settings(),
                           "group.id": f"reader-{self._token}-{self._runs}", "enable.auto.commit": False,
                           **END_READER_SETTINGS, "logger": quiet_logger()})
        try:
            found = [dict(r.headers() or [])["msg_id"].decode()
                     for r in read_topic(reader, topic, until_end=True, timeout=timeout)]
        finally:
            reader.close()
        if len(found) != expected:
            raise RaceTopicError(f"{topic} holds {len(found)} message(s), {expected} were published")
        return found

    def outbox_size(self) -> int:
        """How many rows the outbox holds, published or not."""
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM outbox").fetchone()
            return int(row[0]) if row else 0

    def clean(self, older_than_seconds: float = 0.0) -> int:
        """Delete published rows older than ``older_than_seconds``; return how many went."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return delete_published(conn, older_than_seconds)

    def stop(self) -> None:
        """Delete the topics and drop the database."""
        if self._stopped:
            return
        self._stopped = True
        self.stack.delete_topics(*self._topics)
        self.stack.drop_database(self._database)
        atexit.unregister(self.stop)

    def __enter__(self) -> RelayRace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
