"""Why none of Kafka's exactly-once reaches PostgreSQL: ``kafka_txn_vs_postgres(stack)``.

A Kafka transaction and a database transaction, side by side, commit and roll
back independently; the result is a table of what each system holds.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass
from typing import Any

from effectively_once import stack as stack_mod
from effectively_once.guarantees.clients import OPERATION_TIMEOUT, read_values, transactional_producer


@dataclass
class SplitOutcome:
    """One run of a Kafka transaction and a PostgreSQL transaction side by side."""

    scenario: str
    kafka_transaction: str
    postgres_transaction: str
    kafka_holds: list[str]
    postgres_holds: list[str]

    @property
    def agree(self) -> bool:
        """True when both systems hold the same charges."""
        return sorted(self.kafka_holds) == sorted(self.postgres_holds)


@dataclass
class TxnVsPostgres:
    """The two scenarios of ``kafka_txn_vs_postgres``."""

    broker_flavor: str
    scenarios: list[SplitOutcome]

    def __getitem__(self, scenario: str) -> SplitOutcome:
        for outcome in self.scenarios:
            if outcome.scenario == scenario:
                return outcome
        raise KeyError(scenario)

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"broker_flavor": self.broker_flavor,
                "scenarios": [dict(asdict(s), agree=s.agree) for s in self.scenarios]}

    def _repr_html_(self) -> str:
        rows = []
        for s in self.scenarios:
            colour = "#d4edda" if s.agree else "#f8d7da"
            rows.append(
                f"<tr style='background:{colour};color:#212529'>"
                f"<td style='text-align:left'>{html.escape(s.scenario)}</td>"
                f"<td>{html.escape(s.kafka_transaction)}</td><td>{html.escape(s.postgres_transaction)}</td>"
                f"<td>{html.escape(', '.join(s.kafka_holds) or '(nothing)')}</td>"
                f"<td>{html.escape(', '.join(s.postgres_holds) or '(nothing)')}</td>"
                f"<td><b>{'yes' if s.agree else 'no'}</b></td></tr>")
        return ("<table><thead><tr><th style='text-align:left'>scenario</th><th>Kafka transaction</th>"
                "<th>PostgreSQL transaction</th><th>Kafka holds (read_committed)</th>"
                "<th>PostgreSQL holds</th><th>agree?</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")


KAFKA_COMMITS = "Kafka commits, PostgreSQL rolls back"
POSTGRES_COMMITS = "PostgreSQL commits, Kafka aborts"


def kafka_txn_vs_postgres(stack: stack_mod.Stack) -> TxnVsPostgres:
    """Run a Kafka transaction beside a PostgreSQL transaction and show they can disagree.

    Kafka's transaction coordinator only spans Kafka partitions and consumer
    offsets; the database's transaction is invisible to it. So:

    - ``KAFKA_COMMITS``: the charge is committed to Kafka, then the database
      transaction fails before its COMMIT (rolled back here, as a crash would):
      Kafka holds the charge, PostgreSQL does not.
    - ``POSTGRES_COMMITS``: the row is committed to PostgreSQL, then the Kafka
      transaction is aborted: PostgreSQL holds the charge, Kafka does not.

    On Apache Kafka the aborted record reaches the broker before the abort, so
    the broker itself aborts it. (An abort of a transaction the broker never saw
    a record of can fail there with INVALID_TXN_STATE under Transactions V2, see
    https://github.com/confluentinc/librdkafka/issues/4849.) On Tansu, which
    shows aborted records to ``read_committed`` (``probe`` tests that
    separately), the record is kept in the client (a long ``linger.ms``) until
    the abort drops it, so the scenario shows the transactions, not that gap.
    Creates and removes its own topic and database.
    """
    import psycopg

    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"txn-vs-pg-{run}", partitions=1)
    db_name = f"txn_vs_pg_{run}"
    dsn = stack.create_database(db_name)
    producer = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE charges (msg_id text PRIMARY KEY, amount_cents int NOT NULL)")
        hold_in_client = stack.broker_flavor == "tansu"
        producer = transactional_producer(stack, stack.topic(f"txn-vs-pg-{run}"),
                                           **{"linger.ms": 30000 if hold_in_client else 5})
        first, second, end = f"msg-{run}-1", f"msg-{run}-2", f"end-{run}"

        # Scenario 1: Kafka commits, then the database transaction is lost.
        producer.begin_transaction()
        producer.produce(topic, key=first.encode(), value=b"1000", partition=0)
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO charges VALUES (%s, 1000)", (first,))
            producer.commit_transaction(OPERATION_TIMEOUT)
            conn.rollback()

        # Scenario 2: the database commits, then the Kafka transaction is aborted.
        producer.begin_transaction()
        producer.produce(topic, key=second.encode(), value=b"2000", partition=0)
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO charges VALUES (%s, 2000)", (second,))
            conn.commit()
        if not hold_in_client:
            producer.flush(OPERATION_TIMEOUT)
        producer.abort_transaction(OPERATION_TIMEOUT)

        # A committed end marker, so the reader knows it has seen the whole log.
        producer.begin_transaction()
        producer.produce(topic, key=end.encode(), value=b"end", partition=0)
        producer.commit_transaction(OPERATION_TIMEOUT)

        keys = read_values(stack, topic, [0], stop_when=lambda seen: end in seen, field="key")
        with psycopg.connect(dsn) as conn:
            rows = [r[0] for r in conn.execute("SELECT msg_id FROM charges ORDER BY msg_id")]
        outcomes = [
            SplitOutcome(KAFKA_COMMITS, "committed", "rolled back",
                         [k for k in keys if k == first], [r for r in rows if r == first]),
            SplitOutcome(POSTGRES_COMMITS, "aborted", "committed",
                         [k for k in keys if k == second], [r for r in rows if r == second]),
        ]
        return TxnVsPostgres(stack.broker_flavor, outcomes)
    finally:
        del producer
        stack.delete_topics(topic)
        stack.drop_database(db_name)
