"""What the consumer does with one charge message: the three layers, step by step, on two paths to the provider.

Each step is a plain function, so that it can be read in one sitting, and
replaced: the consumer takes ``--step module:function``, and ``--api`` picks
the default one.

- ``process_message``, the **PaymentIntent path** (the default, ``api="payment_intents"``):
  claim the dedup row; create the PaymentIntent under ``intent-<msg_id>`` (no
  money moves); store its id in the dedup row, the *recovery point*; confirm it
  under ``charge-<msg_id>``, the call that moves money; mark the row 'done'.
  An answer to the confirm that does not say whether the money moved (a 5xx
  stored under the key, a timeout, a dropped connection) is settled by
  retrieving the PaymentIntent by id, which is strongly consistent
  (``confirm_or_recover``). A redelivered message whose row is 'pending' starts
  again from the stored id.
- ``process_charge``, the **one-shot Charges path** (``api="charges"``): claim
  the dedup row; ``POST /v1/charges`` under ``charge-<msg_id>``; mark 'done'.
  The recipe as usually written, and the path of the lessons about it. It has
  no recovery point: after a 5xx stored under its key there is nothing
  strongly consistent to ask (Search is not: ``recovery.search_then_charge``
  shows what trusting it does), so the row stays 'pending' and the message
  goes to the dead-letter topic.
- ``process_batch`` and ``process_charge_batch``: the same two paths with the
  dedup work done once per poll batch (``--batch-dedup``).

``ctx`` (a ``StepContext``, below; any ``Context`` will do) gives a step:

- ``ctx.shop``: a psycopg connection to the shop database, in autocommit mode,
  so each statement below is its own transaction (its own BEGIN/COMMIT);
- ``ctx.provider``: the provider through the official SDK (``client.ProviderClient``):
  ``create_intent``, ``confirm_intent``, ``retrieve_intent``, ``charge``; each
  raises ``ChargeFailed`` when it gives up, which sends the message to the DLQ;
- ``ctx.uses(layer)``: whether ``dedup``, ``dedup_as_written`` or
  ``idempotency_key`` is switched on. Without ``idempotency_key`` the step
  passes no key, and the SDK sends a random one of its own per call;
- ``ctx.crash_point(name)``: where the lab may SIGKILL the process.

After the function returns, the consumer records the outcome and, once the
whole poll batch is done, commits the Kafka offsets.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from effectively_once import protocol
from effectively_once.db import one
from effectively_once.lifetime import kill_now
from effectively_once.payments.messages import (
    MAX_NEW_KEYS,
    ChargeMessage,
    idempotency_key_for,
    intent_key_for,
    new_key_for,
)
from effectively_once.protocol import CrashPoint, EventKind, Layer, Result

if TYPE_CHECKING:
    import psycopg

    from effectively_once.payments.client import ChargeFailed, ChargeResult, IntentResult, ProviderClient

# What a retrieved PaymentIntent's status says about the money (https://docs.stripe.com/payments/paymentintents/lifecycle).
MOVED, NOT_MOVED = "succeeded", ("requires_payment_method", "requires_confirmation")


class Provider(Protocol):
    """What a step calls: ``ProviderClient``, or a stand-in that retries another way."""

    def create_intent(self, msg: ChargeMessage, idempotency_key: str | None = None) -> IntentResult:
        """Create the PaymentIntent of ``msg`` (no money moves)."""
        ...

    def confirm_intent(self, msg: ChargeMessage, intent_id: str, idempotency_key: str | None = None) -> ChargeResult:
        """Confirm a PaymentIntent: the call that moves money."""
        ...

    def retrieve_intent(self, intent_id: str) -> IntentResult:
        """The PaymentIntent as it is now, read by id."""
        ...

    def charge(self, msg: ChargeMessage, idempotency_key: str | None = None) -> ChargeResult:
        """Charge ``msg`` in one call; raise ``ChargeFailed`` when it gives up."""
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

    def uses(self, layer: Layer) -> bool:
        """True when ``layer`` is switched on."""
        ...

    def crash_point(self, name: CrashPoint) -> None:
        """Mark a crash point, where the lab may SIGKILL the process."""
        ...


class OffsetsContext(Context, Protocol):
    """A ``Context`` that also says where the ``offsets_in_db`` step stores the position it reaches."""

    @property
    def topic(self) -> str: ...

    @property
    def group(self) -> str: ...


class StepContext:
    """What a step function may use: the shop database, the provider, the layers, the crash points,
    and the topic and group it consumes for (where the ``offsets_in_db`` step stores its offsets).

    The consumer builds one and hands it to every step: it is the ``Context`` above, made concrete.
    """

    def __init__(self, shop: psycopg.Connection, provider: ProviderClient, layers: Iterable[Layer],
                 crash_at: CrashPoint | None = None, crash_on: int = 1, *, topic: str = "", group: str = "",
                 pause_at: CrashPoint | None = None) -> None:
        self.shop, self.provider, self.layers = shop, provider, frozenset(layers)
        self.crash_at, self.crash_on, self.pause_at = crash_at, crash_on, pause_at
        self.current_msg_id = ""
        self.topic, self.group = topic, group
        self.reached: dict[str, int] = {}

    def uses(self, layer: Layer) -> bool:
        """True when ``layer`` (dedup, dedup_as_written, idempotency_key, offsets_in_db) is switched on."""
        if layer not in protocol.LAYERS:
            raise ValueError(f"unknown layer {layer!r}; the layers are {', '.join(protocol.LAYERS)}")
        return layer in self.layers

    def crash_point(self, name: CrashPoint) -> None:
        """Mark a crash point; SIGKILL this process the ``crash_on``-th time it reaches ``crash_at``.

        The first time it reaches ``pause_at`` it stops there instead and waits,
        for a SIGKILL from outside (the learner's), or a SIGTERM, which ends it.
        """
        if name not in protocol.ALL_CRASH_POINTS:
            raise ValueError(f"unknown crash point {name!r}; the crash points are "
                             f"{', '.join(protocol.ALL_CRASH_POINTS)}")
        self.reached[name] = self.reached.get(name, 0) + 1
        if name == self.crash_at and self.reached[name] == self.crash_on:
            # The event for the parent first: the human sentence stays the process's last words.
            print(protocol.event(EventKind.CRASH_POINT, point=name, count=self.crash_on).format(), flush=True)
            print(protocol.crash_point_reached(name, self.crash_on), flush=True)
            kill_now(os.getpid())
        if name == self.pause_at and self.reached[name] == 1:
            # No cleanup to wait for while paused: a SIGTERM (the lab stopping) ends the process at once.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            msg_id = self.current_msg_id or "(a batch)"
            print(protocol.event(EventKind.PAUSED, point=name, msg_id=msg_id).format(), flush=True)
            print(protocol.paused_at(name, msg_id), flush=True)
            while True:
                if hasattr(signal, "pause"):
                    signal.pause()
                else:  # Windows has no pause(); a SIGTERM ends the sleep all the same
                    time.sleep(3600)


@dataclass(frozen=True)
class Outcome:
    """How one message ended: ``charged``, ``replayed`` (the provider answered from its key store),
    ``recovered`` (the confirm's answer said nothing, and the PaymentIntent, retrieved by id, showed the
    money had moved) or ``skipped`` (the dedup table said it was already done). ``protocol.RESULTS`` lists
    every result; ``consumer_events.result`` takes no other."""

    result: Result
    dedup_hit: bool = False
    charge_id: str | None = None
    retries: int = 0
    side_effect_ms: float | None = None

    def __post_init__(self) -> None:
        # Here, in the step that made it, rather than as a CHECK violation when the consumer records it.
        if self.result not in protocol.RESULTS:
            raise ValueError(f"Outcome: unknown result {self.result!r}; a step returns one of "
                             f"{', '.join(protocol.RESULTS)}")


@dataclass(frozen=True)
class Claim:
    """What the dedup row said when the step claimed it: skip the message, or go on (from a stored
    PaymentIntent, when there is one)."""

    hit: bool = False
    skip: bool = False
    payment_intent: str | None = None


def _dedup(ctx: Context) -> bool:
    return ctx.uses("dedup") or ctx.uses("dedup_as_written")


def claim_row(ctx: Context, msg: ChargeMessage) -> Claim:
    """INSERT the message's 'pending' row; on a conflict, decide from the row that is there.

    'done': skip. 'pending': an earlier attempt died between this row and
    'done'; whether the money moved is unknown here, so go on (``attempts``
    + 1), from its PaymentIntent if it stored one. The textbook recipe to the
    letter (``dedup_as_written``) skips any existing row, a 'pending' one
    too, and so loses its charge.
    """
    inserted = ctx.shop.execute(
        "INSERT INTO charges (msg_id, status) VALUES (%s, 'pending') ON CONFLICT (msg_id) DO NOTHING",
        (msg.msg_id,)).rowcount
    if inserted:
        return Claim()
    if ctx.uses("dedup_as_written"):
        return Claim(hit=True, skip=True)
    cur = ctx.shop.execute("SELECT status, payment_intent FROM charges WHERE msg_id = %s", (msg.msg_id,))
    status, payment_intent = one(cur, f"the dedup row of {msg.msg_id}, which the INSERT just found")
    if status == "done":
        return Claim(hit=True, skip=True)
    ctx.shop.execute("UPDATE charges SET attempts = attempts + 1, updated_at = now() WHERE msg_id = %s",
                     (msg.msg_id,))
    return Claim(hit=True, payment_intent=payment_intent)


def confirm_or_recover(ctx: Context, msg: ChargeMessage, intent_id: str, key: str | None) -> ChargeResult:
    """Confirm the PaymentIntent ``intent_id`` under ``key``; settle any answer that says nothing by retrieving it.

    The confirm may end without saying whether the money moved: a 5xx stored
    under the key (every retry with the key replays it), a timeout, a
    connection that broke before the answer, a key still in flight elsewhere;
    or it may be refused because the PaymentIntent cannot be confirmed any more
    (``payment_intent_unexpected_state``: someone confirmed it already). Each
    time, the step asks the PaymentIntent itself, by id
    (``GET /v1/payment_intents/{id}``, strongly consistent):

    - ``succeeded``: the money moved; its charge is ``latest_charge``. Return
      it (``recovered=True``): nothing moves again.
    - ``requires_confirmation`` (or ``requires_payment_method``): no money
      moved. Confirm again: under the same key when it holds nothing final,
      under the next derived key (``charge-<msg_id>-r1``, ...) when a 5xx is
      stored under it. Safe even if the first confirm is still running
      somewhere: the provider confirms one PaymentIntent once, and the later
      confirm is refused (and recovered here as succeeded).
    - anything else: the ``ChargeFailed`` stands (the message goes to the
      dead-letter topic; its row keeps the PaymentIntent's id for the sweeper).

    This is what Search cannot do: right after a write, Search may not find it
    (``recovery.search_then_charge``). A handling that meets more than
    ``MAX_NEW_KEYS`` fresh failures (the provider keeps failing) gives up with
    the last ``ChargeFailed``; keys spent by earlier handlings (their 500 comes
    back replayed) are stepped over without counting, so a later handling (a
    redrive, the sweeper) goes on from the next key.
    """
    from effectively_once.payments.client import UNEXPECTED_STATE, ChargeFailed, ChargeResult

    started, retries, fresh, generation = time.perf_counter(), 0, 0, 0
    while True:
        try:
            result = ctx.provider.confirm_intent(msg, intent_id, idempotency_key=key)
        except ChargeFailed as failed:
            retries += failed.retries
            if not (failed.indeterminate or failed.code == UNEXPECTED_STATE) or fresh >= MAX_NEW_KEYS:
                failed.retries = retries  # the dead-letter event counts every retry of this handling
                raise
            intent = ctx.provider.retrieve_intent(intent_id)
            if intent.status == MOVED and intent.latest_charge:
                return ChargeResult(intent.latest_charge, replayed=False, retries=retries,
                                    duration_ms=(time.perf_counter() - started) * 1000, recovered=True,
                                    idempotency_key=key, payment_intent=intent_id)
            if intent.status not in NOT_MOVED or failed.code == UNEXPECTED_STATE:
                failed.retries = retries
                raise
            if key is not None and failed.kind == "key_spent":
                generation += 1
                key = new_key_for(msg.msg_id, generation)
            # A key an earlier handling spent (its answer here was a replay) costs this handling nothing.
            fresh += not failed.replayed
            retries += 1
            continue
        return replace(result, retries=retries + result.retries,
                       duration_ms=(time.perf_counter() - started) * 1000)


def _result_of(result: ChargeResult) -> Result:
    if result.recovered:
        return "recovered"
    return "replayed" if result.replayed else "charged"


def _mark_done(ctx: Context, msg_id: str, result: ChargeResult) -> None:
    # The key is part of the record: after a recovery it may be a new one (charge-<msg_id>-r1).
    ctx.shop.execute(
        "UPDATE charges SET status = 'done', charge_id = %s, idempotency_key = %s,"
        " payment_intent = coalesce(%s, payment_intent), updated_at = now() WHERE msg_id = %s",
        (result.charge_id, result.idempotency_key, result.payment_intent, msg_id))


def process_message(ctx: Context, msg: ChargeMessage) -> Outcome:
    """Charge ``msg`` effectively once on the PaymentIntent path: dedup row, create, store the id, confirm, done."""
    ctx.crash_point("before_dedup_insert")
    claim = claim_row(ctx, msg) if _dedup(ctx) else Claim()
    if claim.skip:
        return Outcome("skipped", dedup_hit=True)
    ctx.crash_point("after_dedup_insert")

    intent_id, create_retries = claim.payment_intent, 0
    if intent_id is None:
        # A redelivery whose row holds no id yet creates it again: the derived key gives back the same one.
        created = ctx.provider.create_intent(
            msg, idempotency_key=intent_key_for(msg.msg_id) if ctx.uses("idempotency_key") else None)
        intent_id, create_retries = created.id, created.retries
        ctx.crash_point("after_intent_created")
        if _dedup(ctx):
            # The recovery point: from now on, whatever happens, the shop can ask what became of this payment.
            ctx.shop.execute("UPDATE charges SET payment_intent = %s, updated_at = now() WHERE msg_id = %s",
                             (intent_id, msg.msg_id))
        ctx.crash_point("after_intent_stored")

    key = idempotency_key_for(msg.msg_id) if ctx.uses("idempotency_key") else None
    result = confirm_or_recover(ctx, msg, intent_id, key)
    ctx.crash_point("after_provider_call")

    if _dedup(ctx):
        _mark_done(ctx, msg.msg_id, result)
    ctx.crash_point("after_status_update")
    # The message's retries are those of both its calls: a provider that died between them is retried on create.
    return Outcome(_result_of(result), dedup_hit=claim.hit, charge_id=result.charge_id,
                   retries=create_retries + result.retries, side_effect_ms=result.duration_ms)


def process_charge(ctx: Context, msg: ChargeMessage) -> Outcome:
    """Charge ``msg`` effectively once on the one-shot Charges path: dedup row, one call with its key, done.

    A ``ChargeFailed`` propagates (the message goes to the dead-letter topic);
    after a ``KeySpent`` the row stays 'pending', since nothing strongly
    consistent can say whether the money moved.
    """
    return charge_in_one_call(ctx, msg, lambda key: ctx.provider.charge(msg, idempotency_key=key))


def charge_in_one_call(ctx: Context, msg: ChargeMessage, charge: Callable[[str | None], ChargeResult]) -> Outcome:
    """The one-shot path's steps around ``charge(key)``, the call that moves money (``process_charge``'s is
    ``ctx.provider.charge``; ``recovery.search_then_charge`` plugs in another)."""
    ctx.crash_point("before_dedup_insert")
    claim = claim_row(ctx, msg) if _dedup(ctx) else Claim()
    if claim.skip:
        return Outcome("skipped", dedup_hit=True)
    ctx.crash_point("after_dedup_insert")

    result = charge(idempotency_key_for(msg.msg_id) if ctx.uses("idempotency_key") else None)
    ctx.crash_point("after_provider_call")

    if _dedup(ctx):
        _mark_done(ctx, msg.msg_id, result)
    ctx.crash_point("after_status_update")
    return Outcome(_result_of(result), dedup_hit=claim.hit, charge_id=result.charge_id,
                   retries=result.retries, side_effect_ms=result.duration_ms)


# -- once per poll batch -------------------------------------------------------------------------
def _claim_batch(ctx: Context, msgs: list[ChargeMessage]) -> dict[str, tuple[str, str | None]]:
    """One INSERT for the batch's rows; the rows that were there already, ``{msg_id: (status, payment_intent)}``
    (their ``attempts`` + 1 when 'pending')."""
    ids = list(dict.fromkeys(m.msg_id for m in msgs))
    new = {row[0] for row in ctx.shop.execute(
        "INSERT INTO charges (msg_id, status) SELECT unnest(%s::text[]), 'pending'"
        " ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id", (ids,))}
    old = [i for i in ids if i not in new]
    if not old:
        return {}
    existing = {row[0]: (row[1], row[2]) for row in ctx.shop.execute(
        "SELECT msg_id, status, payment_intent FROM charges WHERE msg_id = ANY(%s)", (old,))}
    if not ctx.uses("dedup_as_written"):
        ctx.shop.execute("UPDATE charges SET attempts = attempts + 1, updated_at = now()"
                         " WHERE msg_id = ANY(%s) AND status = 'pending'", (old,))
    return existing


def _batch_to_handle(ctx: Context, msgs: list[ChargeMessage], existing: dict[str, tuple[str, str | None]]
                     ) -> list[tuple[ChargeMessage, bool, bool]]:
    """Each message with (dedup hit, skip): 'done' rows, any row under the recipe as written, and a msg_id
    already handled earlier in this batch are skipped."""
    out, seen = [], set()
    for msg in msgs:
        hit = msg.msg_id in existing or msg.msg_id in seen
        skip = _dedup(ctx) and hit and (ctx.uses("dedup_as_written") or msg.msg_id in seen
                                        or existing.get(msg.msg_id, ("pending", None))[0] != "pending")
        seen.add(msg.msg_id)
        out.append((msg, hit, skip))
    return out


def _finish_batch(ctx: Context, todo: list[tuple[ChargeMessage, bool, bool]],
                  charge: Callable[[int, ChargeMessage, str | None], ChargeResult]) -> list[Outcome | ChargeFailed]:
    """Charge each message still to charge in order (``charge(index, msg, key)``), then one UPDATE marks the
    batch 'done'. For each message, its ``Outcome`` or the ``ChargeFailed`` that ends in the DLQ."""
    from effectively_once.payments.client import ChargeFailed

    results: list[Outcome | ChargeFailed] = []
    charged: dict[str, ChargeResult] = {}
    for index, (msg, hit, skip) in enumerate(todo):
        if skip:
            results.append(Outcome("skipped", dedup_hit=True))
            continue
        try:
            result = charge(index, msg, idempotency_key_for(msg.msg_id) if ctx.uses("idempotency_key") else None)
        except ChargeFailed as exc:
            results.append(exc)
            continue
        ctx.crash_point("after_provider_call")
        charged[msg.msg_id] = result
        results.append(Outcome(_result_of(result), dedup_hit=hit, charge_id=result.charge_id,
                               retries=result.retries, side_effect_ms=result.duration_ms))
    if _dedup(ctx) and charged:
        ctx.shop.execute(
            "UPDATE charges SET status = 'done', charge_id = v.charge_id, idempotency_key = v.key,"
            " payment_intent = coalesce(v.intent, charges.payment_intent), updated_at = now()"
            " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS v(msg_id, charge_id, key, intent)"
            " WHERE charges.msg_id = v.msg_id",
            (list(charged), [r.charge_id for r in charged.values()], [r.idempotency_key for r in charged.values()],
             [r.payment_intent for r in charged.values()]))
    ctx.crash_point("after_status_update")
    return results


def process_batch(ctx: Context, msgs: list[ChargeMessage]) -> list[Outcome | ChargeFailed]:
    """The PaymentIntent path with the dedup work done once per poll instead of once per message.

    One INSERT claims every msg_id of the batch; the PaymentIntents the batch
    still needs are created, and one UPDATE stores their ids; each is confirmed
    in order (``confirm_or_recover``), and one UPDATE marks the batch 'done'
    before the offsets are committed. The rules are those of
    ``process_message``. Returns, for each message, its ``Outcome`` or the
    ``ChargeFailed`` that ends in the DLQ.
    """
    from effectively_once.payments.client import ChargeFailed

    dedup = _dedup(ctx)
    ctx.crash_point("before_dedup_insert")
    existing = _claim_batch(ctx, msgs) if dedup else {}
    ctx.crash_point("after_dedup_insert")
    todo = _batch_to_handle(ctx, msgs, existing)

    failures: dict[int, ChargeFailed] = {}
    intents: dict[int, str] = {}  # by position in the batch: without a dedup row, a repeated message is new work
    create_retries: dict[int, int] = {}
    for index, (msg, _, skip) in enumerate(todo):
        stored = existing.get(msg.msg_id, ("pending", None))[1] if dedup else None
        if skip:
            continue
        if stored:
            intents[index] = stored
            continue
        try:
            created = ctx.provider.create_intent(
                msg, idempotency_key=intent_key_for(msg.msg_id) if ctx.uses("idempotency_key") else None)
            intents[index], create_retries[index] = created.id, created.retries
        except ChargeFailed as exc:
            failures[index] = exc
    ctx.crash_point("after_intent_created")
    if dedup and intents:
        by_msg = {todo[index][0].msg_id: intent for index, intent in intents.items()}
        ctx.shop.execute("UPDATE charges SET payment_intent = v.intent, updated_at = now()"
                         " FROM unnest(%s::text[], %s::text[]) AS v(msg_id, intent)"
                         " WHERE charges.msg_id = v.msg_id AND charges.payment_intent IS NULL",
                         (list(by_msg), list(by_msg.values())))
    ctx.crash_point("after_intent_stored")

    def confirm(index: int, msg: ChargeMessage, key: str | None) -> ChargeResult:
        if index in failures:
            raise failures[index]
        result = confirm_or_recover(ctx, msg, intents[index], key)
        return replace(result, retries=create_retries.get(index, 0) + result.retries)

    return _finish_batch(ctx, todo, confirm)


def process_charge_batch(ctx: Context, msgs: list[ChargeMessage]) -> list[Outcome | ChargeFailed]:
    """The one-shot Charges path with the dedup work done once per poll (see ``process_batch``)."""
    ctx.crash_point("before_dedup_insert")
    existing = _claim_batch(ctx, msgs) if _dedup(ctx) else {}
    ctx.crash_point("after_dedup_insert")
    return _finish_batch(ctx, _batch_to_handle(ctx, msgs, existing),
                         lambda index, msg, key: ctx.provider.charge(msg, idempotency_key=key))
