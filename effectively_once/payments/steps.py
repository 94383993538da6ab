"""What the consumer does with one charge message: the three layers, step by step.

``process_message(ctx, msg)`` is a plain function so that it can be read in
one sitting, and replaced: the consumer takes ``--step module:function``.
``ctx`` (a ``StepContext``, see consumer.py) gives it:

- ``ctx.shop``: a psycopg connection to the shop database, in autocommit mode,
  so each statement below is its own transaction (the lesson's BEGIN/COMMIT);
- ``ctx.provider.charge(msg, idempotency_key=...)``: the HTTP call that moves
  money, retried on 5xx/429/timeouts with the same key; it raises
  ``ChargeFailed`` when it gives up, which sends the message to the DLQ;
- ``ctx.uses(layer)``: whether ``dedup``, ``dedup_as_written`` or
  ``idempotency_key`` is switched on;
- ``ctx.crash_point(name)``: where the lab may SIGKILL the process.

After the function returns, the consumer records the outcome and, once the
whole poll batch is done, commits the Kafka offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from effectively_once.payments.messages import ChargeMessage, idempotency_key_for


@dataclass(frozen=True)
class Outcome:
    """How one message ended: ``charged``, ``replayed`` (the provider answered from its key store)
    or ``skipped`` (the dedup table said it was already done)."""

    result: str
    dedup_hit: bool = False
    charge_id: str | None = None
    retries: int = 0
    side_effect_ms: float | None = None


def process_message(ctx, msg: ChargeMessage) -> Outcome:
    """Charge ``msg`` effectively once: dedup row, provider call with a key, mark done."""
    ctx.crash_point("before_dedup_insert")
    dedup_hit = False
    if ctx.uses("dedup") or ctx.uses("dedup_as_written"):
        inserted = ctx.shop.execute(
            "INSERT INTO charges (msg_id, status) VALUES (%s, 'pending') ON CONFLICT (msg_id) DO NOTHING",
            (msg.msg_id,)).rowcount
        if inserted == 0:
            dedup_hit = True
            if ctx.uses("dedup_as_written"):
                # The lesson's literal rule: "0 rows inserted: already processed, skip".
                # A 'pending' row left by a crash is skipped too, and its charge is lost.
                return Outcome("skipped", dedup_hit=True)
            status = ctx.shop.execute("SELECT status FROM charges WHERE msg_id = %s", (msg.msg_id,)).fetchone()[0]
            if status == "done":
                return Outcome("skipped", dedup_hit=True)
            # 'pending': an earlier attempt died between this row and 'done'. Whether the
            # money moved is unknown here, so call the provider again with the same key.
            ctx.shop.execute("UPDATE charges SET attempts = attempts + 1, updated_at = now() WHERE msg_id = %s",
                             (msg.msg_id,))
    ctx.crash_point("after_dedup_insert")

    key = idempotency_key_for(msg.msg_id) if ctx.uses("idempotency_key") else None
    result = ctx.provider.charge(msg, idempotency_key=key)
    ctx.crash_point("after_provider_call")

    if ctx.uses("dedup") or ctx.uses("dedup_as_written"):
        ctx.shop.execute(
            "UPDATE charges SET status = 'done', charge_id = %s, updated_at = now() WHERE msg_id = %s",
            (result.charge_id, msg.msg_id))
    ctx.crash_point("after_status_update")
    return Outcome("replayed" if result.replayed else "charged", dedup_hit=dedup_hit, charge_id=result.charge_id,
                   retries=result.retries, side_effect_ms=result.duration_ms)
