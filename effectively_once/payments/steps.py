"""What the consumer does with one charge message: the three layers, step by step.

``process_message(ctx, msg)`` is a plain function so that it can be read in
one sitting, and replaced: the consumer takes ``--step module:function``.
``ctx`` (a ``StepContext``, see consumer.py) gives it:

- ``ctx.shop``: a psycopg connection to the shop database, in autocommit mode,
  so each statement below is its own transaction (its own BEGIN/COMMIT);
- ``ctx.provider.charge(msg, idempotency_key=...)``: the HTTP call that moves
  money, retried on 5xx/429/timeouts with the same key; it raises
  ``ChargeFailed`` when it gives up, which sends the message to the DLQ, and
  ``KeySpent`` when the key replays a 500, which ``charge_or_reconcile`` handles;
- ``ctx.provider.charges_for(msg_id)``: the provider's ledger rows for a
  message, the reconcile;
- ``ctx.uses(layer)``: whether ``dedup``, ``dedup_as_written`` or
  ``idempotency_key`` is switched on;
- ``ctx.crash_point(name)``: where the lab may SIGKILL the process.

After the function returns, the consumer records the outcome and, once the
whole poll batch is done, commits the Kafka offsets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from effectively_once.db import one
from effectively_once.payments.messages import MAX_NEW_KEYS, ChargeMessage, idempotency_key_for, new_key_for

if TYPE_CHECKING:
    import psycopg

    from effectively_once.payments.client import ChargeFailed, ChargeResult


class Provider(Protocol):
    """What a step calls to move money: ``ProviderClient``, or a stand-in that retries another way."""

    def charge(self, msg: ChargeMessage, idempotency_key: str | None = None) -> ChargeResult:
        """Charge ``msg``, retrying with ``idempotency_key``; raise ``ChargeFailed`` when it gives up."""
        ...

    def charges_for(self, msg_id: str) -> list[dict[str, Any]]:
        """The provider's ledger rows for ``msg_id`` (``id``, ``idempotency_key``, ...), oldest first."""
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
    """How one message ended: ``charged``, ``replayed`` (the provider answered from its key store),
    ``reconciled`` (the key replayed a 500 and the provider's ledger held the charge) or ``skipped``
    (the dedup table said it was already done)."""

    result: str
    dedup_hit: bool = False
    charge_id: str | None = None
    retries: int = 0
    side_effect_ms: float | None = None


def charge_or_reconcile(ctx: Context, msg: ChargeMessage, key: str | None) -> ChargeResult:
    """Charge ``msg`` under ``key``; when the key is spent on a 500, reconcile before charging again.

    A provider that stores every answer under its key (Stripe does, 500s
    included) replays a 500 to every retry with that key, and a 500 does not
    say whether the money moved. Retrying the key is useless, and charging
    under a fresh random key is how a customer pays twice. So, on ``KeySpent``:

    1. reconcile: ask the provider's ledger for charges of this msg_id
       (``ctx.provider.charges_for``). Found: that is this message's charge;
       return it (``reconciled=True``), no money moves.
    2. Not found: the attempt under the spent key failed before moving money
       (the provider stores its answer in the same transaction as the charge,
       so a finished attempt that charged is in the ledger). Only now is a new
       key safe, and it is derived, not random: ``charge-<msg_id>-r1``, then
       ``-r2``... (``new_key_for``), so that two consumers reconciling the same
       message at once send the same key and the provider charges once. The
       result carries the key, which the caller records in the dedup row.

    A key found already spent (its very first answer here is a replay) was
    spent by an earlier handling and is simply skipped. A handling that
    itself spends more than ``MAX_NEW_KEYS`` keys on 500s (the provider is
    failing) gives up: the last ``KeySpent`` propagates and the message goes to
    the dead-letter topic, from which a redrive resumes at the next key.
    Without a key nothing is replayed, so nothing is reconciled.
    """
    from effectively_once.payments.client import ChargeResult, KeySpent

    started, retries, spent_here, generation = time.perf_counter(), 0, 0, 0
    while True:
        try:
            result = ctx.provider.charge(msg, idempotency_key=key)
        except KeySpent as spent:
            retries += spent.retries
            # retries > 0: this handling's own first attempt got a fresh 500, which the retry replayed.
            spent_here += spent.retries > 0
            if spent_here > MAX_NEW_KEYS:
                spent.retries = retries  # the dead-letter event counts every retry of this handling
                raise
            found = ctx.provider.charges_for(msg.msg_id)
            if found:
                return ChargeResult(found[0]["id"], replayed=False, retries=retries,
                                    duration_ms=(time.perf_counter() - started) * 1000, reconciled=True,
                                    idempotency_key=found[0].get("idempotency_key"))
            # The ledger proved no money moved for this message: the next derived key.
            generation += 1
            key = new_key_for(msg.msg_id, generation)
            continue
        return replace(result, retries=retries + result.retries,
                       duration_ms=(time.perf_counter() - started) * 1000)


def _result_of(result: ChargeResult) -> str:
    if result.reconciled:
        return "reconciled"
    return "replayed" if result.replayed else "charged"


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
    result = charge_or_reconcile(ctx, msg, key)
    ctx.crash_point("after_provider_call")

    if ctx.uses("dedup") or ctx.uses("dedup_as_written"):
        # The key is part of the record: after a reconcile it may be a new one (charge-<msg_id>-r1).
        ctx.shop.execute(
            "UPDATE charges SET status = 'done', charge_id = %s, idempotency_key = %s, updated_at = now()"
            " WHERE msg_id = %s", (result.charge_id, result.idempotency_key, msg.msg_id))
    ctx.crash_point("after_status_update")
    return Outcome(_result_of(result), dedup_hit=dedup_hit, charge_id=result.charge_id,
                   retries=result.retries, side_effect_ms=result.duration_ms)


def process_batch(ctx: Context, msgs: list[ChargeMessage]) -> list[Outcome | ChargeFailed]:
    """The same three layers with the dedup work done once per poll instead of once per message.

    One INSERT claims every msg_id of the batch, each message is charged in
    order (``charge_or_reconcile``), and one UPDATE marks the whole batch 'done'
    before the offsets are committed. The rules are those of
    ``process_message``: 'done' -> skip, 'pending' -> charge again with the same key. A crash now leaves more rows
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
    charged: dict[str, ChargeResult] = {}
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
            result = charge_or_reconcile(ctx, msg, key)
        except ChargeFailed as exc:
            results.append(exc)
            continue
        ctx.crash_point("after_provider_call")
        charged[msg.msg_id] = result
        results.append(Outcome(_result_of(result), dedup_hit=hit, charge_id=result.charge_id,
                               retries=result.retries, side_effect_ms=result.duration_ms))

    if dedup and charged:
        ctx.shop.execute(
            "UPDATE charges SET status = 'done', charge_id = v.charge_id, idempotency_key = v.key, updated_at = now()"
            " FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(msg_id, charge_id, key)"
            " WHERE charges.msg_id = v.msg_id",
            (list(charged), [r.charge_id for r in charged.values()], [r.idempotency_key for r in charged.values()]))
    ctx.crash_point("after_status_update")
    return results
