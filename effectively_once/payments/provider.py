"""A Stripe-like payment provider: ``python -m effectively_once.payments.provider``.

A separate process with its own database (never the shop's: no transaction
spans the two, as in production). ``POST /v1/charges`` moves money, which here
means one row in table ``ledger``. The ``Idempotency-Key`` header follows
Stripe's documented rules:

- the first request with a key records the key *in flight* with a fingerprint
  of its parameters, moves the money, and stores the response it sends,
  status and body, a 500 too;
- the same key with the same parameters gets the stored response again, with
  ``Idempotent-Replayed: true``, and moves no money: a key whose first answer
  was a 500 answers 500 to every retry until it is pruned;
- the same key with other parameters gets 400 ``idempotency_error``;
- the same key while the first request is still in flight gets 409 with the
  error ``code`` ``idempotency_key_in_use``;
- keys older than the TTL (24 hours by default) are pruned and count as new.

Without a key every request moves money: that is what makes a retried request
a duplicate charge. ``GET /v1/charges?msg_id=...`` lists the ledger rows of one
message: how a client that met a replayed 500 learns whether the money moved.

``Provider`` holds the settings and connection pools and has one method per
route; ``create_app(...)`` is ``Provider(...).app()``. The decisions are plain
functions: ``validate_charge`` and ``check_idempotency_key`` raise
``BadRequest`` naming the field, and ``answer_for_taken_key`` says what a
request gets when another request already holds its key.

What a valid request is, the provider's contract, is one OpenAPI 3.1 document,
``effectively_once.payments.contract.OPENAPI``, served at ``GET /openapi.json``.
Every body, header and query parameter is checked against it before the
database is touched: a malformed request gets a 4xx in Stripe's error shape
that names the field (``param``), never a 5xx. The contract module says why it
is a hand-written document on Starlette rather than FastAPI.

Fault knobs for the labs (at start, or at run time through ``POST /admin/faults``):
``latency_ms``; ``stall_next_ms`` (the next charge only, after it has taken its key,
waits this long: one stuck call, while every other request is answered at
once); ``fail_after_charge`` (probability that the money moves and the
client then gets a 500, stored under the key with the charge, so that every
retry with the key gets the 500 again; or with ``fail_after_charge_mode="drop"``
the 200 is stored and the connection dropped before the client reads it: the
Two Generals in one HTTP call); ``fail_before_charge`` (probability of an
internal error before the money moves, stored under the key like any
response); ``rate_limit_per_second`` (429 above that rate); ``key_ttl_seconds``.
Both 500s carry the same body (``SERVER_ERROR``): the client cannot tell from
the answer whether the money moved.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from effectively_once.connections import PROVIDER_CONNECTIONS, PROVIDER_POOL_SIZE, announce_limit, room_for
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
    read_json_body,
)
from effectively_once.payments.contract import error_response as _error
from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER
from effectively_once.schemas import load

DEFAULT_KEY_TTL_SECONDS = 86400
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


# What a client gets when the provider fails inside a charge, before or after the money moved: one
# body for both, as a real provider's 500 says nothing reliable about what it had done.
SERVER_ERROR = {"error": {"type": "api_error",
                          "message": "An error occurred while processing the charge; it may or may not have been "
                                     "made. Look it up (GET /v1/charges?msg_id=...) before charging again."}}


@dataclass
class Faults:
    """What the provider does wrong on purpose, and how long it keeps idempotency keys."""

    latency_ms: float = 0.0
    stall_next_ms: float = 0.0
    fail_after_charge: float = 0.0
    fail_after_charge_mode: str = "500"
    fail_before_charge: float = 0.0
    rate_limit_per_second: float = 0.0
    key_ttl_seconds: float = DEFAULT_KEY_TTL_SECONDS

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` (a partial dict), or raise ``BadRequest`` naming the bad field (and change nothing).

        The limits are the contract's (``FaultChanges`` in the OpenAPI document).
        """
        check_schema("FaultChanges", changes)
        for name, value in changes.items():
            setattr(self, name, value if name == "fail_after_charge_mode" else float(value))


def validate_charge(body: Any) -> dict[str, Any]:
    """Check a ``POST /v1/charges`` body against the contract; raise ``BadRequest`` naming the first bad field.

    Returns what the provider stores: the amount as an ``int`` (JSON Schema
    counts ``100.0`` as an integer), the currency in lowercase, the metadata
    (``{}`` when absent).
    """
    check_schema("ChargeRequest", body)
    return {"amount": int(body["amount"]), "currency": body["currency"].lower(), "customer": body["customer"],
            "metadata": body.get("metadata", {})}


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
        await send({"type": "http.response.body", "body": b'{"id": "ch_', "more_body": True})
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


def answer_for_taken_key(stored: StoredKey | None, digest: str) -> Response:
    """The answer to a request whose key another request already holds (Stripe's rules).

    ``stored`` is the key's row (None when it was pruned meanwhile), ``digest``
    the fingerprint of this request. Other parameters: 400 ``idempotency_error``;
    the first request still in flight: 409; done: its stored response, replayed.
    """
    if stored is None:  # pruned between the two statements: the client may simply retry
        return _error(409, "idempotency_key_in_use", "The key was pruned while in use; retry the request.",
                      param="Idempotency-Key", code="idempotency_key_in_use")
    if stored.fingerprint != digest:
        return _error(400, "idempotency_error",
                      "Keys for idempotent requests can only be used with the same parameters "
                      "they were first used with.", param="Idempotency-Key")
    if stored.state == "in_flight":
        return _error(409, "idempotency_key_in_use",
                      "There is currently another in-progress request using this Idempotency-Key; "
                      "retry after it completes.", param="Idempotency-Key", code="idempotency_key_in_use")
    if stored.status_code is None:
        # Every statement that sets state 'done' sets the status code with it.
        raise RuntimeError("an idempotency key is 'done' without a stored status code: the provider database "
                           "was written by something else; recreate it")
    return json_response(stored.response, stored.status_code, headers={REPLAY_HEADER: "true"})


class Provider:
    """The provider service: its settings, fault knobs and connection pools, and one method per route.

    ``app()`` is the ASGI app; its lifespan opens and closes the pools. Outside
    a server, ``async with Provider(dsn) as provider:`` does the same, and the
    route methods can be awaited with a Starlette ``Request``.
    """

    def __init__(self, dsn: str, api_key: str = DEFAULT_API_KEY, faults: Faults | None = None,
                 in_flight_timeout: float = 30.0, seed: int | None = None, announce: str | None = None,
                 pool_size: int = PROVIDER_POOL_SIZE) -> None:
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
        self._recent: collections.deque[float] = collections.deque()
        self._last_prune = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the tables if missing and open the connection pools."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)
        await self.pool.open()
        await self.claims.open()
        if self.announce:
            print(self.announce, flush=True)

    async def close(self) -> None:
        """Close the connection pools."""
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
        """One route per handler method."""
        return [
            Route("/v1/charges", self.create_charge, methods=["POST"]),
            Route("/v1/charges", self.list_charges, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/admin/faults", self.admin_faults, methods=["GET", "POST"]),
            Route("/admin/expire-keys", self.admin_expire_keys, methods=["POST"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    def app(self) -> Starlette:
        """The provider as an ASGI app: the routes, with every error answered in Stripe's shape."""
        return Starlette(routes=self.routes(), lifespan=self.lifespan,
                         exception_handlers={HTTPException: _http_error, Exception: _server_error})

    # -- helpers of the handlers -------------------------------------------------------------
    def authorised(self, request: Request) -> bool:
        """True when the request carries ``Authorization: Bearer <this provider's api key>``."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip(), self.api_key)

    @staticmethod
    def unauthorised() -> Response:
        """The 401 answer."""
        return _error(401, "authentication_error",
                      "Invalid API key: send the header 'Authorization: Bearer <api key>'.")

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

    async def move_money(self, conn: psycopg.AsyncConnection, params: dict, key: str | None,
                         trace_id: str | None, status_code: int = 200, answer: dict | None = None) -> dict:
        """Insert the ledger row (the money moving) and, under a key, store the answer, atomically.

        The answer stored is the one the client will be sent: the charge with
        ``status_code`` 200, or the ``answer`` given (the 500 of
        ``fail_after_charge``). Returns that answer.
        """
        charge_id = "ch_" + secrets.token_hex(12)
        response = answer if answer is not None else {
            "id": charge_id, "object": "charge", "amount": params["amount"], "currency": params["currency"],
            "customer": params["customer"], "metadata": params["metadata"], "status": "succeeded",
            "created": int(time.time())}
        row = (charge_id, params["metadata"].get("msg_id"), key, params["customer"], params["amount"],
               params["currency"], trace_id)
        insert = ("INSERT INTO ledger (charge_id, msg_id, idempotency_key, customer, amount, currency, trace_id)"
                  " VALUES (%s, %s, %s, %s, %s, %s, %s)")
        if key is None:
            await conn.execute(insert, row)
        else:
            # One statement, so one transaction: the money never moves without its stored response.
            await conn.execute(
                f"WITH charge AS ({insert} RETURNING charge_id)"
                " UPDATE idempotency_keys SET state = 'done', status_code = %s, response = %s,"
                " completed_at = clock_timestamp() WHERE key = %s",
                (*row, status_code, Jsonb(response), key))
        return response

    async def claim(self, conn: psycopg.AsyncConnection, key: str, digest: str) -> Response | None:
        """Record ``key`` in flight. Returns None when this request owns it, else the response to give.

        One upsert decides most cases: a new key is inserted; a key past its TTL
        counts as new and is overwritten; a key left in flight longer than
        ``in_flight_timeout`` by a request that died is taken over (safe, because
        moving money and completing the key happen in one statement). Otherwise
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

    # -- the routes --------------------------------------------------------------------------
    async def create_charge(self, request: Request) -> Response:
        """``POST /v1/charges``: move money once per Idempotency-Key."""
        if not self.authorised(request):
            return self.unauthorised()
        if self.over_rate_limit():
            return _error(429, "rate_limit_error", "Too many requests: slow down and retry with backoff.",
                          headers={"Retry-After": "1"})
        try:
            params = validate_charge(await read_json_body(request, "createCharge"))
            key = check_idempotency_key(request.headers.get("idempotency-key"))
        except BadRequest as exc:
            return exc.response()
        trace_id = trace_id_of_header(request.headers.get("traceparent"))
        faults = self.faults
        async with self.pool.connection() as conn:
            if key is not None:
                answer = await self.claim(conn, key, fingerprint(request.url.path, params))
                if answer is not None:
                    return answer
            if faults.latency_ms > 0:
                await asyncio.sleep(faults.latency_ms / 1000)
            if faults.stall_next_ms > 0:
                stall, faults.stall_next_ms = faults.stall_next_ms, 0.0
                await asyncio.sleep(stall / 1000)
            if faults.fail_before_charge and self.rng.random() < faults.fail_before_charge:
                if key is not None:
                    await conn.execute(
                        "UPDATE idempotency_keys SET state = 'done', status_code = 500, response = %s,"
                        " completed_at = clock_timestamp() WHERE key = %s",
                        (Jsonb(SERVER_ERROR), key))
                return json_response(SERVER_ERROR, 500)
            fails_after = bool(faults.fail_after_charge) and self.rng.random() < faults.fail_after_charge
            if fails_after and faults.fail_after_charge_mode == "500":
                # The 500 is what the client is sent, so it is what the key keeps (with the charge, in
                # one statement): a retry with this key gets the same 500, never the charge.
                await self.move_money(conn, params, key, trace_id, status_code=500, answer=SERVER_ERROR)
                return json_response(SERVER_ERROR, 500)
            response = await self.move_money(conn, params, key, trace_id)
        if fails_after:
            # "drop": the 200 was stored and is being sent; the connection breaks before the client
            # reads it. A retry with the key gets the 200 replayed.
            return _DroppedResponse()
        return json_response(response)

    async def list_charges(self, request: Request) -> Response:
        """``GET /v1/charges[?msg_id=...]``: the ledger, oldest first (at most 100).

        With ``msg_id``, only the charges whose ``metadata.msg_id`` is that id:
        a client reconciles with it, asking whether the money for a message
        moved. A value the ledger could not hold (empty, too long, a NUL, a lone
        surrogate) is a 400 naming ``msg_id``.
        """
        if not self.authorised(request):
            return self.unauthorised()
        try:
            msg_id = check_query("listCharges", request).get("msg_id")
        except BadRequest as exc:
            return exc.response()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT charge_id, msg_id, idempotency_key, customer, amount, currency, trace_id, created_at"
                " FROM ledger WHERE (%s::text IS NULL OR msg_id = %s) ORDER BY created_at LIMIT 100",
                (msg_id, msg_id))
            rows = await cur.fetchall()
        data = [{"id": r[0], "msg_id": r[1], "idempotency_key": r[2], "customer": r[3], "amount": r[4],
                 "currency": r[5], "trace_id": r[6], "created": r[7].isoformat()} for r in rows]
        return json_response({"object": "list", "data": data})

    async def openapi(self, request: Request) -> Response:
        """``GET /openapi.json``: the contract every request is checked against (no API key needed)."""
        return json_response(OPENAPI)

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: ok when the database answers."""
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")
        return json_response({"status": "ok"})

    async def admin_faults(self, request: Request) -> Response:
        """``GET /admin/faults``: the fault knobs; ``POST`` changes some of them."""
        if not self.authorised(request):
            return self.unauthorised()
        if request.method == "POST":
            try:
                self.faults.update(await read_json_body(request, "setFaults"))
            except BadRequest as exc:
                return exc.response()
        return json_response(asdict(self.faults))

    async def admin_expire_keys(self, request: Request) -> Response:
        """``POST /admin/expire-keys``: age every stored key past the TTL, as if a day had gone by."""
        if not self.authorised(request):
            return self.unauthorised()
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
               pool_size: int = PROVIDER_POOL_SIZE) -> Starlette:
    """The provider as an ASGI app over the database at ``dsn`` (``Provider(...).app()``)."""
    return Provider(dsn, api_key, faults, in_flight_timeout=in_flight_timeout, seed=seed, announce=announce,
                    pool_size=pool_size).app()


from effectively_once.protocol import EXIT_CONNECTION_LIMIT, LISTENING  # noqa: E402
from effectively_once.protocol import connection_limit as protocol_line_for_limit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the provider under uvicorn until SIGTERM or Ctrl-C."""
    import uvicorn

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
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only on sockets that say they are TCP,
    # and with Nagle on every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    app = create_app(args.dsn, args.api_key, faults, in_flight_timeout=args.in_flight_timeout, seed=args.seed,
                     announce=f"{LISTENING}http://{args.host}:{port}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
