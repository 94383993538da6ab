"""Stripe, 2020: a queue consumer whose retry path forgot the Idempotency-Key, replayed with the official SDK.

The story (told in the field; no public post-mortem was found for it): during a
Q4 traffic spike the payment API answered some charge requests with an error
*after* the charge had gone through. The consumer retried, as it should, but
the code path that built the retry request did not carry the Idempotency-Key of
the first attempt. To the API every retry was a new request, so it charged
again. A small share of customers paid twice.

With the official SDK (``stripe``, pinned) the bug takes the shape it has in
code written today. The SDK sends an Idempotency-Key on every POST: the one the
caller passes, or a random one of its own, and it retries a timeout, a dropped
connection or a 5xx under that same key. ``payments.recovery.what_the_sdk_key_covers``
shows both halves live: one call whose answer is late is retried by the SDK under its own
key and charged once; the same message sent again, as a new call, gets a new
random key and is charged a second time. A retry loop around the SDK call, or a
Kafka redelivery, is such a new call.

Two one-shot charge functions, differing only in their retry path (the story
needs the one-shot call: a PaymentIntent is confirmed once, whatever the key):

- ``charge_forgetting_the_key_on_retry``: the first call passes the key; the
  retry calls the SDK again without it, so the SDK makes up a new one (the bug);
- ``charge_keeping_the_key``: every attempt passes the same key.

``replay(stack, variant)`` runs the real pipeline against a provider that fails
after charging (``fail_after_charge``) and counts the ledger, for three
consumers:

- ``"forgets_the_key"``: the bug, plugged in as the consumer's step;
- ``"searches"``: keeps the key, which stops the second charge but leaves every
  replayed 500 unsettled, and settles it the tempting way, by Search
  (``payments.recovery.search_then_charge``): "not found" right after the 500
  proves nothing, and the charge under a new key is a second one;
- ``"payment_intents"``: the course's default step, the fix that holds on
  Stripe: derived keys, the PaymentIntent's id stored before the confirm, a 500
  settled by retrieving it by id.

``replay_side_by_side(stack)`` runs the three at the same time, each with a lab
of its own.

The account's remedy is a lint rule, and ``lint_steps()`` runs it
(``effectively_once.incidents.lint``) on this very file: it flags the SDK call
in the buggy retry path and finds nothing in the fixed one. The buggy function
is kept here on purpose, as the specimen; linting the package reports it.
"""

from __future__ import annotations

import ast
import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import stripe

from effectively_once.db import one
from effectively_once.payments.matrix import CHARGED_ONCE, CHARGED_TWICE, LOST
from effectively_once.payments.messages import REPLAY_HEADER, ChargeMessage

if TYPE_CHECKING:
    from collections.abc import Iterable

    from effectively_once.payments.client import ChargeResult, IntentResult, ProviderClient
    from effectively_once.payments.steps import Outcome, StepContext
    from effectively_once.protocol import CrashPoint, Layer
    from effectively_once.stack import Stack

STEP_BUGGY = "effectively_once.incidents.stripe2020:step_forgetting_the_key_on_retry"
STEP_SEARCHES = "effectively_once.payments.recovery:search_then_charge"
STEP_FIXED = "effectively_once.payments.steps:process_message"
VARIANTS = {"forgets_the_key": STEP_BUGGY, "searches": STEP_SEARCHES, "payment_intents": STEP_FIXED}
CHARGE_FUNCTIONS = {False: "charge_forgetting_the_key_on_retry", True: "charge_keeping_the_key"}
# What a charge function retries: an answer that may change on a second try, or none at all.
RETRYABLE = (stripe.APIError, stripe.APIConnectionError, stripe.RateLimitError)
BACKOFF_SECONDS = 0.01


# -- the two ways to retry a charge ------------------------------------------------------------
def charge_forgetting_the_key_on_retry(client: stripe.StripeClient, msg: ChargeMessage, key: str | None,
                                       max_retries: int = 5) -> ChargeResult:
    """Charge with the SDK; retry on a 5xx, a 429 or no answer. THE BUG: the retries pass no key."""
    started, retries = time.perf_counter(), 0
    try:
        charge = client.v1.charges.create(params=msg.body(),  # type: ignore[arg-type]
                                          options={"idempotency_key": key})
    except RETRYABLE as exc:
        charge, failure = None, exc
    while charge is None:
        retries = _next_retry(failure, retries, max_retries)
        # The retry path builds its own call and forgets the key: the SDK makes up a new one.
        try:
            charge = client.v1.charges.create(params=msg.body())  # type: ignore[arg-type]
        except RETRYABLE as exc:
            failure = exc
    return _result(charge, retries, started, key)


def charge_keeping_the_key(client: stripe.StripeClient, msg: ChargeMessage, key: str | None,
                           max_retries: int = 5) -> ChargeResult:
    """Charge with the SDK; retry on a 5xx, a 429 or no answer, every attempt under the same key."""
    started, retries = time.perf_counter(), 0
    try:
        charge = client.v1.charges.create(params=msg.body(),  # type: ignore[arg-type]
                                          options={"idempotency_key": key})
    except RETRYABLE as exc:
        charge, failure = None, exc
    while charge is None:
        retries = _next_retry(failure, retries, max_retries)
        try:
            charge = client.v1.charges.create(params=msg.body(),  # type: ignore[arg-type]
                                              options={"idempotency_key": key})
        except RETRYABLE as exc:
            failure = exc
    return _result(charge, retries, started, key)


def _next_retry(failure: stripe.StripeError, retries: int, max_retries: int) -> int:
    """Sleep before the next attempt and return its number, or raise ``ChargeFailed`` (which dead-letters).

    A 5xx replayed under the key raises ``KeySpent``: retrying that key only
    replays it (a caller that keeps its key ends here).
    """
    from effectively_once.payments.client import ChargeFailed, KeySpent

    status = failure.http_status
    reason = f"HTTP {status}: {failure.user_message}" if status else f"no answer: {type(failure).__name__}"
    if status is not None and status >= 500 and (failure.headers or {}).get(REPLAY_HEADER) == "true":
        raise KeySpent(f"{reason} replayed under the Idempotency-Key", status, retries)
    if retries >= max_retries:
        raise ChargeFailed("retries_exhausted", f"gave up after {retries} retries; last: {reason}", status, retries)
    time.sleep(BACKOFF_SECONDS * 2 ** retries)
    return retries + 1


def _result(charge: stripe.Charge, retries: int, started: float, key: str | None) -> ChargeResult:
    from effectively_once.payments.client import ChargeResult

    replayed = charge.last_response is not None and charge.last_response.headers.get(REPLAY_HEADER) == "true"
    return ChargeResult(charge.id, replayed, retries, (time.perf_counter() - started) * 1000, idempotency_key=key)


# -- the consumer step (``--step``) ---------------------------------------------------------------
class _Provider:
    """Stands in for ``ctx.provider``: the consumer's own SDK client, and the buggy way to retry a charge."""

    def __init__(self, provider: ProviderClient) -> None:
        self.client, self.max_retries = provider.stripe, provider.max_retries

    def charge(self, msg: ChargeMessage, idempotency_key: str | None = None) -> ChargeResult:
        return charge_forgetting_the_key_on_retry(self.client, msg, idempotency_key, self.max_retries)

    def create_intent(self, msg: ChargeMessage, idempotency_key: str | None = None) -> IntentResult:
        raise NotImplementedError("the 2020 replay takes the one-shot Charges path")

    def confirm_intent(self, msg: ChargeMessage, intent_id: str, idempotency_key: str | None = None) -> ChargeResult:
        raise NotImplementedError("the 2020 replay takes the one-shot Charges path")

    def retrieve_intent(self, intent_id: str) -> IntentResult:
        raise NotImplementedError("the 2020 replay takes the one-shot Charges path")


class _Context:
    """``ctx`` with its provider swapped; everything else (shop, layers, crash points) is the consumer's."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx, self.shop, self.provider = ctx, ctx.shop, _Provider(ctx.provider)

    def uses(self, layer: Layer) -> bool:
        """The consumer's layers."""
        return self._ctx.uses(layer)

    def crash_point(self, name: CrashPoint) -> None:
        """The consumer's crash points, counted once per process."""
        self._ctx.crash_point(name)


def step_forgetting_the_key_on_retry(ctx: StepContext, msg: ChargeMessage) -> Outcome:
    """The one-shot ``process_charge`` with the 2020 bug: its charge retries without the Idempotency-Key."""
    from effectively_once.payments.steps import process_charge

    return process_charge(_Context(ctx), msg)


# -- the lint rule on both ------------------------------------------------------------------------
def lint_steps(path: str | Path | None = None) -> dict[str, list]:
    """Run the Idempotency-Key lint rule on this module; return its findings grouped by charge function.

    ``lint_paths`` reads the whole file; each finding is then attributed to the
    function whose lines contain it, so the result says which implementation
    the rule flags: ``{"charge_forgetting_the_key_on_retry": [...],
    "charge_keeping_the_key": [], "elsewhere": []}``.
    """
    from effectively_once.incidents.lint import lint_paths

    path = Path(path or __file__)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    spans = {node.name: (node.lineno, node.end_lineno or node.lineno) for node in tree.body
             if isinstance(node, ast.FunctionDef) and node.name in CHARGE_FUNCTIONS.values()}
    grouped: dict[str, list] = {name: [] for name in CHARGE_FUNCTIONS.values()}
    grouped["elsewhere"] = []
    for finding in lint_paths([path]):
        owner = next((name for name, (lo, hi) in spans.items() if lo <= finding.line <= hi), "elsewhere")
        grouped[owner].append(finding)
    return grouped


# -- the replay -----------------------------------------------------------------------------------
# What each replay must do to the money, by ``replay(variant=...)``: notebook 06 and the tests assert against it.
EXPECTED_OUTCOME = {"forgets_the_key": CHARGED_TWICE, "searches": CHARGED_TWICE, "payment_intents": CHARGED_ONCE}
_SUMMARY = {
    "forgets_the_key": "retries without the key (the bug)",
    "searches": "keeps the key, settles a 500 by Search",
    "payment_intents": "PaymentIntent: keys, stored id, retrieve (the fix)",
}


@dataclass
class Stripe2020Replay:
    """One run of the pipeline with one of the three consumers, and what it did to the money."""

    variant: str
    step: str
    messages: int
    fail_after_charge: float
    seed: int
    charges: int                 # ledger rows for the run's messages: each one is money that moved
    charged_messages: int        # messages with at least one ledger row
    duplicate_charges: int       # messages with more than one ledger row
    charges_under_other_keys: int  # ledger rows whose key is not the message's own (charge-<msg_id>)
    retries: int                 # provider retries, summed over the consumer's events
    key_replays: int             # messages the provider answered from its key store with the charge
    recovered: int               # messages settled after a 500 by a lookup (Search, or the PaymentIntent)
    dedup_hits: int
    lost_charges: int
    dlq: int
    ledger_sample: object = field(default=None, repr=False)  # a Table of the ledger rows of a few messages

    @property
    def fixed(self) -> bool:
        """True for the consumer the story's fix is: the PaymentIntent path."""
        return self.variant == "payment_intents"

    @property
    def extra_charges(self) -> int:
        """Money moved beyond one charge per message."""
        return self.charges - self.charged_messages

    @property
    def ok(self) -> bool:
        """True when every message was charged exactly once."""
        return self.duplicate_charges == 0 and self.lost_charges == 0 and self.charged_messages == self.messages

    @property
    def outcome(self) -> str:
        """``charged twice`` (some customer), ``lost`` (some charge), or ``charged once`` (every message)."""
        if self.duplicate_charges:
            return CHARGED_TWICE
        return CHARGED_ONCE if self.ok else LOST

    @property
    def expected_outcome(self) -> str:
        """The outcome this variant must have: its ``EXPECTED_OUTCOME``."""
        return EXPECTED_OUTCOME[self.variant]

    def summary(self) -> dict[str, object]:
        """The counts as plain data (what the HTML table shows)."""
        return {
            "consumer": _SUMMARY[self.variant],
            "messages": self.messages,
            "provider fail_after_charge": self.fail_after_charge,
            "retries": self.retries,
            "ledger rows (money moved)": self.charges,
            "messages charged twice or more": self.duplicate_charges,
            "extra charges": self.extra_charges,
            "charges under another key than the message's": self.charges_under_other_keys,
            "answered from the key store": self.key_replays,
            "settled after a 500 by a lookup": self.recovered,
            "dedup-table hits": self.dedup_hits,
            "lost": self.lost_charges,
        }

    def verdict(self) -> str:
        """One sentence on the outcome."""
        if self.duplicate_charges:
            return (f"{self.duplicate_charges} of {self.messages} customers were charged more than once "
                    f"({self.extra_charges} extra charges), although the dedup table saw each message once.")
        return (f"Every one of the {self.messages} messages was charged exactly once; "
                f"{self.recovered} 500s were settled by retrieving the PaymentIntent.")

    def _repr_html_(self) -> str:
        colour = "#cf222e" if self.duplicate_charges else "#1a7f37"
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.summary().items())
        return f"<p style='color:{colour}'><b>{html.escape(self.verdict())}</b></p><table>{rows}</table>"


def replay(stack: Stack, variant: str, messages: int = 40, seed: int = 7, *, fail_after_charge: float = 0.25,
           timeout: float = 60.0, sample: int = 3) -> Stripe2020Replay:
    """Run ``messages`` charges through the real consumer with one of ``VARIANTS``; count the ledger.

    The provider fails after charging with probability ``fail_after_charge``
    (its dice seeded with ``seed``): the money has moved, the consumer sees a
    500, and the provider keeps that 500 under the key. Both layers are on
    (dedup table and key), as in production. ``sample`` messages charged most
    often are kept as a table of their ledger rows.
    """
    import psycopg

    from effectively_once.payments.lab import PaymentLab
    from effectively_once.payments.lab_reports import Table
    from effectively_once.payments.messages import idempotency_key_for

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if not 0 < fail_after_charge <= 1:
        raise ValueError(f"fail_after_charge must be a probability above 0, got {fail_after_charge!r}")
    step = VARIANTS[variant]
    with PaymentLab(stack, "both") as lab:
        lab.start_provider(seed=seed, fail_after_charge=fail_after_charge)
        lab.produce(messages, seed=seed)
        lab.start_consumer(step=step, exit_when_idle=0.5)
        lab.run_until_settled(timeout, step=step, exit_when_idle=0.5)
        report = lab.report()
        if lab.provider_dsn is None:
            raise RuntimeError("the lab started no provider database, so there is no ledger to read")
        own_keys = [idempotency_key_for(m) for m in lab.msg_ids]
        with psycopg.connect(lab.provider_dsn) as conn:
            other_keys, charged = one(conn.execute(
                "SELECT count(*) FILTER (WHERE idempotency_key IS NULL OR NOT idempotency_key = ANY(%s)),"
                " count(DISTINCT msg_id) FROM ledger WHERE msg_id = ANY(%s)", (own_keys, lab.msg_ids)),
                "the ledger's counts")
            worst = [row[0] for row in conn.execute(
                "SELECT msg_id FROM ledger WHERE msg_id = ANY(%s) GROUP BY msg_id ORDER BY count(*) DESC, msg_id"
                " LIMIT %s", (lab.msg_ids, sample))]
            cur = conn.execute(
                "SELECT msg_id, charge_id, coalesce(idempotency_key, '(none)') AS idempotency_key, amount, currency"
                " FROM ledger WHERE msg_id = ANY(%s) ORDER BY msg_id, created_at", (worst,))
            assert cur.description is not None  # a SELECT always describes its columns
            ledger = Table("provider: ledger", [d.name for d in cur.description], cur.fetchall())
        with psycopg.connect(lab.shop_dsn) as conn:
            retries, recovered = one(conn.execute(
                "SELECT coalesce(sum(retries), 0), count(*) FILTER (WHERE result = 'recovered') FROM consumer_events"
                " WHERE topic = %s", (lab.topic,)), "the consumer's retries and recoveries")
    return Stripe2020Replay(
        variant=variant, step=step, messages=messages, fail_after_charge=fail_after_charge, seed=seed,
        charges=report.charges, charged_messages=charged, duplicate_charges=report.duplicate_charges,
        charges_under_other_keys=other_keys, retries=int(retries), key_replays=report.key_replays,
        recovered=recovered, dedup_hits=report.dedup_hits, lost_charges=report.lost_charges, dlq=report.dlq,
        ledger_sample=ledger)


def replay_side_by_side(stack: Stack, variants: Iterable[str] = tuple(VARIANTS), messages: int = 40, seed: int = 7,
                        **options: Any) -> dict[str, Stripe2020Replay]:
    """``replay`` once per variant in ``variants``, all at the same time; the replays by variant.

    Each run has a lab of its own (topic, group, shop, and a provider with the same seeded
    faults), so they share nothing but the machine; most of a run is processes starting and
    waiting, so the runs together take about as long as the slowest one.
    """
    from concurrent.futures import ThreadPoolExecutor

    chosen = list(dict.fromkeys(variants))
    unknown = [variant for variant in chosen if variant not in VARIANTS]
    if unknown or not chosen:
        raise ValueError(f"variants must be one or more of {', '.join(VARIANTS)}, got {chosen!r}")
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        futures = {variant: pool.submit(replay, stack, variant, messages, seed, **options) for variant in chosen}
        return {variant: future.result() for variant, future in futures.items()}
