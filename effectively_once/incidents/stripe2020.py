"""Stripe, 2020: a queue consumer whose retry path forgot the Idempotency-Key.

The story (told in the field; no public post-mortem was found for it): during a
Q4 traffic spike the payment API answered some charge requests with
an error *after* the charge had gone through. The consumer retried, as it
should, but the code path that built the retry request did not carry the
Idempotency-Key of the first attempt. To the API every retry was a new
request, so it charged again. A small share of customers paid twice.

This module replays it on the course's real pipeline. Two consumer steps,
plugged into ``python -m effectively_once.payments.consumer`` with ``--step``,
differ only in how they retry a failed charge call:

- ``step_forgetting_the_key_on_retry``: the first attempt sends the key, the
  retry rebuilds its headers and leaves the key out (the bug);
- ``step_keeping_the_key``: every attempt sends the same headers, key included
  (the fix).

Everything else is the course's ``process_message``: dedup row, provider call,
mark done. ``replay(stack, fixed=...)`` runs one of them against a provider
that fails after charging (``fail_after_charge``) and counts the ledger.

The provider behaves as Stripe documents: it stores the 500 it sent under the
key, so a retry that keeps the key gets that 500 again, never the charge. The
key alone therefore stops the second charge but leaves the consumer not
knowing whether the first one happened. The fix is the key *and* a reconcile:
on a replayed 500 the step asks the provider's ledger for a charge of that
message (``GET /v1/charges?msg_id=...``, see ``steps.charge_or_reconcile``),
takes it when it is there, and only when it is not charges under a new
derived key.

The account's remedy is a lint rule, and ``lint_steps()`` runs it
(``effectively_once.incidents.lint``) on this very file: it flags the POST in
the buggy retry path and finds nothing in the fixed one. The buggy function
is kept here on purpose, as the specimen; linting the package reports it.
"""

from __future__ import annotations

import ast
import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import httpx

from effectively_once.db import one
from effectively_once.payments.messages import REPLAY_HEADER, ChargeMessage, child_traceparent

if TYPE_CHECKING:
    from collections.abc import Callable

    from effectively_once.payments.client import ChargeResult, ProviderClient
    from effectively_once.payments.consumer import StepContext
    from effectively_once.payments.steps import Outcome
    from effectively_once.stack import Stack

    # (client, URL, message, key, retries) -> the charge, the signature of the two ways to retry below.
    ChargeFunction = Callable[[httpx.Client, str, ChargeMessage, str | None, int], ChargeResult]

# A provider's answer: a response, or the error of a connection that dropped.
Answer = httpx.Response | httpx.TransportError

STEP_BUGGY = "effectively_once.incidents.stripe2020:step_forgetting_the_key_on_retry"
STEP_FIXED = "effectively_once.incidents.stripe2020:step_keeping_the_key"
CHARGE_FUNCTIONS = {False: "charge_forgetting_the_key_on_retry", True: "charge_keeping_the_key"}
RETRYABLE_STATUS = {409, 429, 500, 502, 503, 504}
BACKOFF_SECONDS = 0.01


# -- the two ways to retry a charge ------------------------------------------------------------
def charge_forgetting_the_key_on_retry(http: httpx.Client, url: str, msg: ChargeMessage, key: str | None,
                                       max_retries: int = 5):
    """POST the charge; retry on 5xx/429/409 or a dropped connection. THE BUG: retries carry no key."""
    headers = {"traceparent": child_traceparent(msg.traceparent)}
    if key is not None:
        headers["Idempotency-Key"] = key
    started, retries = time.perf_counter(), 0
    response: Answer
    try:
        response = http.post(url, json=msg.body(), headers=headers)
    except httpx.TransportError as exc:
        response = exc
    while not _succeeded(response):
        retries = _next_retry(response, retries, max_retries)
        # The retry path builds its own headers (a fresh span for the trace) and forgets the key.
        retry_headers = {"traceparent": child_traceparent(msg.traceparent)}
        try:
            response = http.post(url, json=msg.body(), headers=retry_headers)
        except httpx.TransportError as exc:
            response = exc
    return _result(response, retries, started, key)


def charge_keeping_the_key(http: httpx.Client, url: str, msg: ChargeMessage, key: str | None,
                           max_retries: int = 5):
    """POST the charge; retry on 5xx/429/409 or a dropped connection, every attempt with the same key."""
    headers = {"traceparent": child_traceparent(msg.traceparent)}
    if key is not None:
        headers["Idempotency-Key"] = key
    started, retries = time.perf_counter(), 0
    response: Answer
    try:
        response = http.post(url, json=msg.body(), headers=headers)
    except httpx.TransportError as exc:
        response = exc
    while not _succeeded(response):
        retries = _next_retry(response, retries, max_retries)
        retry_headers = {**headers, "traceparent": child_traceparent(msg.traceparent)}
        try:
            response = http.post(url, json=msg.body(), headers=retry_headers)
        except httpx.TransportError as exc:
            response = exc
    return _result(response, retries, started, key)


def _succeeded(response: Answer) -> TypeGuard[httpx.Response]:
    return isinstance(response, httpx.Response) and response.status_code == 200


def _next_retry(response: Answer, retries: int, max_retries: int) -> int:
    """Sleep before the next attempt and return its number, or raise ``ChargeFailed`` (which dead-letters).

    A 5xx replayed under the key raises ``KeySpent``: retrying that key only
    replays it, and the step reconciles instead.
    """
    from effectively_once.payments.client import ChargeFailed, KeySpent

    if isinstance(response, httpx.Response):
        status, reason = response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"
        if status >= 500 and response.headers.get(REPLAY_HEADER) == "true":
            raise KeySpent(f"{reason} replayed under the Idempotency-Key", status, retries)
        if status not in RETRYABLE_STATUS:
            raise ChargeFailed("rejected", reason, status, retries)
    else:
        status, reason = None, f"{type(response).__name__}: {response}"
    if retries >= max_retries:
        raise ChargeFailed("retries_exhausted", f"gave up after {retries} retries; last: {reason}", status, retries)
    time.sleep(BACKOFF_SECONDS * 2 ** retries)
    return retries + 1


def _result(response: httpx.Response, retries: int, started: float, key: str | None) -> ChargeResult:
    from effectively_once.payments.client import ChargeResult

    return ChargeResult(response.json()["id"], response.headers.get(REPLAY_HEADER) == "true", retries,
                        (time.perf_counter() - started) * 1000,
                        idempotency_key=None if response.request.headers.get("idempotency-key") is None else key)


# -- the consumer steps (``--step``) -------------------------------------------------------------
class _Provider:
    """Stands in for ``ctx.provider``: the same connection and URL, another way to retry."""

    def __init__(self, provider: ProviderClient, charge: ChargeFunction) -> None:
        self.url, self.max_retries, self._charge = provider.url, provider.max_retries, charge
        # The consumer's own kept-alive connection: it already carries the API key.
        self.http: httpx.Client = provider._http

        # The reconcile (a GET that moves no money) is the consumer's own.
        self.charges_for = provider.charges_for

    def charge(self, msg: ChargeMessage, idempotency_key: str | None = None) -> ChargeResult:
        return self._charge(self.http, f"{self.url}/v1/charges", msg, idempotency_key, self.max_retries)


class _Context:
    """``ctx`` with its provider swapped; everything else (shop, layers, crash points) is the consumer's."""

    def __init__(self, ctx: StepContext, charge: ChargeFunction) -> None:
        self._ctx, self.shop, self.provider = ctx, ctx.shop, _Provider(ctx.provider, charge)

    def uses(self, layer: str) -> bool:
        """The consumer's layers."""
        return self._ctx.uses(layer)

    def crash_point(self, name: str) -> None:
        """The consumer's crash points, counted once per process."""
        self._ctx.crash_point(name)


def step_forgetting_the_key_on_retry(ctx: StepContext, msg: ChargeMessage) -> Outcome:
    """``process_message`` with the 2020 bug: its provider calls retry without the Idempotency-Key."""
    from effectively_once.payments.steps import process_message

    return process_message(_Context(ctx, charge_forgetting_the_key_on_retry), msg)


def step_keeping_the_key(ctx: StepContext, msg: ChargeMessage) -> Outcome:
    """``process_message`` with the fix: every attempt carries the same key, and a replayed 500 is reconciled."""
    from effectively_once.payments.steps import process_message

    return process_message(_Context(ctx, charge_keeping_the_key), msg)


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
@dataclass
class Stripe2020Replay:
    """One run of the pipeline with one of the two steps, and what it did to the money."""

    fixed: bool
    step: str
    messages: int
    fail_after_charge: float
    seed: int
    charges: int                 # ledger rows for the run's messages: each one is money that moved
    charged_messages: int        # messages with at least one ledger row
    duplicate_charges: int       # messages with more than one ledger row
    charges_without_key: int     # ledger rows whose request carried no Idempotency-Key
    retries: int                 # provider retries, summed over the consumer's events
    key_replays: int             # messages the provider answered from its key store with the charge
    reconciled: int              # messages whose key replayed a 500 and whose charge the ledger lookup found
    dedup_hits: int
    lost_charges: int
    dlq: int
    ledger_sample: object = field(default=None, repr=False)  # a Table of the ledger rows of a few messages

    @property
    def extra_charges(self) -> int:
        """Money moved beyond one charge per message."""
        return self.charges - self.charged_messages

    @property
    def ok(self) -> bool:
        """True when every message was charged exactly once."""
        return self.duplicate_charges == 0 and self.lost_charges == 0 and self.charged_messages == self.messages

    def summary(self) -> dict[str, object]:
        """The counts as plain data (what the HTML table shows)."""
        return {
            "step": "keeps the key on every retry (fix)" if self.fixed else "drops the key on retry (bug)",
            "messages": self.messages,
            "provider fail_after_charge": self.fail_after_charge,
            "retries": self.retries,
            "ledger rows (money moved)": self.charges,
            "messages charged twice or more": self.duplicate_charges,
            "extra charges": self.extra_charges,
            "charges sent without a key": self.charges_without_key,
            "answered from the key store": self.key_replays,
            "found by a ledger lookup after a replayed 500": self.reconciled,
            "dedup-table hits": self.dedup_hits,
            "lost": self.lost_charges,
        }

    def verdict(self) -> str:
        """One sentence on the outcome."""
        if self.duplicate_charges:
            return (f"{self.duplicate_charges} of {self.messages} customers were charged more than once "
                    f"({self.extra_charges} extra charges), although the dedup table saw each message once.")
        return (f"Every one of the {self.messages} messages was charged exactly once; "
                f"{self.reconciled} keys replayed a 500 and the ledger lookup found their charge.")

    def _repr_html_(self) -> str:
        colour = "#cf222e" if self.duplicate_charges else "#1a7f37"
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.summary().items())
        return f"<p style='color:{colour}'><b>{html.escape(self.verdict())}</b></p><table>{rows}</table>"


def replay(stack: Stack, fixed: bool, messages: int = 40, seed: int = 7, *, fail_after_charge: float = 0.25,
           timeout: float = 60.0, sample: int = 3) -> Stripe2020Replay:
    """Run ``messages`` charges through the real consumer with the buggy (or fixed) step; count the ledger.

    The provider fails after charging with probability ``fail_after_charge``
    (its dice seeded with ``seed``): the money has moved, the consumer sees a
    500 and retries, and the provider keeps that 500 under the key. Both layers
    are on (dedup table and key), as in production. ``sample`` messages charged most often are kept as a table of
    their ledger rows.
    """
    import psycopg

    from effectively_once.payments.lab import PaymentLab, Table

    if not 0 < fail_after_charge <= 1:
        raise ValueError(f"fail_after_charge must be a probability above 0, got {fail_after_charge!r}")
    step = STEP_FIXED if fixed else STEP_BUGGY
    with PaymentLab(stack, "both") as lab:
        lab.start_provider(seed=seed, fail_after_charge=fail_after_charge)
        lab.produce(messages, seed=seed)
        lab.start_consumer(step=step, exit_when_idle=0.5)
        lab.run_until_settled(timeout, step=step, exit_when_idle=0.5)
        report = lab.report()
        if lab.provider_dsn is None:
            raise RuntimeError("the lab started no provider database, so there is no ledger to read")
        with psycopg.connect(lab.provider_dsn) as conn:
            keyless, charged = one(conn.execute(
                "SELECT count(*) FILTER (WHERE idempotency_key IS NULL), count(DISTINCT msg_id) FROM ledger"
                " WHERE msg_id = ANY(%s)", (lab.msg_ids,)), "the ledger's counts")
            worst = [row[0] for row in conn.execute(
                "SELECT msg_id FROM ledger WHERE msg_id = ANY(%s) GROUP BY msg_id ORDER BY count(*) DESC, msg_id"
                " LIMIT %s", (lab.msg_ids, sample))]
            cur = conn.execute(
                "SELECT msg_id, charge_id, coalesce(idempotency_key, '(none)') AS idempotency_key, amount, currency"
                " FROM ledger WHERE msg_id = ANY(%s) ORDER BY msg_id, created_at", (worst,))
            assert cur.description is not None  # a SELECT always describes its columns
            ledger = Table("provider: ledger", [d.name for d in cur.description], cur.fetchall())
        with psycopg.connect(lab.shop_dsn) as conn:
            retries, reconciled = one(conn.execute(
                "SELECT coalesce(sum(retries), 0), count(*) FILTER (WHERE result = 'reconciled') FROM consumer_events"
                " WHERE topic = %s", (lab.topic,)), "the consumer's retries and reconciles")
    return Stripe2020Replay(
        fixed=fixed, step=step, messages=messages, fail_after_charge=fail_after_charge, seed=seed,
        charges=report.charges, charged_messages=charged, duplicate_charges=report.duplicate_charges,
        charges_without_key=keyless, retries=int(retries), key_replays=report.key_replays, reconciled=reconciled,
        dedup_hits=report.dedup_hits, lost_charges=report.lost_charges, dlq=report.dlq, ledger_sample=ledger)


def replay_side_by_side(stack: Stack, messages: int = 40, seed: int = 7, **options: Any
                        ) -> tuple[Stripe2020Replay, Stripe2020Replay]:
    """``replay`` with the buggy step and with the fixed one, at the same time; ``(bug, fix)``.

    Each run has a lab of its own (topic, group, shop, and a provider with the same seeded
    faults), so they share nothing but the machine; most of a run is processes starting and
    waiting, so the two take about as long as one.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        bug = pool.submit(replay, stack, False, messages, seed, **options)
        fix = pool.submit(replay, stack, True, messages, seed, **options)
        return bug.result(), fix.result()
