"""The transactional outbox and the inbox: one order, one message, one shipment, across a crashed relay.

    shop:   BEGIN; INSERT INTO orders ...; INSERT INTO outbox (msg_id, ...) ...; COMMIT
    relay:  SELECT unpublished outbox rows FOR UPDATE -> produce them, wait for the acks
            -> UPDATE outbox SET published_at = now(); COMMIT
    inbox:  BEGIN; INSERT INTO inbox (consumer, msg_id) ON CONFLICT DO NOTHING;
            new -> INSERT INTO shipments ...; COMMIT

The order and its message cannot part: they commit together. The relay is at
least once: killed between the broker's ack and its UPDATE, it publishes the
same rows again when it restarts. The inbox, keyed by msg_id, turns the second
copy into nothing. The relay is a process of its own
(``python -m effectively_once.payments.outbox``), so that its crash is a real
SIGKILL.

    with OutboxLab(stack) as lab:
        lab.place_orders(5)
        lab.start_relay(crash_after_publish=True).wait(30)   # published, never marked
        lab.start_relay().wait(30)                           # publishes them again
        lab.apply_inbox()                                    # 10 records -> 5 shipments
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import sys
import time
import uuid
from typing import TYPE_CHECKING

import psycopg

from effectively_once import protocol
from effectively_once.db import columns, one
from effectively_once.lifetime import kill_now
from effectively_once.payments.children import Child
from effectively_once.payments.lab_reports import Table
from effectively_once.schemas import load

if TYPE_CHECKING:
    from effectively_once.stack import Stack

INBOX_CONSUMER = "warehouse"
RELAY_MODULE = "effectively_once.payments.outbox"
CRASHED_AFTER_PUBLISH = "relay crash point after_publish reached: SIGKILL"  # for the human reading the log
# What the parent reads: the relay's crash_point event (``RelayProcess.crashed_after_publish``).
RELAY_CRASH_POINT = "after_publish"


def migrate(conn: psycopg.Connection) -> None:
    """Create the outbox's tables if they are missing."""
    with conn.transaction():
        conn.execute(load("outbox.sql"))


def place_order(conn: psycopg.Connection, order_id: str, customer: str, amount: int, topic: str) -> str:
    """Write the order and its outbox message in one transaction; return the message's msg_id."""
    msg_id = f"order-placed-{order_id}"
    with conn.transaction():
        conn.execute("INSERT INTO orders (order_id, customer, amount) VALUES (%s, %s, %s)",
                     (order_id, customer, amount))
        conn.execute("INSERT INTO outbox (msg_id, topic, key, payload) VALUES (%s, %s, %s, %s)",
                     (msg_id, topic, customer, json.dumps({"order_id": order_id, "customer": customer,
                                                           "amount": amount})))
    return msg_id


def relay(dsn: str, bootstrap: str, *, batch_size: int = 100, crash_after_publish: bool = False,
          exit_when_idle: float = 1.0, log=print) -> int:
    """Publish unpublished outbox rows, then mark them; return how many rows it marked.

    The rows stay locked (``FOR UPDATE SKIP LOCKED``) from the SELECT to the
    UPDATE, so two relays never take the same row at once. With
    ``crash_after_publish`` the process SIGKILLs itself after the broker
    acknowledged the first batch and before the UPDATE: the transaction dies
    with the connection, and the rows stay unpublished.
    """
    from confluent_kafka import Producer

    from effectively_once.kafka import client_settings, quiet_logger

    producer = Producer({"bootstrap.servers": bootstrap, **client_settings(), "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "logger": quiet_logger()})
    failed: list = []
    marked = 0
    idle_since = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() - idle_since < exit_when_idle:
            with conn.transaction():
                rows = conn.execute("SELECT id, msg_id, topic, key, payload FROM outbox WHERE published_at IS NULL"
                                    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (batch_size,)).fetchall()
                if not rows:
                    time.sleep(0.1)
                    continue
                for _, msg_id, topic, key, payload in rows:
                    producer.produce(topic, key=key.encode(), value=json.dumps(payload).encode(),
                                     headers=[("msg_id", msg_id.encode())],
                                     on_delivery=lambda err, msg: failed.append(err) if err else None)
                if producer.flush(30) or failed:
                    raise RuntimeError(f"the broker did not acknowledge every outbox message ({failed[:1]}); "
                                       "nothing marked, so the next relay publishes them again")
                log(f"published {len(rows)} outbox message(s)")
                if crash_after_publish:
                    log(protocol.event(protocol.EventKind.CRASH_POINT, point=RELAY_CRASH_POINT, count=1).format())
                    log(CRASHED_AFTER_PUBLISH)
                    sys.stdout.flush()
                    kill_now(os.getpid())
                conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY(%s)", ([r[0] for r in rows],))
                marked += len(rows)
            idle_since = time.monotonic()
    log(f"relay finished: marked {marked} row(s) published")
    return marked


def apply_message(conn: psycopg.Connection, msg_id: str, payload: dict, consumer: str = INBOX_CONSUMER) -> bool:
    """Apply one message through the inbox: True when it was new and shipped, False for a duplicate."""
    with conn.transaction():
        new = conn.execute("INSERT INTO inbox (consumer, msg_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                           (consumer, msg_id)).rowcount == 1
        if new:
            conn.execute("INSERT INTO shipments (order_id, msg_id) VALUES (%s, %s)", (payload["order_id"], msg_id))
    return new


class RelayProcess(Child):
    """The outbox relay as a child process, started and stopped by pid."""

    name = "relay"

    def __init__(self, dsn: str, bootstrap: str, *, crash_after_publish: bool = False) -> None:
        argv = [sys.executable, "-m", RELAY_MODULE, f"--dsn={dsn}", f"--bootstrap={bootstrap}"]
        super().__init__(argv + (["--crash-after-publish"] if crash_after_publish else []))
        self.crash_after_publish = crash_after_publish

    @property
    def crashed_after_publish(self) -> bool:
        """True when the relay killed itself at its crash point, between the publish and the mark."""
        return self.killed_by_sigkill and any(e["point"] == RELAY_CRASH_POINT
                                              for e in self.log_events(protocol.EventKind.CRASH_POINT))


class OutboxLab:
    """A shop with an outbox, a relay to crash, and a warehouse with an inbox: its own database and topic."""

    def __init__(self, stack: Stack, seed: int = 0) -> None:
        self.stack, self.rng = stack, random.Random(seed)
        self._token = uuid.uuid4().hex[:8]
        self.topic = stack.create_topic(f"orders.placed.{self._token}", 3)
        self.dsn = stack.create_database(f"outbox_{self._token}")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)
        self.relays: list[RelayProcess] = []
        self.msg_ids: list[str] = []
        self._stopped = False
        atexit.register(self.stop)

    def place_orders(self, n: int) -> list[str]:
        """Place ``n`` seeded orders, each with its outbox row in the same transaction; return the msg_ids."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for i in range(len(self.msg_ids), len(self.msg_ids) + n):
                self.msg_ids.append(place_order(conn, f"ord-{i:03d}", f"cus_{self.rng.randint(1, 5):03d}",
                                                self.rng.randint(5, 200) * 100, self.topic))
        return self.msg_ids[-n:]

    def start_relay(self, crash_after_publish: bool = False) -> RelayProcess:
        """Start a relay process (that kills itself after publishing, if asked)."""
        process = RelayProcess(self.dsn, self.stack.kafka_bootstrap, crash_after_publish=crash_after_publish)
        process.start()
        self.relays.append(process)
        return process

    def outbox_rows(self) -> Table:
        """The outbox: each message and whether the relay marked it published."""
        with psycopg.connect(self.dsn) as conn:
            cur = conn.execute("SELECT msg_id, key AS customer, published_at IS NOT NULL AS published FROM outbox"
                               " ORDER BY id")
            return Table("shop: outbox", columns(cur), cur.fetchall())

    def published(self, timeout: float = 20.0) -> list[str]:
        """The msg_id of every record in the topic, oldest first per partition (duplicates included)."""
        return [r["msg_id"] for r in self._records(timeout)]

    def _records(self, timeout: float) -> list[dict]:
        from confluent_kafka import Consumer

        from effectively_once.kafka import END_READER_SETTINGS, client_settings, quiet_logger, read_topic

        reader = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap, **client_settings(),
                           "group.id": f"reader-{self._token}", "enable.auto.commit": False,
                           **END_READER_SETTINGS, "logger": quiet_logger()})
        try:
            return [{"msg_id": dict(r.headers() or [])["msg_id"].decode(), "payload": json.loads(r.value())}
                    for r in read_topic(reader, self.topic, until_end=True, timeout=timeout)]
        finally:
            reader.close()

    def apply_inbox(self, timeout: float = 20.0) -> dict[str, int]:
        """Read the whole topic into the warehouse through its inbox; count records, shipments and duplicates."""
        records = self._records(timeout)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            applied = sum(apply_message(conn, r["msg_id"], r["payload"]) for r in records)
        return {"records": len(records), "shipped": applied, "duplicates_absorbed": len(records) - applied}

    def counts(self) -> dict[str, int]:
        """Orders, outbox rows, inbox rows and shipments in the database."""
        with psycopg.connect(self.dsn) as conn:
            return {table: one(conn.execute(f"SELECT count(*) FROM {table}"), table)[0]
                    for table in ("orders", "outbox", "inbox", "shipments")}

    def stop(self) -> None:
        """Stop every relay by pid; drop the database and the topic."""
        if self._stopped:
            return
        self._stopped = True
        for process in self.relays:
            process.stop()
        self.stack.delete_topics(self.topic)
        self.stack.drop_database(f"outbox_{self._token}")
        atexit.unregister(self.stop)

    def __enter__(self) -> OutboxLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the relay until the outbox has been idle for a second."""
    parser = argparse.ArgumentParser(prog=f"python -m {RELAY_MODULE}", description="Publish the shop's outbox.")
    parser.add_argument("--dsn", required=True, help="the shop database, a libpq URI")
    parser.add_argument("--bootstrap", required=True, help="the Kafka bootstrap servers")
    parser.add_argument("--crash-after-publish", action="store_true",
                        help="SIGKILL this process after the first batch is acknowledged, before it is marked")
    args = parser.parse_args(argv)
    relay(args.dsn, args.bootstrap, crash_after_publish=args.crash_after_publish,
          log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
