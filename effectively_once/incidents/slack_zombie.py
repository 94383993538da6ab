"""Slack 2022: a zombie producer during a rolling restart, replayed on the broker at hand.

The story (told in the field; no public post-mortem was found for it): a Kafka
exactly-once stream job (read, transform, write in one transaction) was
restarted node by node. An old instance that had stalled mid-transaction
came back after its replacement had started with the same
``transactional.id``, and finished its work: the same charges were written
twice, for the six minutes the restart took. Apache Kafka is supposed to fence
such a zombie (the replacement's ``init_transactions`` bumps the producer epoch
and aborts the open transaction); in the story it did not, and no public record
says why. Other failures of the broker's transaction machinery are documented
(KIP-890's motivation, KAFKA-9144, Jepsen's Bufstream 0.1.0 analysis: late
requests of one producer, hanging and torn transactions), but none of them shows
a second instance failing to fence the first.

The replay:

1. instance A begins a transaction, writes a batch of charges, and stalls
   (the records are on the broker, uncommitted);
2. instance B starts with the same ``transactional.id``, processes the same
   batch (A never committed its input offsets) and commits;
3. A wakes up and tries to commit.

Then two downstream consumers read the output with ``read_committed``: one
applies every record it sees to a ledger, the other goes through a dedup table
(``INSERT ... ON CONFLICT DO NOTHING`` on ``msg_id``). On Apache Kafka the
zombie is fenced and both ledgers are right. On a broker that does not fence
it (Tansu, the ``tansu`` backend's broker, does not) the zombie's records arrive too: the
naive ledger double-charges, the dedup table absorbs every duplicate.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

from effectively_once import stack as stack_mod
from effectively_once.db import one
from effectively_once.guarantees import OPERATION_TIMEOUT, read_values, transactional_producer, try_zombie_commit
from effectively_once.kafka import quiet_logger

FENCED, NOT_FENCED = "the zombie was fenced", "the zombie was not fenced"
# What each broker does to the zombie, by broker flavour: notebook 06 and the tests assert against it.
# Either way the dedup table holds each charge once.
EXPECTED_OUTCOME = {"apache-kafka": FENCED, "tansu": NOT_FENCED}


@dataclass
class ZombieReplay:
    """What each side saw when a zombie producer came back during a rolling restart."""

    broker_flavor: str
    charges: int
    zombie_commit: str
    delivered: int
    zombie_records_delivered: int
    naive_ledger_rows: int
    dedup_ledger_rows: int
    duplicates_absorbed: int

    @property
    def fenced(self) -> bool:
        """True when none of the zombie's records reached a read_committed consumer."""
        return self.zombie_records_delivered == 0

    @property
    def outcome(self) -> str:
        """``FENCED`` or ``NOT_FENCED``."""
        return FENCED if self.fenced else NOT_FENCED

    @property
    def expected_outcome(self) -> str:
        """What this broker must do to the zombie: ``EXPECTED_OUTCOME[broker_flavor]``."""
        return EXPECTED_OUTCOME[self.broker_flavor]

    @property
    def naive_double_charges(self) -> int:
        return self.naive_ledger_rows - self.charges

    def as_dict(self) -> dict:
        return {**self.__dict__, "fenced": self.fenced, "naive_double_charges": self.naive_double_charges}

    def _repr_html_(self) -> str:
        verdict = ("the broker fenced the zombie: its records never reached the consumers" if self.fenced else
                   "the broker did NOT fence the zombie: its records reached the consumers")
        rows = [
            ("broker", self.broker_flavor),
            ("charges in the batch", self.charges),
            ("zombie's commit", self.zombie_commit),
            ("records a read_committed consumer saw", self.delivered),
            ("... of them the zombie's", self.zombie_records_delivered),
            ("naive ledger rows (applies every record)", self.naive_ledger_rows),
            ("dedup ledger rows (ON CONFLICT DO NOTHING)", self.dedup_ledger_rows),
            ("duplicates the dedup table absorbed", self.duplicates_absorbed),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td>"
                       f"</tr>" for k, v in rows)
        colour = "#d4edda" if self.fenced else "#fff3cd"
        return (f"<div style='background:{colour};color:#212529;padding:4px'><b>{verdict}</b></div>"
                f"<table>{body}</table>")


def _charges(run: str, n: int) -> list[str]:
    return [json.dumps({"msg_id": f"msg-{run}-{i}", "amount": 1000 + i, "currency": "usd"}) for i in range(n)]


def replay(stack: stack_mod.Stack, charges: int = 5) -> ZombieReplay:
    """Replay the rolling restart with a zombie on ``stack``'s broker; see the module docstring."""
    import psycopg
    from confluent_kafka import Producer

    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"slack2022-{run}", partitions=1)
    transactional_id = stack.topic(f"slack2022-enricher-{run}")
    dsn = stack.create_database(f"slack2022_{run}")
    batch = _charges(run, charges)
    zombie = successor = None
    try:
        zombie = transactional_producer(stack, transactional_id)
        zombie.begin_transaction()
        for value in batch:
            zombie.produce(topic, value=value.encode(), headers={"instance": b"A"}, partition=0)
        zombie.flush(OPERATION_TIMEOUT)  # A stalls here, its transaction open

        successor = transactional_producer(stack, transactional_id)  # B starts during the rolling restart
        successor.begin_transaction()
        for value in batch:  # A never committed its input offsets, so B redoes the same batch
            successor.produce(topic, value=value.encode(), headers={"instance": b"B"}, partition=0)
        successor.commit_transaction(OPERATION_TIMEOUT)

        zombie_commit = try_zombie_commit(zombie)  # A wakes up and finishes what it started

        # An end marker, written after everything else, tells the reader when it has seen the lot. (Waiting
        # for the partition's end offset instead would be wrong on Tansu, whose end offset can fall short.)
        marker = json.dumps({"end_marker": run})
        ender = Producer(stack.producer_config(logger=quiet_logger()))
        ender.produce(topic, value=marker.encode(), partition=0)
        ender.flush(OPERATION_TIMEOUT)
        seen = read_values(stack, topic, [0], stop_when=lambda values: marker in values, timeout=15.0)
        seen = [value for value in seen if value != marker]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table naive_ledger (id bigserial primary key, msg_id text, amount int)")
            conn.execute("create table charges (msg_id text primary key, amount int)")
            absorbed = 0
            for value in seen:
                charge = json.loads(value)
                conn.execute("insert into naive_ledger (msg_id, amount) values (%s, %s)",
                             (charge["msg_id"], charge["amount"]))
                inserted = conn.execute("insert into charges values (%s, %s) on conflict do nothing",
                                        (charge["msg_id"], charge["amount"])).rowcount
                absorbed += inserted == 0
            naive = one(conn.execute("select count(*) from naive_ledger"), "the naive ledger's count")[0]
            deduped = one(conn.execute("select count(*) from charges"), "the deduplicated charges' count")[0]
        # Both instances wrote the same bytes; a record beyond one copy per charge is the zombie's.
        zombie_delivered = max(0, len(seen) - len(set(seen)))
        return ZombieReplay(stack.broker_flavor, charges, zombie_commit, len(seen), zombie_delivered, naive,
                            deduped, absorbed)
    finally:
        del zombie, successor
        stack.delete_topics(topic)
        stack.drop_database(f"slack2022_{run}")
