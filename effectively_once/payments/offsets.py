"""The ``offsets_in_db`` layer: the consumer's offsets kept in the shop's database, beside the charge.

Kafka's transactions cover what a transactional producer writes to Kafka,
offsets included; PostgreSQL is not part of them. The other way round works:
the consumer stores, in the one PostgreSQL transaction that records a
charge, the offset it will read next, and when a partition is assigned it
seeks to that offset instead of the one committed to Kafka. The charge's row
and the position then commit or vanish together: a message whose transaction
committed is never read again, one whose transaction did not is read again.

    BEGIN;
      INSERT INTO charges (msg_id, status, charge_id) VALUES (:msg_id, 'done', :charge_id) ...;
      INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) VALUES (..., :offset + 1)
        ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = GREATEST(...);
    COMMIT;

What the table cannot cover is the provider: the money moves before the
transaction. A crash between the two reads the message again and calls the
provider again; only the Idempotency-Key makes that second call harmless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from effectively_once.payments.messages import ChargeMessage, idempotency_key_for
from effectively_once.payments.steps import OffsetsContext, Outcome

if TYPE_CHECKING:
    import psycopg

_STORE = ("INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) VALUES (%s, %s, %s, %s)"
          " ON CONFLICT (group_id, topic, partition) DO UPDATE"
          " SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()")


def store_offsets(conn: psycopg.Connection, group: str, topic: str, positions: dict[int, int]) -> None:
    """Upsert where ``group`` goes on in each partition of ``topic`` (``{partition: next_offset}``).

    Never moves a partition back: a late writer (a consumer that lost the
    partition and does not know yet) cannot undo a newer position. Runs in
    the caller's transaction, if one is open.
    """
    for partition, next_offset in sorted(positions.items()):
        conn.execute(_STORE, (group, topic, partition, next_offset))


def stored_offsets(conn: psycopg.Connection, group: str, topic: str) -> dict[int, int]:
    """The next offset of each partition of ``topic`` that ``group`` has stored, ``{partition: next_offset}``."""
    rows = conn.execute("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s AND topic = %s",
                        (group, topic)).fetchall()
    return {partition: next_offset for partition, next_offset in rows}


def process_message(ctx: OffsetsContext, msg: ChargeMessage) -> Outcome:
    """Charge ``msg``, then record the charge and the partition's next offset in one transaction.

    There is no 'pending' row: the stored offset is what keeps a handled
    message from coming back. The crash points keep their place in the
    sequence (the first two fall before the provider call, where nothing has
    moved yet); ``after_status_update`` falls after the COMMIT.
    """
    ctx.crash_point("before_dedup_insert")
    ctx.crash_point("after_dedup_insert")
    key = idempotency_key_for(msg.msg_id) if ctx.uses("idempotency_key") else None
    result = ctx.provider.charge(msg, idempotency_key=key)
    ctx.crash_point("after_provider_call")
    with ctx.shop.transaction():
        ctx.shop.execute(
            "INSERT INTO charges (msg_id, status, charge_id) VALUES (%s, 'done', %s) ON CONFLICT (msg_id) DO UPDATE"
            " SET status = 'done', charge_id = EXCLUDED.charge_id, attempts = charges.attempts + 1,"
            " updated_at = now()", (msg.msg_id, result.charge_id))
        store_offsets(ctx.shop, ctx.group, ctx.topic, {msg.partition: msg.offset + 1})
    ctx.crash_point("after_status_update")
    return Outcome("replayed" if result.replayed else "charged", charge_id=result.charge_id,
                   retries=result.retries, side_effect_ms=result.duration_ms)
