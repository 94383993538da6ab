"""What a payment lab run reports: the rows its databases and dead-letter topic hold, and what its money did.

``RunReports`` is the reading half of ``PaymentLab`` (``effectively_once.payments.lab``): it
queries the shop and provider databases and the dead-letter topic of one run, and
answers with a ``Table`` (rows that render as HTML in a notebook and as text
elsewhere), a ``PaymentReport`` (the counts the course asserts on) or, for a
SIGKILL sent from outside, a ``KillReport``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from effectively_once.db import columns, one
from effectively_once.kafka import END_READER_SETTINGS, client_settings, quiet_logger, read_topic
from effectively_once.lifetime import SIGKILL
from effectively_once.payments.consumer_settings import NAMED_LAYER_SETS
from effectively_once.payments.messages import idempotency_key_for, intent_key_for
from effectively_once.protocol import DLQ_ERROR_TYPE, DLQ_REASON, DLQ_SOURCE_OFFSET, DLQ_SOURCE_PARTITION, plural

if TYPE_CHECKING:
    from effectively_once.payments.children import ConsumerProcess
    from effectively_once.payments.producer import Sent
    from effectively_once.stack import Stack

REPORT_KEYS = ("messages", "charges", "duplicate_charges", "lost_charges", "dedup_hits", "key_replays", "dlq")

__all__ = ["REPORT_KEYS", "KillReport", "PaymentReport", "RunReports", "Table", "layer_set_name"]


def layer_set_name(layers: Iterable[str]) -> str:
    """The name of a layer set (``both``, ``none``, ``offsets_in_db``, ...), or its comma list if it has none."""
    chosen = tuple(layers)
    for name, members in NAMED_LAYER_SETS.items():
        if set(members) == set(chosen):
            return name
    return ",".join(chosen)



@dataclass
class Table:
    """A few database rows that render as an HTML table in a notebook and as text elsewhere."""

    title: str
    columns: list[str]
    rows: list[tuple]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        """Every value of one column."""
        index = self.columns.index(name)
        return [row[index] for row in self.rows]

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                       for row in self.rows)
        empty = "" if self.rows else f"<tr><td colspan='{len(self.columns)}'><i>no rows</i></td></tr>"
        return (f"<table><caption style='text-align:left'><b>{html.escape(self.title)}</b> "
                f"({plural(len(self.rows), 'row')})</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}{empty}</tbody></table>")

    def __repr__(self) -> str:
        cells = [list(self.columns)] + [[_cell(v) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = [f"{self.title} ({plural(len(self.rows), 'row')})"]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _dlq_msg_id(record: dict[str, Any]) -> str:
    """A dead-lettered record's msg_id: its header, else the body's when the body is JSON with one,
    else its key, else a dash."""
    found = record["headers"].get("msg_id")
    if not found:
        try:
            body = json.loads(record["value"] or b"")
            found = body.get("msg_id") if isinstance(body, dict) and isinstance(body.get("msg_id"), str) else None
        except ValueError:
            found = None
    if not found and record.get("key"):
        found = f"(key {record['key'].decode('utf-8', 'replace')})"
    return found or "—"


@dataclass
class PaymentReport:
    """What a run did to the money: the counts the course asserts on, and which msg_ids went wrong."""

    messages: int
    charges: int
    duplicate_charges: int
    lost_charges: int
    dedup_hits: int
    key_replays: int
    dlq: int
    layers: tuple[str, ...] = ()
    dead_lettered: int = 0          # distinct source records in the DLQ (``dlq`` counts writes, at-least-once)
    crash_at: str | None = None
    duplicated: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    shop_dsn: str | None = None
    provider_dsn: str | None = None

    @property
    def ok(self) -> bool:
        """True when no charge was duplicated and none was lost."""
        return self.duplicate_charges == 0 and self.lost_charges == 0

    def as_dict(self) -> dict[str, int]:
        """The seven counts, as plain data."""
        return {key: getattr(self, key) for key in REPORT_KEYS}

    def __getitem__(self, key: str) -> int:
        return self.as_dict()[key]

    def _repr_html_(self) -> str:
        verdict = ("<span style='color:#1a7f37'>every message charged exactly once</span>" if self.ok else
                   "<span style='color:#cf222e'>" + "; ".join(
                       part for part in (
                           f"{self.duplicate_charges} charged twice" if self.duplicate_charges else "",
                           f"{self.lost_charges} never charged" if self.lost_charges else "") if part) + "</span>")
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in self.as_dict().items())
        where = f"layers <code>{layer_set_name(self.layers)}</code>, crash at <code>{self.crash_at or 'nowhere'}</code>"
        return f"<div><p>{where}: <b>{verdict}</b></p><table>{rows}</table></div>"


@dataclass
class KillReport:
    """What a SIGKILL from outside hit: which consumer, where it was, and what it had done by then."""

    pid: int
    by: str                          # who sent it: "the button", "lab.kill_consumer()"
    paused_at: str | None            # the crash point it was waiting at, None if it was still running
    msg_id: str | None               # the message it was handling there
    messages: int                    # charge messages the lab produced
    charged: int                     # ledger rows for them at the provider when it died
    pending: int                     # shop rows still 'pending'
    done: int                        # shop rows 'done'
    exit_status: int | None

    def __repr__(self) -> str:
        where = (f"it was paused at {self.paused_at} with {self.msg_id}" if self.paused_at else
                 "it was still running, between two crash points")
        status = (f"exit status {self.exit_status} (SIGKILL)" if self.exit_status == -SIGKILL
                  else f"exit status {self.exit_status}")
        return (f"SIGKILL sent to consumer pid {self.pid} by {self.by}: {where}.\n"
                f"money moved at the provider: {self.charged} of {plural(self.messages, 'message')}; "
                f"shop rows: {self.pending} 'pending', {self.done} 'done'; {status}")



class RunReports:
    """The queries that read one run's results: mixed into ``PaymentLab``, which sets the attributes below."""

    stack: Stack
    topic: str
    dlq_topic: str
    group: str
    shop_dsn: str
    provider_dsn: str | None
    layers: tuple[str, ...]
    sent: list[Sent]
    consumers: list[ConsumerProcess]

    @property
    def msg_ids(self) -> list[str]:
        """The msg_ids of every well-formed charge produced so far, in order."""
        return [s.msg_id for s in self.sent if s.msg_id]

    def _dedup_statuses(self) -> tuple[int, int]:
        """How many of the run's shop rows are 'pending', and how many 'done'."""
        with psycopg.connect(self.shop_dsn) as conn:
            pending, done = one(conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'done')"
                " FROM charges WHERE msg_id = ANY(%s)", (self.msg_ids,)), "the shop's dedup rows")
        return pending, done

    def _ledger_counts(self) -> dict[str, int]:
        if self.provider_dsn is None:
            return {}
        with psycopg.connect(self.provider_dsn) as conn:
            rows = conn.execute("SELECT msg_id, count(*) FROM ledger WHERE msg_id = ANY(%s) GROUP BY msg_id",
                                (self.msg_ids,)).fetchall()
        return dict(rows)

    def _dead_lettered_events(self) -> int:
        with psycopg.connect(self.shop_dsn) as conn:
            return one(conn.execute("SELECT count(DISTINCT (partition, \"offset\")) FROM consumer_events"
                                    " WHERE result = 'dead_lettered' AND topic = %s", (self.topic,)),
                       "the count of dead-lettered events")[0]

    def dlq_records(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every record in the run's dead-letter topic: its headers and value, oldest first.

        Reads from the beginning to the end of every partition, and on until it
        has at least as many records as the consumers logged as dead-lettered
        (a write still in flight), or ``timeout``.
        """
        from confluent_kafka import Consumer

        expected = self._dead_lettered_events()
        reader = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap, **client_settings(),
                           "group.id": f"{self.group}.dlq-reader", "enable.auto.commit": False,
                           **END_READER_SETTINGS, "logger": quiet_logger()})
        try:
            return [{"headers": {k: (v or b"").decode("utf-8", "replace") for k, v in (record.headers() or [])},
                     "value": record.value(), "key": record.key(), "partition": record.partition(),
                     "offset": record.offset()}
                    for record in read_topic(reader, self.dlq_topic, until_end=True, at_least=expected,
                                             timeout=timeout)]
        finally:
            reader.close()

    def report(self) -> PaymentReport:
        """Count what the run did to the money (see ``PaymentReport``)."""
        ledger = self._ledger_counts()
        dlq = self.dlq_records()
        dead = {(int(r["headers"].get(DLQ_SOURCE_PARTITION, -1)), int(r["headers"].get(DLQ_SOURCE_OFFSET, -1)))
                for r in dlq}
        lost = [s.msg_id or f"{self.topic}[{s.partition}]@{s.offset}" for s in self.sent
                if ledger.get(s.msg_id or "", 0) == 0 and (s.partition, s.offset) not in dead]
        with psycopg.connect(self.shop_dsn) as conn:
            hits, replays = one(conn.execute(
                "SELECT count(*) FILTER (WHERE dedup_hit), count(*) FILTER (WHERE result = 'replayed')"
                " FROM consumer_events WHERE topic = %s", (self.topic,)), "the run's consumer events")
        crash_points = [c.crash_at for c in self.consumers if c.crash_at]
        return PaymentReport(
            messages=len(self.sent), charges=sum(ledger.values()),
            duplicate_charges=sum(1 for n in ledger.values() if n > 1), lost_charges=len(lost),
            dedup_hits=hits, key_replays=replays, dlq=len(dlq), dead_lettered=len(dead), layers=self.layers,
            crash_at=crash_points[0] if crash_points else None,
            duplicated=sorted(m for m, n in ledger.items() if n > 1), lost=lost,
            shop_dsn=self.shop_dsn, provider_dsn=self.provider_dsn)

    def _table(self, dsn: str | None, title: str, sql: str, params: tuple = ()) -> Table:
        if dsn is None:
            return Table(title, [], [])
        with psycopg.connect(dsn) as conn:
            cur = conn.execute(sql, params)
            return Table(title, columns(cur), cur.fetchall())

    def shop_rows(self, limit: int = 50) -> Table:
        """The shop's dedup table ``charges``, by msg_id (with the PaymentIntent each row stored, on that path)."""
        return self._table(self.shop_dsn, "shop: charges",
                           "SELECT msg_id, status, payment_intent, charge_id, attempts FROM charges"
                           " WHERE msg_id = ANY(%s) ORDER BY msg_id LIMIT %s", (self.msg_ids, limit))

    def ledger_rows(self, limit: int = 50) -> Table:
        """The provider's ``ledger`` rows for this run's messages: one row per time money moved."""
        return self._table(self.provider_dsn, "provider: ledger",
                           "SELECT msg_id, charge_id, idempotency_key, customer, amount, currency FROM ledger"
                           " WHERE msg_id = ANY(%s) ORDER BY msg_id, created_at LIMIT %s", (self.msg_ids, limit))

    def key_rows(self, limit: int = 50) -> Table:
        """The provider's ``idempotency_keys`` rows for this run's messages: the answer stored under each key.

        ``object`` is what the answer was (a ``payment_intent``, a ``charge``, or
        none for an error); ``charge_id`` the charge it carries, if any (a
        confirmed PaymentIntent's ``latest_charge``).
        """
        keys = [idempotency_key_for(m) for m in self.msg_ids]
        intents = [intent_key_for(m) for m in self.msg_ids]
        return self._table(self.provider_dsn, "provider: idempotency_keys",
                           "SELECT key, state, status_code, response->>'object' AS object,"
                           " CASE WHEN response->>'object' = 'charge' THEN response->>'id'"
                           "      ELSE response->>'latest_charge' END AS charge_id FROM idempotency_keys"
                           " WHERE key = ANY(%s) OR key LIKE ANY(%s) ORDER BY key LIMIT %s",
                           (keys + intents, [k + "-r%" for k in keys], limit))

    def event_rows(self, limit: int = 50) -> Table:
        """The consumers' ``consumer_events``: one row per message handled, in order."""
        return self._table(self.shop_dsn, "shop: consumer_events",
                           "SELECT msg_id, result, dedup_hit, retries, round(side_effect_ms::numeric, 1)"
                           " AS side_effect_ms, trace_id, error FROM consumer_events WHERE topic = %s"
                           " ORDER BY id LIMIT %s",
                           (self.topic, limit))

    def dlq_rows(self) -> Table:
        """The dead-letter topic: where each record came from and why it is there."""
        rows = [(_dlq_msg_id(r), r["headers"].get(DLQ_ERROR_TYPE), r["headers"].get(DLQ_REASON),
                 r["headers"].get(DLQ_SOURCE_PARTITION), r["headers"].get(DLQ_SOURCE_OFFSET))
                for r in self.dlq_records()]
        return Table("dead-letter topic", ["msg_id", "error_type", "reason", "source_partition", "source_offset"],
                     rows)
