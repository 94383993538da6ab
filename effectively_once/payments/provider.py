"""A Stripe-like payment provider: ``python -m effectively_once.payments.provider``.

A separate process with its own database (never the shop's: no transaction
spans the two, as in production). It serves the subset of Stripe's API v1
that the course uses, closely enough that the official SDK (``stripe``,
pinned in pyproject.toml) talks to it unmodified through ``stripe.api_base``
or ``StripeClient(..., base_addresses={"api": url})``:

- ``POST /v1/payment_intents`` (with ``confirm`` and ``payment_method``),
  ``POST /v1/payment_intents/{id}/confirm``, ``GET /v1/payment_intents/{id}``:
  a PaymentIntent exists before any money moves; retrieving it by id is
  strongly consistent, so a client that stored its id can always ask what
  became of it (https://docs.stripe.com/api/payment_intents);
- ``POST /v1/charges`` (the legacy one-shot call), ``GET /v1/charges/{id}``,
  and ``GET /v1/charges?msg_id=...``, the course's own read-after-write
  lookup of one message's charges (Stripe has no such filter);
- ``GET /v1/payment_intents/search`` and ``GET /v1/charges/search``:
  Stripe's query language, over the objects as they were ``search_delay_ms``
  ago (``payments.search`` says why that matters);
- ``GET /v1/events`` and ``GET /v1/events/{id}``, and webhooks: with
  ``--webhook-url URL --webhook-secret whsec_...`` every
  ``payment_intent.succeeded``, ``payment_intent.payment_failed`` and
  ``charge.succeeded`` event is POSTed to the URL, signed, at least once
  (``payments.webhooks``).

"Money moved" means one row in table ``ledger``, a succeeded charge: a
``POST /v1/charges``, or a PaymentIntent's confirm with ``pm_card_visa``.
``pm_card_chargeDeclined`` (and ``tok_chargeDeclined`` for the Charges API)
is declined: 402 ``card_error``, a failed charge, no money
(``payments.objects`` has the test payment methods).

**Idempotency keys: the replay semantics of Stripe's API v1**
(https://docs.stripe.com/api/idempotent_requests, https://docs.stripe.com/error-low-level#idempotency):

- the first request with a key records the key *in flight* with a
  fingerprint of its path and parameters; once the endpoint begins executing,
  the response it sends is stored under the key, status and body, in the
  statement that did the work: a 500 is stored too, and a 402 decline;
- a request that fails validation, or meets the key in flight, stores
  nothing ("no API endpoint initiated execution");
- the same key with the same parameters gets the stored response again, with
  ``Idempotent-Replayed: true``, and moves no money: a key whose first answer
  was a 500 answers 500 to every retry until it is pruned;
- the same key with other parameters (or on another route) gets 400
  ``idempotency_error``, which the SDK raises as ``IdempotencyError``;
- the same key while the first request is still in flight gets 409 with the
  error ``code`` ``idempotency_key_in_use``;
- keys may be pruned once they are at least 24 hours old: a minimum, not the
  key's lifetime; here they are pruned at exactly ``key_ttl_seconds`` (24
  hours by default) and a pruned key counts as new.

API v2 differs, and the provider does not model it: a retry under a v2 key
does not repeat work that succeeded, and Stripe retries failed or partially
failed work to completion where it can instead of replaying the first answer
(https://docs.stripe.com/api/idempotent_requests). How long v2 keeps a key is
not stated here: no primary source for a number was found.

Without a key every request moves money: that is what makes a retried request
a duplicate charge. The SDK always sends one on a POST: the key you pass, or
a random one of its own (128 random bits written like a UUID, from
``stripe._api_requestor._generate_idempotency_key``, stripe-python 16.1.0),
which protects its own retries of one call and nothing else.

**Headers, and the SDK's retries.** Every response carries ``Request-Id``
(``req_...``; the SDK shows it as ``request_id``). The SDK (``_http_client.
HTTPClient._should_retry``) retries a connection error, a 409 and any 5xx, up
to ``max_network_retries``, unless the answer says ``Stripe-Should-Retry:
false`` ("eg; if doing so would be a no-op"), and retries any answer that says
``Stripe-Should-Retry: true`` ("eg; in cases of lock timeouts"). Its comment
adds: "we expect the stripe-should-retry header to be false in most cases when
a 500 is returned, since our idempotency framework would typically replay it
anyway". So the provider sends ``Stripe-Should-Retry: false`` on every answer
stored under a key whose status is 5xx and on every replay (a retry would
only get it again), and ``Stripe-Should-Retry: true`` on the 409 of a key in
flight (a lock: the retry gets the answer once the first request is done). A
429 from the rate limiter carries neither, so the SDK raises
``RateLimitError`` at once: ``_should_retry`` retries a 429 only when the
header asks for it. (Whether Stripe's own rate limiter sends the header is
not documented; this provider's lesson is that backing off is the caller's
job.)

**Errors** have Stripe's four types (``api_error``, ``card_error``,
``idempotency_error``, ``invalid_request_error``) and Stripe's statuses
(https://docs.stripe.com/api/errors): 400 naming the ``param``, 401 for a
missing or wrong API key (``sk_test_...``, as ``Authorization: Bearer`` or
HTTP Basic with the key as user name, as Stripe takes it), 402 ``card_error``
(``code`` ``card_declined`` and a ``decline_code``), 404 ``resource_missing``,
409, 429, 500 ``api_error``. The SDK maps them to ``InvalidRequestError``
(with ``param``), ``AuthenticationError``, ``CardError``, ``RateLimitError``
and ``APIError`` (``_api_requestor.specific_v1_api_error``).

What a valid request is, the provider's contract, is one OpenAPI 3.1
document, ``effectively_once.payments.contract.OPENAPI``, served at
``GET /openapi.json``. Bodies may be form-encoded with bracket nesting, as
Stripe takes them and the SDK sends them, or JSON, as the course's own client
sends them. Every body, header and query parameter is checked before the
database is touched: a malformed request gets a 4xx that names the field
(``param``), never a 5xx.

Fault knobs for the labs (at start, or at run time through ``POST
/admin/faults``). The first ones act on calls that move money (``POST
/v1/charges``, a confirm, a create with ``confirm=true``): ``latency_ms``;
``stall_next_ms`` (the next such call only, after it has taken its key,
waits this long: one stuck call, while every other request is answered at
once); ``fail_after_charge`` (probability that the money moves and the
client then gets a 500, stored under the key with the charge, so that every
retry with the key gets the 500 again; or with ``fail_after_charge_mode="drop"``
the answer is stored and the connection dropped before the client reads it:
the Two Generals in one HTTP call); ``fail_before_charge`` (probability of an
internal error before the money moves, stored under the key like any
response). Then ``rate_limit_per_second`` (429 above that rate, on every
``/v1`` route); ``key_ttl_seconds``; ``search_delay_ms`` (how long a write
takes to reach Search: Stripe's "under a minute", scaled down to 1 s by
default); and the webhook knobs of ``payments.webhooks``. Both 500s carry the
same body (``SERVER_ERROR``): the client cannot tell from the answer whether
the money moved. ``GET /metrics`` serves the webhook delivery counters.

``Provider`` holds the settings and connection pools and has one method per
route; ``create_app(...)`` is ``Provider(...).app()``. The decisions are plain
functions: ``validate_charge`` and ``check_idempotency_key`` raise
``BadRequest`` naming the field, and ``answer_for_taken_key`` says what a
request gets when another request already holds its key.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import functools
import hashlib
import json
import os
import random
import re
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from effectively_once.connections import PROVIDER_CONNECTIONS, PROVIDER_POOL_SIZE, announce_limit, room_for
from effectively_once.payments import objects, search
from effectively_once.payments.contract import (
    MAX_AMOUNT,
    MAX_KEY_CHARS,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    OPENAPI,
    BadRequest,
    check_parameter,
    check_query,
    check_schema,
    json_response,
    read_body,
    read_json_body,
    warm_up,
)
from effectively_once.payments.contract import error_response as _error
from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER
from effectively_once.payments.objects import (
    CHARGE_PREFIX,
    EVENT_PREFIX,
    PAYMENT_INTENT_PREFIX,
    REQUEST_PREFIX,
    TEST_PAYMENT_METHODS,
    TEST_SOURCES,
    WEBHOOK_EVENT_TYPES,
    Decline,
    new_id,
)
from effectively_once.payments.webhooks import WebhookSender, delivery_counts, prometheus_text
from effectively_once.schemas import load

DEFAULT_KEY_TTL_SECONDS = 86400
REQUEST_ID_HEADER = "Request-Id"
SHOULD_RETRY_HEADER = "Stripe-Should-Retry"
# Stripe's limits, stated once in the contract and re-exported here.
__all__ = ["MAX_AMOUNT", "MAX_KEY_CHARS", "MAX_METADATA_KEYS", "MAX_METADATA_KEY_LENGTH",
           "MAX_METADATA_VALUE_LENGTH", "BadRequest", "Faults", "Provider", "create_app", "main"]

SCHEMA = load("provider.sql")

# Any constant will do: it only serialises concurrent migrations of one database.
_MIGRATION_LOCK = 0x45_4F_50_52


def migrate(conn: psycopg.Connection) -> None:
    """Create the provider's tables if they are missing (safe to run again, and concurrently)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(SCHEMA)


# What a client gets when the provider fails inside a call, before or after the money moved: one
# body for both, as a real provider's 500 says nothing reliable about what it had done.
SERVER_ERROR = {"error": {"type": "api_error",
                          "message": "An error occurred while processing the request; it may or may not have been "
                                     "carried out. Find out before trying again: retrieve the PaymentIntent "
                                     "(GET /v1/payment_intents/{id}), or look the charge up."}}


@dataclass
class Faults:
    """What the provider does wrong on purpose, how long it keeps idempotency keys, and its webhook timing."""

    latency_ms: float = 0.0
    stall_next_ms: float = 0.0
    fail_after_charge: float = 0.0
    fail_after_charge_mode: str = "500"
    fail_before_charge: float = 0.0
    rate_limit_per_second: float = 0.0
    key_ttl_seconds: float = DEFAULT_KEY_TTL_SECONDS
    # Stripe: "data is searchable in under 1 minute" (https://docs.stripe.com/search#data-freshness); scaled down.
    search_delay_ms: float = 1000.0
    webhook_delay_ms: float = 0.0
    webhook_duplicate: float = 0.0
    webhook_out_of_order: float = 0.0
    webhook_drop: float = 0.0
    # Stripe retries a failed delivery "for up to three days" with exponential backoff; scaled down.
    webhook_retry_ms: float = 200.0
    webhook_retry_max_ms: float = 5000.0
    webhook_timeout_ms: float = 5000.0
    webhook_give_up_after_s: float = 300.0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` (a partial dict), or raise ``BadRequest`` naming the bad field (and change nothing).

        The limits are the contract's (``FaultChanges`` in the OpenAPI document).
        """
        check_schema("FaultChanges", changes)
        for name, value in changes.items():
            setattr(self, name, value if name == "fail_after_charge_mode" else float(value))


def _amount_and_currency(body: dict[str, Any]) -> dict[str, Any]:
    return {"amount": int(body["amount"]), "currency": body["currency"].lower()}


def validate_charge(body: Any) -> dict[str, Any]:
    """Check a ``POST /v1/charges`` body against the contract; raise ``BadRequest`` naming the first bad field.

    Returns what the provider stores: the amount as an ``int`` (JSON Schema
    counts ``100.0`` as an integer), the currency in lowercase, the customer
    (None when absent), the metadata (``{}`` when absent), and ``source`` and
    ``description`` when given. Stripe needs a customer or a source; so does
    the provider.
    """
    check_schema("ChargeRequest", body)
    if "customer" not in body and "source" not in body:
        raise BadRequest("source", "Must provide source or customer.")
    params = {**_amount_and_currency(body), "customer": body.get("customer"), "metadata": body.get("metadata", {})}
    params.update({name: body[name] for name in ("source", "description") if name in body})
    return params


def validate_payment_intent(body: Any) -> dict[str, Any]:
    """Check a ``POST /v1/payment_intents`` body; ``BadRequest`` names the first bad field.

    Returns the parameters as stored: amount, lowercase currency, metadata
    (``{}`` when absent), ``confirm`` (False when absent), and the optional
    ones when given. ``confirm=true`` needs a ``payment_method``.
    """
    check_schema("PaymentIntentRequest", body)
    params = {**_amount_and_currency(body), "metadata": body.get("metadata", {}), "confirm": body.get("confirm", False)}
    params.update({name: body[name] for name in ("customer", "description", "payment_method") if name in body})
    if params["confirm"] and "payment_method" not in params:
        raise BadRequest("payment_method", "You cannot confirm this PaymentIntent because it's missing a payment "
                                           "method: pass payment_method (e.g. pm_card_visa) with confirm=true.",
                         code="payment_intent_unexpected_state")
    return params


def _payment_method(name: str | None, param: str = "payment_method") -> Decline | None:
    """What the test payment method does (None: succeeds); ``BadRequest`` for one the provider does not know."""
    if name is None:
        return None
    known = TEST_PAYMENT_METHODS if param == "payment_method" else TEST_SOURCES
    if name not in known:
        raise BadRequest(param, f"No such {'PaymentMethod' if param == 'payment_method' else 'token'}: "
                                f"'{name[:60]}'; the test ones are {', '.join(known)}.", code="resource_missing")
    return known[name]


def fingerprint(path: str, params: dict[str, Any]) -> str:
    """A digest of what a request asks for: a key reused with another digest is an error."""
    canonical = json.dumps({"path": path, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Pool:
    """A handful of open async connections, handed out one request at a time."""

    def __init__(self, dsn: str, size: int, options: str = "") -> None:
        self.dsn, self.size, self.options = dsn, size, options
        self._free: asyncio.Queue = asyncio.Queue()

    async def _connect(self) -> psycopg.AsyncConnection:
        try:
            return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, options=self.options)
        except psycopg.OperationalError as exc:
            announce_limit(exc, self.dsn)  # over the role's CONNECTION LIMIT: the parent says so in one sentence
            raise

    async def open(self) -> None:
        for _ in range(self.size):
            self._free.put_nowait(await self._connect())

    @contextlib.asynccontextmanager
    async def connection(self):
        conn = await self._free.get()
        try:
            if conn.closed:
                conn = await self._connect()
            yield conn
        finally:
            self._free.put_nowait(conn)

    async def close(self) -> None:
        while not self._free.empty():
            await self._free.get_nowait().close()


class _DroppedResponse(Response):
    """Starts a response and never finishes it: the client sees the connection drop."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})
        raise ConnectionAbortedError("fail_after_charge: the connection was dropped on purpose")


def check_idempotency_key(key: str | None) -> str | None:
    """The ``Idempotency-Key`` header as given (None when absent), or ``BadRequest`` when the contract refuses it."""
    check_parameter("createCharge", "header", "Idempotency-Key", key)
    return key


_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id_of_header(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or None when it is missing or malformed."""
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


@dataclass(frozen=True)
class StoredKey:
    """What ``idempotency_keys`` holds for a key: its request's fingerprint, state and stored response."""

    fingerprint: str
    state: str
    status_code: int | None = None
    response: Any = None


def _in_use(message: str) -> Response:
    # A lock on the key: a retry once the first request is done gets its answer, so the SDK may retry.
    return _error(409, "invalid_request_error", message, param="Idempotency-Key", code="idempotency_key_in_use",
                  headers={SHOULD_RETRY_HEADER: "true"})


def answer_for_taken_key(stored: StoredKey | None, digest: str) -> Response:
    """The answer to a request whose key another request already holds (Stripe's API v1 rules).

    ``stored`` is the key's row (None when it was pruned meanwhile), ``digest``
    the fingerprint of this request. Other parameters: 400 ``idempotency_error``;
    the first request still in flight: 409 ``idempotency_key_in_use``; done:
    its stored response, replayed, with ``Stripe-Should-Retry: false`` (a
    retry would get the same).
    """
    if stored is None:  # pruned between the two statements: the client may simply retry
        return _in_use("The key was pruned while in use; retry the request.")
    if stored.fingerprint != digest:
        return _error(400, "idempotency_error",
                      "Keys for idempotent requests can only be used with the same parameters they were first "
                      "used with, on the same endpoint. Use another key if you meant a different request.",
                      param="Idempotency-Key")
    if stored.state == "in_flight":
        return _in_use("There is currently another in-progress request using this Idempotency-Key; retry after it "
                       "completes.")
    if stored.status_code is None:
        # Every statement that sets state 'done' sets the status code with it.
        raise RuntimeError("an idempotency key is 'done' without a stored status code: the provider database "
                           "was written by something else; recreate it")
    return json_response(stored.response, stored.status_code,
                         headers={REPLAY_HEADER: "true", SHOULD_RETRY_HEADER: "false"})


def _jsonb_or_null(value: dict[str, Any] | None) -> Jsonb | None:
    return Jsonb(value) if value is not None else None


def _stored_answer_headers(key: str | None, status: int) -> dict[str, str] | None:
    """A 5xx stored under a key is what every retry with it gets: tell the SDK not to retry."""
    return {SHOULD_RETRY_HEADER: "false"} if key is not None and status >= 500 else None


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


class _RequestIds:
    """Gives every response a ``Request-Id`` header (``req_...``), and the handlers the same id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id(REQUEST_PREFIX)[:18]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


@dataclass
class _Write:
    """One write: its statements, what ties it to the request, and the events it recorded.

    The statements are collected and sent as one (``flush``: data-modifying
    CTEs, ``WITH w0 AS (INSERT ...), w1 AS (...) UPDATE ...``), so a charge,
    its event, its webhook delivery and its stored answer cost one round trip
    and one commit, as the single statement of a charge did before there were
    events. The statements of one flush see the database as it was before it,
    not each other's rows.
    """

    provider: Provider
    conn: psycopg.AsyncConnection
    request_id: str | None
    key: str | None
    trace_id: str | None
    now: float = field(default_factory=time.time)
    deliveries: int = 0
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    webhook_rows: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def created(self) -> int:
        """The objects' ``created``: this write's time, in whole seconds as Stripe gives it."""
        return int(self.now)

    def add(self, sql: str, params: tuple[Any, ...]) -> None:
        """One more data-modifying statement for the next ``flush``."""
        self.statements.append((sql, params))

    async def flush(self) -> None:
        """Send the collected statements as one (the events first, in one INSERT: the CTEs of one statement
        run in no set order, but the rows of one INSERT take their ``seq`` in the order they are listed)."""
        if self.events:
            self.statements.insert(0, (
                "INSERT INTO events (id, type, object_type, object_id, body, created_at) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, to_timestamp(%s))"] * len(self.events)),
                tuple(value for row in self.events for value in row)))
        if self.webhook_rows:
            self.statements.insert(1, (
                "INSERT INTO webhook_deliveries (event_id, url, next_attempt_at) VALUES "
                + ", ".join(["(%s, %s, clock_timestamp() + make_interval(secs => %s))"] * len(self.webhook_rows)),
                tuple(value for row in self.webhook_rows for value in row)))
        self.events, self.webhook_rows = [], []
        if not self.statements:
            return
        *first, (last, last_params) = self.statements
        sql = ("WITH " + ", ".join(f"w{i} AS ({statement})" for i, (statement, _) in enumerate(first)) + " "
               if first else "") + last
        params = tuple(value for _, values in first for value in values) + last_params
        self.statements = []
        await self.conn.execute(sql, params)

    def event(self, event_type: str, obj: dict[str, Any]) -> None:
        """Record an event about ``obj`` (as it is now) and, for the webhook's types, its delivery.

        The event's snapshot of ``obj`` is also what Search finds, once it is
        ``search_delay_ms`` old.
        """
        event_id = new_id(EVENT_PREFIX)
        body = objects.event(event_id, event_type, self.created, obj, self.request_id, self.key)
        self.events.append((event_id, event_type, obj["object"], obj["id"], Jsonb(body), self.now))
        sender = self.provider.webhooks
        if sender is not None and event_type in WEBHOOK_EVENT_TYPES:
            self.webhook_rows.append((event_id, sender.url, self.provider.faults.webhook_delay_ms / 1000))
            self.deliveries += 1

    def charge(self, params: dict[str, Any], decline: Decline | None, *, payment_intent: str | None = None,
               payment_method: str | None = None) -> dict[str, Any]:
        """Charge: a ledger row when the money moves, a declined charge when not, and its event.

        Returns the Charge object.
        """
        row = {"id": new_id(CHARGE_PREFIX), "amount": params["amount"], "currency": params["currency"],
               "customer": params.get("customer"), "description": params.get("description"),
               "metadata": params.get("metadata", {}), "payment_intent": payment_intent,
               "payment_method": payment_method, "created": self.created}
        values = (row["id"], row["customer"], row["amount"], row["currency"], Jsonb(row["metadata"]),
                  row["description"], payment_intent, payment_method, self.now)
        if decline is None:
            self.add("INSERT INTO ledger (charge_id, customer, amount, currency, metadata, description,"
                     " payment_intent, payment_method, created_at, msg_id, idempotency_key, trace_id)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), %s, %s, %s)",
                     (*values, row["metadata"].get("msg_id"), self.key, self.trace_id))
        else:
            self.add("INSERT INTO declined_charges (charge_id, customer, amount, currency, metadata, description,"
                     " payment_intent, payment_method, created_at, decline_code)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), %s)", (*values, decline.decline_code))
        obj = objects.charge(row, decline)
        self.event(objects.CHARGE_SUCCEEDED if decline is None else objects.CHARGE_FAILED, obj)
        return obj


_STORE_ANSWER = ("UPDATE idempotency_keys SET state = 'done', status_code = %s, response = %s,"
                 " completed_at = clock_timestamp() WHERE key = %s")
_PI_COLUMNS = ("id, amount, currency, customer, description, metadata, status, payment_method, latest_charge,"
               " last_payment_error, client_secret, floor(extract(epoch FROM created_at))::bigint AS created")
_LEDGER_COLUMNS = ("charge_id AS id, amount, currency, customer, description, metadata, payment_intent,"
                   " payment_method, floor(extract(epoch FROM created_at))::bigint AS created, msg_id,"
                   " idempotency_key, trace_id")
_ID = {"payment_intent": re.compile(r"^pi_[A-Za-z0-9]{1,64}$"), "charge": re.compile(r"^ch_[A-Za-z0-9]{1,64}$"),
       "event": re.compile(r"^evt_[A-Za-z0-9]{1,64}$")}


def _no_such(kind: str, object_id: str) -> BadRequest:
    return BadRequest("id", f"No such {kind}: '{object_id[:80]}'", status=404, code="resource_missing")


def _checked_id(kind: str, object_id: str) -> str:
    """An id from a path, or the 404 Stripe gives for an unknown one (a malformed id is unknown too)."""
    if not _ID[kind].match(object_id):
        raise _no_such(kind, object_id)
    return object_id


Handler = Callable[["Provider", Request], Awaitable[Response]]


def _stripe_api(handler: Handler) -> Handler:
    """A ``/v1`` route: the API key (401), the rate limit (429), then the handler; a ``BadRequest`` is its 4xx."""

    @functools.wraps(handler)
    async def route(self: Provider, request: Request) -> Response:
        if not self.authorised(request):
            return self.unauthorised(request)
        if self.over_rate_limit():
            # Retry-After for the course's own client, which waits at least that long (the SDK ignores it).
            return _error(429, "invalid_request_error", "Too many requests hit the API too quickly: slow down and "
                                                        "retry with exponential backoff.", code="rate_limit",
                          headers={"Retry-After": "1"})
        try:
            return await handler(self, request)
        except BadRequest as exc:
            return exc.response()

    return route


class Provider:
    """The provider service: its settings, fault knobs and connection pools, and one method per route.

    ``app()`` is the ASGI app; its lifespan opens and closes the pools and,
    with a ``webhook_url``, runs the webhook sender. Outside a server,
    ``async with Provider(dsn) as provider:`` does the same, and the route
    methods can be awaited with a Starlette ``Request``.
    """

    def __init__(self, dsn: str, api_key: str = DEFAULT_API_KEY, faults: Faults | None = None,
                 in_flight_timeout: float = 30.0, seed: int | None = None, announce: str | None = None,
                 pool_size: int = PROVIDER_POOL_SIZE, webhook_url: str | None = None,
                 webhook_secret: str | None = None) -> None:
        self.dsn = dsn
        self.api_key = api_key
        self.faults = faults or Faults()
        self.in_flight_timeout = in_flight_timeout
        self.announce = announce
        self.rng = random.Random(seed)
        self.pool = _Pool(dsn, pool_size)
        # Claiming a key need not wait for the disk: if the server crashed before flushing the
        # claim, no money moved either (that commit does wait, and flushes the log up to it),
        # so after a crash the key simply counts as new.
        self.claims = _Pool(dsn, pool_size, options="-c synchronous_commit=off")
        if (webhook_url is None) != (webhook_secret is None):
            raise ValueError("give the webhook endpoint both its URL and its signing secret, or neither")
        self.webhooks = (WebhookSender(dsn, webhook_url, webhook_secret, self.faults, random.Random(self.rng.random()))
                         if webhook_url and webhook_secret else None)
        self._recent: collections.deque[float] = collections.deque()
        self._last_prune = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the tables if missing, open the connection pools, and start sending webhooks."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)
        threading.Thread(target=warm_up, name="jsonschema warm-up", daemon=True).start()
        await self.pool.open()
        await self.claims.open()
        if self.webhooks is not None:
            await self.webhooks.start()
        if self.announce:
            print(self.announce, flush=True)

    async def close(self) -> None:
        """Stop sending webhooks and close the connection pools."""
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.pool.close()
        await self.claims.close()

    async def __aenter__(self) -> Provider:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        """The app's lifespan: the pools are open while it serves."""
        async with self:
            yield

    def routes(self) -> list[Route]:
        """One route per handler method (``/search`` before ``/{id}``: the first match wins)."""
        return [
            Route("/v1/payment_intents", self.create_payment_intent, methods=["POST"]),
            Route("/v1/payment_intents/search", self.search_payment_intents, methods=["GET"]),
            Route("/v1/payment_intents/{id}", self.retrieve_payment_intent, methods=["GET"]),
            Route("/v1/payment_intents/{id}/confirm", self.confirm_payment_intent, methods=["POST"]),
            Route("/v1/charges", self.create_charge, methods=["POST"]),
            Route("/v1/charges", self.list_charges, methods=["GET"]),
            Route("/v1/charges/search", self.search_charges, methods=["GET"]),
            Route("/v1/charges/{id}", self.retrieve_charge, methods=["GET"]),
            Route("/v1/events", self.list_events, methods=["GET"]),
            Route("/v1/events/{id}", self.retrieve_event, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/admin/faults", self.admin_faults, methods=["GET", "POST"]),
            Route("/admin/expire-keys", self.admin_expire_keys, methods=["POST"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    def app(self) -> ASGIApp:
        """The provider as an ASGI app: the routes, every error answered in Stripe's shape, every answer with a
        ``Request-Id``."""
        return _RequestIds(Starlette(routes=self.routes(), lifespan=self.lifespan,
                                     exception_handlers={HTTPException: _http_error, Exception: _server_error}))

    # -- helpers of the handlers -------------------------------------------------------------
    def _presented_key(self, request: Request) -> str | None:
        """The API key the request presents: ``Authorization: Bearer <key>``, or HTTP Basic with the key as the
        user name (``curl -u sk_test_...:``), both as Stripe takes them."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                return None
        return None

    def authorised(self, request: Request) -> bool:
        """True when the request presents this provider's API key."""
        key = self._presented_key(request)
        return key is not None and secrets.compare_digest(key.encode(), self.api_key.encode())

    def unauthorised(self, request: Request | None = None) -> Response:
        """The 401 answer: Stripe's type for it is ``invalid_request_error``; the SDK raises ``AuthenticationError``."""
        key = self._presented_key(request) if request is not None else None
        if not key:
            message = ("You did not provide an API key. Send it in the Authorization header, using Bearer auth "
                       "(e.g. 'Authorization: Bearer sk_test_...').")
        else:
            message = f"Invalid API Key provided: {key[:8]}{'*' * min(max(len(key) - 12, 0), 20)}{key[-4:]}"
        return _error(401, "invalid_request_error", message)

    def over_rate_limit(self) -> bool:
        """True when this request is one too many for ``faults.rate_limit_per_second``; else counts it."""
        limit = self.faults.rate_limit_per_second
        if limit <= 0:
            return False
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if len(self._recent) >= limit:
            return True
        self._recent.append(now)
        return False

    async def claim(self, conn: psycopg.AsyncConnection, key: str, digest: str) -> Response | None:
        """Record ``key`` in flight. Returns None when this request owns it, else the response to give.

        One upsert decides most cases: a new key is inserted; a key past its TTL
        counts as new and is overwritten; a key left in flight longer than
        ``in_flight_timeout`` by a request that died is taken over (safe, because
        the work and completing the key happen in one transaction). Otherwise
        ``answer_for_taken_key`` decides.
        """
        ttl = self.faults.key_ttl_seconds
        async with self.claims.connection() as fast:
            cur = await fast.execute(
                "INSERT INTO idempotency_keys AS k (key, fingerprint, state) VALUES (%s, %s, 'in_flight')"
                " ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, state = 'in_flight',"
                "   status_code = NULL, response = NULL, created_at = clock_timestamp(),"
                "   locked_at = clock_timestamp(), completed_at = NULL"
                " WHERE k.created_at < clock_timestamp() - make_interval(secs => %s)"
                "    OR (k.state = 'in_flight' AND k.fingerprint = EXCLUDED.fingerprint"
                "        AND k.locked_at < clock_timestamp() - make_interval(secs => %s))"
                " RETURNING key", (key, digest, ttl, self.in_flight_timeout))
            owned = await cur.fetchone() is not None
        if time.monotonic() - self._last_prune > 30:
            self._last_prune = time.monotonic()
            await conn.execute("DELETE FROM idempotency_keys"
                               " WHERE created_at < clock_timestamp() - make_interval(secs => %s)", (ttl,))
        if owned:
            return None
        cur = await conn.execute(
            "SELECT fingerprint, state, status_code, response FROM idempotency_keys WHERE key = %s", (key,))
        row = await cur.fetchone()
        return answer_for_taken_key(StoredKey(*row) if row else None, digest)

    async def execute(self, request: Request, params: dict[str, Any],
                      work: Callable[[_Write], Awaitable[tuple[int, dict[str, Any]]]], *,
                      moves_money: bool, reads: bool = False) -> Response:
        """Run one write under the request's Idempotency-Key, the fault knobs around it; the answer.

        ``work`` collects the write's statements and returns the answer
        (status, body); the statement that stores the answer under the key
        joins them, and all go to the database as one statement, so no money
        moves without its stored answer, and no answer is stored without its
        money. A ``work`` that ``reads`` a row first (and locks it) runs in a
        transaction with its one statement. The knobs apply when the call
        ``moves_money``.
        """
        key = check_idempotency_key(request.headers.get("idempotency-key"))
        trace_id = trace_id_of_header(request.headers.get("traceparent"))
        faults = self.faults
        async with self.pool.connection() as conn:
            if key is not None:
                answer = await self.claim(conn, key, fingerprint(request.url.path, params))
                if answer is not None:
                    return answer
            fails_after = False
            if moves_money:
                if faults.latency_ms > 0:
                    await asyncio.sleep(faults.latency_ms / 1000)
                if faults.stall_next_ms > 0:
                    stall, faults.stall_next_ms = faults.stall_next_ms, 0.0
                    await asyncio.sleep(stall / 1000)
                if faults.fail_before_charge and self.rng.random() < faults.fail_before_charge:
                    if key is not None:
                        await conn.execute(_STORE_ANSWER, (500, Jsonb(SERVER_ERROR), key))
                    return json_response(SERVER_ERROR, 500, _stored_answer_headers(key, 500))
                fails_after = bool(faults.fail_after_charge) and self.rng.random() < faults.fail_after_charge
            write = _Write(self, conn, _request_id(request), key, trace_id)
            async with conn.transaction() if reads else contextlib.nullcontext():
                status, body = await work(write)
                if fails_after and faults.fail_after_charge_mode == "500":
                    # The 500 is what the client is sent, so it is what the key keeps (with the work, in one
                    # statement): a retry with this key gets the same 500, never the charge.
                    status, body = 500, SERVER_ERROR
                if key is not None:
                    write.add(_STORE_ANSWER, (status, Jsonb(body), key))
                await write.flush()
        if write.deliveries and self.webhooks is not None:
            self.webhooks.wake()
        if fails_after and faults.fail_after_charge_mode == "drop":
            # The answer was stored and is being sent; the connection breaks before the client reads it.
            # A retry with the key gets it replayed.
            return _DroppedResponse()
        return json_response(body, status, _stored_answer_headers(key, status))

    async def _fetch_one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql, params)
            return await cur.fetchone()

    async def _fetch_all(self, sql: str, params: tuple[Any, ...] | list[Any]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def _payment_intent_row(self, pi_id: str) -> dict[str, Any]:
        row = await self._fetch_one(f"SELECT {_PI_COLUMNS} FROM payment_intents WHERE id = %s", (pi_id,))
        if row is None:
            raise _no_such("payment_intent", pi_id)
        return row

    # -- PaymentIntents ----------------------------------------------------------------------
    @_stripe_api
    async def create_payment_intent(self, request: Request) -> Response:
        """``POST /v1/payment_intents``: a PaymentIntent (no money moves); with ``confirm=true``, confirmed at once."""
        params = validate_payment_intent(await read_body(request, "createPaymentIntent"))
        _payment_method(params.get("payment_method"))

        async def work(write: _Write) -> tuple[int, dict[str, Any]]:
            row = {"id": new_id(PAYMENT_INTENT_PREFIX), "amount": params["amount"], "currency": params["currency"],
                   "customer": params.get("customer"), "description": params.get("description"),
                   "metadata": params["metadata"], "payment_method": params.get("payment_method"),
                   "status": "requires_confirmation" if params.get("payment_method") else "requires_payment_method",
                   "latest_charge": None, "last_payment_error": None, "client_secret": secrets.token_hex(12),
                   "created": write.created}
            obj = objects.payment_intent(row)
            write.event(objects.PAYMENT_INTENT_CREATED, obj)
            status, body = 200, obj
            if params["confirm"]:
                status, body, row = self._confirm(write, row, None)
            # Inserted as it ends up: the statements of one write do not see each other's rows.
            write.add("INSERT INTO payment_intents (id, amount, currency, customer, description, metadata, status,"
                      " payment_method, latest_charge, last_payment_error, client_secret, created_at)"
                      " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))",
                      (row["id"], row["amount"], row["currency"], row["customer"], row["description"],
                       Jsonb(row["metadata"]), row["status"], row["payment_method"], row["latest_charge"],
                       _jsonb_or_null(row["last_payment_error"]), row["client_secret"], write.now))
            return status, body

        return await self.execute(request, params, work, moves_money=params["confirm"])

    @_stripe_api
    async def confirm_payment_intent(self, request: Request) -> Response:
        """``POST /v1/payment_intents/{id}/confirm``: the charge, once per PaymentIntent."""
        pi_id = _checked_id("payment_intent", request.path_params["id"])
        params = await read_body(request, "confirmPaymentIntent")
        _payment_method(params.get("payment_method"))
        await self._payment_intent_row(pi_id)  # an unknown id is a 404 before execution begins: nothing stored

        async def work(write: _Write) -> tuple[int, dict[str, Any]]:
            cur = write.conn.cursor(row_factory=dict_row)
            # FOR UPDATE: two confirms of one PaymentIntent (under two keys) run one after the other, and the
            # second finds it succeeded.
            await cur.execute(f"SELECT {_PI_COLUMNS} FROM payment_intents WHERE id = %s FOR UPDATE", (pi_id,))
            row = await cur.fetchone()
            assert row is not None, "a PaymentIntent is never deleted"
            status, body, confirmed = self._confirm(write, row, params.get("payment_method"))
            if confirmed is not row:
                write.add("UPDATE payment_intents SET status = %s, payment_method = %s, latest_charge = %s,"
                          " last_payment_error = %s WHERE id = %s",
                          (confirmed["status"], confirmed["payment_method"], confirmed["latest_charge"],
                           _jsonb_or_null(confirmed["last_payment_error"]), confirmed["id"]))
            return status, body

        return await self.execute(request, params, work, moves_money=True, reads=True)

    def _confirm(self, write: _Write, row: dict[str, Any],
                 payment_method: str | None) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """Confirm the PaymentIntent ``row``: charge it, or refuse. Returns the answer and the row as it is now
        (``row`` itself when nothing changed)."""
        if row["status"] == "succeeded":
            return 400, {"error": {"type": "invalid_request_error", "code": "payment_intent_unexpected_state",
                                   "message": "You cannot confirm this PaymentIntent because it has already "
                                              "succeeded after being previously confirmed.",
                                   "payment_intent": objects.payment_intent(row)}}, row
        method = payment_method or row["payment_method"]
        if method is None:
            return 400, {"error": {"type": "invalid_request_error", "code": "payment_intent_unexpected_state",
                                   "param": "payment_method",
                                   "message": "You cannot confirm this PaymentIntent because it's missing a payment "
                                              "method: pass payment_method (e.g. pm_card_visa).",
                                   "payment_intent": objects.payment_intent(row)}}, row
        decline = _payment_method(method)
        charge = write.charge(row, decline, payment_intent=row["id"], payment_method=method)
        if decline is None:
            row = {**row, "status": "succeeded", "payment_method": method, "latest_charge": charge["id"],
                   "last_payment_error": None}
        else:
            # A declined PaymentIntent asks for another payment method
            # (https://docs.stripe.com/payments/paymentintents/lifecycle).
            row = {**row, "status": "requires_payment_method", "payment_method": None, "latest_charge": charge["id"],
                   "last_payment_error": objects.last_payment_error(decline, charge["id"], method)}
        obj = objects.payment_intent(row)
        write.event(objects.PAYMENT_INTENT_SUCCEEDED if decline is None else objects.PAYMENT_INTENT_PAYMENT_FAILED, obj)
        if decline is None:
            return 200, obj, row
        return 402, objects.card_error(decline, charge_id=charge["id"], payment_method=method, payment_intent=obj), row

    @_stripe_api
    async def retrieve_payment_intent(self, request: Request) -> Response:
        """``GET /v1/payment_intents/{id}``: the PaymentIntent as it is now, read from its own row."""
        pi_id = _checked_id("payment_intent", request.path_params["id"])
        check_query("retrievePaymentIntent", request)
        return json_response(objects.payment_intent(await self._payment_intent_row(pi_id)))

    # -- Charges -----------------------------------------------------------------------------
    @_stripe_api
    async def create_charge(self, request: Request) -> Response:
        """``POST /v1/charges``: charge at once (the legacy Charges API), once per Idempotency-Key."""
        params = validate_charge(await read_body(request, "createCharge"))
        decline = _payment_method(params.get("source"), "source")

        async def work(write: _Write) -> tuple[int, dict[str, Any]]:
            charge = write.charge(params, decline, payment_method=params.get("source"))
            if decline is None:
                return 200, charge
            return 402, objects.card_error(decline, charge_id=charge["id"], payment_method=None)

        return await self.execute(request, params, work, moves_money=True)

    @_stripe_api
    async def retrieve_charge(self, request: Request) -> Response:
        """``GET /v1/charges/{id}``: a charge that moved money, or one a card declined."""
        charge_id = _checked_id("charge", request.path_params["id"])
        check_query("retrieveCharge", request)
        row = await self._fetch_one(f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE charge_id = %s", (charge_id,))
        if row is not None:
            return json_response(objects.charge(row))
        row = await self._fetch_one(
            "SELECT charge_id AS id, amount, currency, customer, description, metadata, payment_intent,"
            " payment_method, floor(extract(epoch FROM created_at))::bigint AS created, decline_code"
            " FROM declined_charges WHERE charge_id = %s", (charge_id,))
        if row is None:
            raise _no_such("charge", charge_id)
        declines = {d.decline_code: d for d in (*TEST_PAYMENT_METHODS.values(), *TEST_SOURCES.values()) if d}
        return json_response(objects.charge(row, declines[row["decline_code"]]))

    @_stripe_api
    async def list_charges(self, request: Request) -> Response:
        """``GET /v1/charges[?msg_id=...][&payment_intent=...][&limit=n]``: the ledger, oldest first.

        With ``msg_id``, only the charges whose ``metadata.msg_id`` is that id:
        a client reconciles with it, asking whether the money for a message
        moved (read-after-write consistent, unlike Search). Each charge carries
        the course's extras ``msg_id``, ``idempotency_key`` and ``trace_id``.
        A value the ledger could not hold (empty, too long, a NUL, a lone
        surrogate) is a 400 naming its parameter.
        """
        query = check_query("listCharges", request)
        msg_id, payment_intent, limit = query.get("msg_id"), query.get("payment_intent"), query.get("limit", 100)
        rows = await self._fetch_all(
            f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE (%s::text IS NULL OR msg_id = %s)"
            " AND (%s::text IS NULL OR payment_intent = %s) ORDER BY created_at, charge_id LIMIT %s",
            (msg_id, msg_id, payment_intent, payment_intent, limit + 1))
        data = [{**objects.charge(r), "msg_id": r["msg_id"], "idempotency_key": r["idempotency_key"],
                 "trace_id": r["trace_id"]} for r in rows[:limit]]
        return json_response(objects.page(data, "/v1/charges", len(rows) > limit))

    # -- Search ------------------------------------------------------------------------------
    async def _search(self, request: Request, operation_id: str, kind: str, url: str) -> Response:
        """Search the objects of ``kind`` as they were ``search_delay_ms`` ago: the newest snapshot of each
        object in the events that old, if it matches; newest object first. An object younger than that is not
        found at all, and one changed since is found as it was."""
        params = check_query(operation_id, request)
        try:
            condition, values = search.to_sql(search.parse(params["query"], kind))
        except search.SearchError as exc:
            raise BadRequest("query", str(exc)) from None
        limit = params.get("limit", 10)
        page = params.get("page")
        offset = 0
        if page is not None:
            if not re.fullmatch(r"page_[0-9]{1,9}", page):
                raise BadRequest("page", "page must be the next_page of a previous search result.")
            offset = int(page[5:])
        # The newest snapshot of each object among the events at least search_delay_ms old.
        rows = await self._fetch_all(
            "SELECT snapshot FROM (SELECT DISTINCT ON (object_id) object_id, body->'data'->'object' AS snapshot"
            "   FROM events WHERE object_type = %s"
            "   AND created_at <= clock_timestamp() - make_interval(secs => %s) ORDER BY object_id, seq DESC) latest"
            f" WHERE {condition} ORDER BY (snapshot->>'created')::bigint DESC, object_id DESC LIMIT %s OFFSET %s",
            [kind, self.faults.search_delay_ms / 1000, *values, limit + 1, offset])
        next_page = f"page_{offset + limit}" if len(rows) > limit else None
        return json_response(objects.search_result([r["snapshot"] for r in rows[:limit]], url, next_page))

    @_stripe_api
    async def search_payment_intents(self, request: Request) -> Response:
        """``GET /v1/payment_intents/search?query=...``: eventually consistent, as Stripe's Search is."""
        return await self._search(request, "searchPaymentIntents", "payment_intent", "/v1/payment_intents/search")

    @_stripe_api
    async def search_charges(self, request: Request) -> Response:
        """``GET /v1/charges/search?query=...``: eventually consistent, as Stripe's Search is."""
        return await self._search(request, "searchCharges", "charge", "/v1/charges/search")

    # -- Events ------------------------------------------------------------------------------
    @_stripe_api
    async def list_events(self, request: Request) -> Response:
        """``GET /v1/events[?type=...][&limit=n][&starting_after=evt_...]``: events, newest first."""
        params = check_query("listEvents", request)
        limit, event_type, after = params.get("limit", 10), params.get("type"), params.get("starting_after")
        before_seq = None
        if after is not None:
            row = await self._fetch_one("SELECT seq FROM events WHERE id = %s", (after,))
            if row is None:
                raise BadRequest("starting_after", f"No such event: '{after[:80]}'", code="resource_missing")
            before_seq = row["seq"]
        rows = await self._fetch_all(
            "SELECT body FROM events WHERE (%s::text IS NULL OR type = %s) AND (%s::bigint IS NULL OR seq < %s)"
            " ORDER BY seq DESC LIMIT %s", (event_type, event_type, before_seq, before_seq, limit + 1))
        return json_response(objects.page([r["body"] for r in rows[:limit]], "/v1/events", len(rows) > limit))

    @_stripe_api
    async def retrieve_event(self, request: Request) -> Response:
        """``GET /v1/events/{id}``: one event, as it was recorded."""
        event_id = _checked_id("event", request.path_params["id"])
        check_query("retrieveEvent", request)
        row = await self._fetch_one("SELECT body FROM events WHERE id = %s", (event_id,))
        if row is None:
            raise _no_such("event", event_id)
        return json_response(row["body"])

    # -- the lab's own routes ----------------------------------------------------------------
    async def openapi(self, request: Request) -> Response:
        """``GET /openapi.json``: the contract every request is checked against (no API key needed)."""
        return json_response(OPENAPI)

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: ok when the database answers."""
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")
        return json_response({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: the webhook delivery counters, from the database (so they survive a restart)."""
        async with self.pool.connection() as conn:
            counts = await delivery_counts(conn)
        return Response(prometheus_text(counts), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def admin_faults(self, request: Request) -> Response:
        """``GET /admin/faults``: the fault knobs; ``POST`` changes some of them."""
        if not self.authorised(request):
            return self.unauthorised(request)
        if request.method == "POST":
            try:
                self.faults.update(await read_json_body(request, "setFaults"))
            except BadRequest as exc:
                return exc.response()
        return json_response(asdict(self.faults))

    async def admin_expire_keys(self, request: Request) -> Response:
        """``POST /admin/expire-keys``: age every stored key past the TTL, as if a day had gone by."""
        if not self.authorised(request):
            return self.unauthorised(request)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE idempotency_keys SET created_at = created_at - make_interval(secs => %s)",
                (self.faults.key_ttl_seconds + 1,))
        return json_response({"aged": cur.rowcount})


async def _http_error(request: Request, exc: Exception) -> Response:
    """A 404 or 405 from the router, in Stripe's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 400
    if status == 405:
        return _error(405, "invalid_request_error",
                      f"{request.method} is not allowed on {request.url.path}; see GET /openapi.json.",
                      headers=getattr(exc, "headers", None))
    return _error(status, "invalid_request_error",
                  f"Unrecognized request URL ({request.method} {request.url.path}); see GET /openapi.json.")


async def _server_error(request: Request, exc: Exception) -> Response:
    """An error the provider did not expect: the same body as a charge's 500, since the money may have moved."""
    return json_response(SERVER_ERROR, 500)


def create_app(dsn: str, api_key: str = DEFAULT_API_KEY, faults: Faults | None = None,
               in_flight_timeout: float = 30.0, seed: int | None = None, announce: str | None = None,
               pool_size: int = PROVIDER_POOL_SIZE, webhook_url: str | None = None,
               webhook_secret: str | None = None) -> ASGIApp:
    """The provider as an ASGI app over the database at ``dsn`` (``Provider(...).app()``)."""
    return Provider(dsn, api_key, faults, in_flight_timeout=in_flight_timeout, seed=seed, announce=announce,
                    pool_size=pool_size, webhook_url=webhook_url, webhook_secret=webhook_secret).app()


from effectively_once.protocol import EXIT_CONNECTION_LIMIT, LISTENING  # noqa: E402
from effectively_once.protocol import connection_limit as protocol_line_for_limit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the provider under uvicorn until SIGTERM or Ctrl-C."""
    # jsonschema imports rfc3987_syntax, when installed, to check the "iri" format, and that import builds a
    # parser for seconds (8 s on a busy machine) while the provider's first refused request waits. The
    # contract uses no such format, and jsonschema skips a format whose library will not import.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    from effectively_once.payments.serving import listening_socket, serve
    from effectively_once.payments.webhooks import check_secret

    parser = argparse.ArgumentParser(prog="python -m effectively_once.payments.provider",
                                     description="A Stripe-like payment provider for the course's labs.")
    parser.add_argument("--dsn", required=True, help="PostgreSQL DSN of the provider's own database")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port and prints it")
    parser.add_argument("--api-key", default=os.environ.get("EO_PROVIDER_API_KEY", DEFAULT_API_KEY))
    parser.add_argument("--key-ttl-seconds", type=float, default=DEFAULT_KEY_TTL_SECONDS)
    parser.add_argument("--in-flight-timeout", type=float, default=30.0,
                        help="seconds after which a key left in flight by a dead request may be taken over")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fail-after-charge", type=float, default=0.0, metavar="PROBABILITY")
    parser.add_argument("--fail-after-charge-mode", choices=("500", "drop"), default="500")
    parser.add_argument("--fail-before-charge", type=float, default=0.0, metavar="PROBABILITY")
    parser.add_argument("--rate-limit", type=float, default=0.0, metavar="PER_SECOND",
                        help="answer 429 above this many requests per second (0: no limit)")
    parser.add_argument("--webhook-url", default=None, metavar="URL",
                        help="the shop's webhook endpoint: every payment_intent.succeeded, "
                             "payment_intent.payment_failed and charge.succeeded event is POSTed there")
    parser.add_argument("--webhook-secret", default=None, metavar="whsec_...",
                        help="the endpoint's signing secret (Stripe-Signature); needed with --webhook-url")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault dice")
    args = parser.parse_args(argv)
    faults = Faults()
    try:
        faults.update({"latency_ms": args.latency_ms, "fail_after_charge": args.fail_after_charge,
                       "fail_after_charge_mode": args.fail_after_charge_mode,
                       "fail_before_charge": args.fail_before_charge,
                       "rate_limit_per_second": args.rate_limit, "key_ttl_seconds": args.key_ttl_seconds})
    except BadRequest as exc:
        parser.error(str(exc))
    if not re.fullmatch(r"sk_test_[A-Za-z0-9_]{1,200}", args.api_key):
        # The provider is a test-mode account (livemode is false on every object): its keys look like Stripe's.
        parser.error(f"--api-key must look like a Stripe test key, sk_test_ and then letters, digits or _ "
                     f"(the course's is {DEFAULT_API_KEY}); got {args.api_key[:12]!r}...")
    if (args.webhook_url is None) != (args.webhook_secret is None):
        parser.error("--webhook-url and --webhook-secret go together: give both, or neither")
    if args.webhook_url is not None:
        if not re.match(r"^https?://[^\s/]+", args.webhook_url):
            parser.error(f"--webhook-url must be an http:// or https:// URL, got {args.webhook_url!r}")
        try:
            check_secret(args.webhook_secret)
        except ValueError as exc:
            parser.error(f"--webhook-secret: {exc}")
    try:
        # Room for its pools under the role's CONNECTION LIMIT (a workshop room), or one sentence why not.
        full = room_for(args.dsn, PROVIDER_CONNECTIONS, connect_timeout=5)
    except psycopg.Error as exc:
        print(f"The provider cannot reach its database ({str(exc).strip().splitlines()[0]}); "
              "check --dsn, or start the stack with `python -m effectively_once up`.", file=sys.stderr)
        return 2
    if full is not None:
        print(protocol_line_for_limit(full), flush=True)
        return EXIT_CONNECTION_LIMIT
    sock, port = listening_socket(args.host, args.port)
    app = create_app(args.dsn, args.api_key, faults, in_flight_timeout=args.in_flight_timeout, seed=args.seed,
                     announce=f"{LISTENING}http://{args.host}:{port}", webhook_url=args.webhook_url,
                     webhook_secret=args.webhook_secret)
    serve(app, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
