"""What the consumer does with one charge message: the three layers, step by step.

``process_message(ctx, msg)`` is a plain function so that it can be read in
one sitting, and replaced: the consumer takes ``--step module:function``.
``ctx`` (a ``StepContext``, see consumer.py) gives it:

- ``ctx.shop``: a psycopg connection to the shop database, in autocommit mode,
  so each statement below is its own transaction (its own BEGIN/COMMIT);
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
from typing import TYPE_CHECKING, Protocol

from effectively_once.db import one
from effectively_once.payments.messages import ChargeMessage, idempotency_key_for

if TYPE_CHECKING:
    import psycopg

    from effectively_once.payments.client import ChargeFailed, ChargeResult


class Provider(Protocol):
    """What a step calls to move money: ``ProviderClient``, or a stand-in that retries another way."""

    def charge(self, msg: ChargeMessage, idempotency_key: str | None = None) -> ChargeResult:
        """Charge ``msg``, retrying with ``idempotency_key``; raise ``ChargeFailed`` when it gives up."""
        ...


class Context(Protocol):
    """What a step uses of its ``ctx``: the consumer's ``StepContext`` has all of it.

    A wrapper that swaps the provider (the Stripe 2020 replay's buggy retry)
    is a ``Context`` too.
    """

    @property
    def shop(self) -> psycopg.Connection: ...

    @property
    def provider(self) -> Provider: ...

    def uses(self, layer: str) -> bool:
        """True when ``layer`` is switched on."""
        ...

    def crash_point(self, name: str) -> None:
        """Mark a crash point, where the lab may SIGKILL the process."""
        ...


@dataclass(frozen=True)
class Outcome:
    """How one message ended: ``charged``, ``replayed`` (the provider answered from its key store)
    or ``skipped`` (the dedup table said it was already done)."""

    result: str
    dedup_hit: bool = False
    charge_id: str | None = None
    retries: int = 0
    side_effect_ms: float | None = None


def process_message(ctx: Context, msg: ChargeMessage) -> Outcome:
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
                # The textbook recipe's rule to the letter: "0 rows inserted: already processed, skip".
                # A 'pending' row left by a crash is skipped too, and its charge is lost.
                return Outcome("skipped", dedup_hit=True)
            cur = ctx.shop.execute("SELECT status FROM charges WHERE msg_id = %s", (msg.msg_id,))
            status = one(cur, f"the dedup row of {msg.msg_id}, which the INSERT just found")[0]
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


def process_batch(ctx: Context, msgs: list[ChargeMessage]) -> list[Outcome | ChargeFailed]:
    """The same three layers with the dedup work done once per poll instead of once per message.

    One INSERT claims every msg_id of the batch, each message is charged in
    order, and one UPDATE marks the whole batch 'done' before the offsets are
    committed. The rules are those of ``process_message``: 'done' -> skip,
    'pending' -> charge again with the same key. A crash now leaves more rows
    'pending' at once, which is harmless with the key and costly without it.
    Returns, for each message, its ``Outcome`` or the ``ChargeFailed`` that ends in the DLQ.
    """
    from effectively_once.payments.client import ChargeFailed

    dedup = ctx.uses("dedup") or ctx.uses("dedup_as_written")
    ctx.crash_point("before_dedup_insert")
    existing: dict[str, str] = {}
    if dedup:
        ids = list(dict.fromkeys(m.msg_id for m in msgs))
        new = {row[0] for row in ctx.shop.execute(
            "INSERT INTO charges (msg_id, status) SELECT unnest(%s::text[]), 'pending'"
            " ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id", (ids,))}
        old = [i for i in ids if i not in new]
        if old:
            existing = dict(ctx.shop.execute("SELECT msg_id, status FROM charges WHERE msg_id = ANY(%s)",
                                              (old,)).fetchall())
            if not ctx.uses("dedup_as_written"):
                ctx.shop.execute("UPDATE charges SET attempts = attempts + 1, updated_at = now()"
                                 " WHERE msg_id = ANY(%s) AND status = 'pending'", (old,))
    ctx.crash_point("after_dedup_insert")

    results: list[Outcome | ChargeFailed] = []
    charged: dict[str, str] = {}
    seen: set[str] = set()
    for msg in msgs:
        hit = msg.msg_id in existing or msg.msg_id in seen
        seen.add(msg.msg_id)
        if dedup and hit and (ctx.uses("dedup_as_written") or existing.get(msg.msg_id) != "pending"
                              or msg.msg_id in charged):
            results.append(Outcome("skipped", dedup_hit=True))
            continue
        key = idempotency_key_for(msg.msg_id) if ctx.uses("idempotency_key") else None
        try:
            result = ctx.provider.charge(msg, idempotency_key=key)
        except ChargeFailed as exc:
            results.append(exc)
            continue
        ctx.crash_point("after_provider_call")
        charged[msg.msg_id] = result.charge_id
        results.append(Outcome("replayed" if result.replayed else "charged", dedup_hit=hit,
                               charge_id=result.charge_id, retries=result.retries,
                               side_effect_ms=result.duration_ms))

    if dedup and charged:
        ctx.shop.execute(
            "UPDATE charges SET status = 'done', charge_id = v.charge_id, updated_at = now()"
            " FROM unnest(%s::text[], %s::text[]) AS v(msg_id, charge_id) WHERE charges.msg_id = v.msg_id",
            (list(charged), list(charged.values())))
    ctx.crash_point("after_status_update")
    return results
