"""The shop's webhook endpoint: ``python -m effectively_once.payments.receiver``.

A small process of its own, as a shop deploys it beside its consumers. The
provider POSTs every event to ``<url>/webhooks`` (``ProviderProcess(...,
webhook_url=..., webhook_secret=...)``), at least once. For each delivery:

1. the signature is verified with the official SDK,
   ``stripe.Webhook.construct_event(payload, Stripe-Signature, secret)``
   (https://docs.stripe.com/webhooks/signature): a missing, malformed or wrong
   signature, a payload changed on the way, or a timestamp older than the
   tolerance (300 s, the SDK's default; a replayed capture) is answered 400,
   and nothing is recorded. Verification runs on the raw body, as received:
   parsed and re-serialised JSON would not match its signature;
2. the handler (``--handler module:function``, default
   ``payments.inbox.record_event``) records the event in the inbox, once, with
   what it settles, and returns ``"recorded"`` or ``"duplicate"``;
3. the answer is 200 either way: a duplicate is a success, since the event is
   recorded, and anything but a 2xx makes the provider send it again. A
   handler that fails (the database is away) is answered 500, and the
   provider's retry brings the event back.

``GET /metrics`` serves the inbox's counters (``observe.metrics``:
``webhook_inbox_events_total``, ``webhook_inbox_duplicates_total``,
``webhook_inbox_refused_total{reason}``), ``GET /healthz`` says it is up.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from effectively_once import protocol
from effectively_once.connections import RECEIVER_CONNECTIONS, RECEIVER_POOL_SIZE, connect, room_for
from effectively_once.observe import metrics as names
from effectively_once.payments.inbox import HANDLED, HANDLER

DEFAULT_TOLERANCE_SECONDS = 300  # stripe.Webhook.DEFAULT_TOLERANCE
PATH = "/webhooks"


class Inbox:
    """The receiving endpoint's logic, without the HTTP server: verify, hand over, count.

    ``handler(conn, event)`` gets a connection to the shop database
    (autocommit) that no other delivery uses meanwhile, and the verified event
    as plain data. At most ``pool_size`` connections are open: a workshop
    room's role has a CONNECTION LIMIT (``effectively_once.connections``), and
    a delivery beyond the pool waits for a connection instead of opening one.
    """

    def __init__(self, shop_dsn: str, secret: str, handler: Callable[[psycopg.Connection, dict[str, Any]], str],
                 tolerance: float = DEFAULT_TOLERANCE_SECONDS, pool_size: int = RECEIVER_POOL_SIZE) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.shop_dsn, self.secret, self.handler, self.tolerance = shop_dsn, secret, handler, tolerance
        self._slots = threading.BoundedSemaphore(pool_size)
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()
        self.registry = CollectorRegistry(auto_describe=True)
        self.recorded = Counter(names.INBOX_EVENTS, "Events recorded in the inbox for the first time",
                                registry=self.registry)
        self.duplicates = Counter(names.INBOX_DUPLICATES, "Deliveries of an event the inbox already held",
                                  registry=self.registry)
        self.refused = Counter(names.INBOX_REFUSED, "Deliveries answered 400: no valid signature, or a stale one",
                               ["reason"], registry=self.registry)
        for reason in ("signature", "payload"):
            self.refused.labels(reason=reason)

    def _take(self) -> psycopg.Connection:
        """A connection of the pool, opened when none is idle; waits while all ``pool_size`` are in use."""
        self._slots.acquire()
        try:
            while True:
                conn = self._idle.get_nowait()
                if not conn.closed:
                    return conn
        except queue.Empty:
            pass
        try:
            return connect(self.shop_dsn, autocommit=True)
        except BaseException:
            self._slots.release()
            raise

    def _give_back(self, conn: psycopg.Connection) -> None:
        if not conn.closed:
            self._idle.put(conn)
        self._slots.release()

    def close(self) -> None:
        """Close the pool's idle connections (the receiver's process closes them all when it ends)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def receive(self, payload: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        """Verify one delivery and hand it to the handler; the HTTP status and body to answer with."""
        import stripe

        try:
            if not signature:
                raise stripe.SignatureVerificationError("No Stripe-Signature header", signature, payload)
            event = stripe.Webhook.construct_event(payload, signature, self.secret, tolerance=int(self.tolerance))
        except stripe.SignatureVerificationError as exc:
            self.refused.labels(reason="signature").inc()
            return 400, {"error": f"signature verification failed: {exc}"}
        except ValueError as exc:  # the payload is not JSON
            self.refused.labels(reason="payload").inc()
            return 400, {"error": f"the payload is not an event: {exc}"}
        data = event.to_dict()
        conn = self._take()
        try:
            outcome = self.handler(conn, data)
        except psycopg.OperationalError:
            conn.close()  # a new one next time; the provider retries this event
            raise
        finally:
            self._give_back(conn)
        if outcome not in HANDLED:
            raise ValueError(f"the webhook handler returned {outcome!r}; it must return one of {HANDLED}")
        (self.recorded if outcome == "recorded" else self.duplicates).inc()
        return 200, {"received": True, "event": data["id"], "outcome": outcome}

    def metrics_text(self) -> bytes:
        """The counters in Prometheus' text format."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry)


def load_handler(spec: str) -> Callable[[psycopg.Connection, dict[str, Any]], str]:
    """Import ``module:function`` (the event handler) and return the function."""
    from effectively_once.payments.consumer_settings import load_step

    return load_step(spec)


def create_app(inbox: Inbox, announce: str | None = None):
    """The endpoint as an ASGI app: ``POST /webhooks``, ``GET /metrics``, ``GET /healthz``."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def webhooks(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        payload = await request.body()
        try:
            status, body = await run_in_threadpool(inbox.receive, payload, request.headers.get("stripe-signature"))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the provider sends the event again
            print(protocol.event(protocol.EventKind.HANDLER_FAILED, error=f"{type(exc).__name__}: {exc}").format(),
                  flush=True)
            print(f"webhook handler failed: {type(exc).__name__}: {exc}", flush=True)
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, 500)
        return JSONResponse(body, status)

    async def metrics(request: Request) -> Response:
        return Response(inbox.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if announce:
            print(announce, flush=True)
        yield

    return Starlette(routes=[Route(PATH, webhooks, methods=["POST"]), Route("/metrics", metrics, methods=["GET"]),
                             Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    """Run the webhook endpoint under uvicorn until SIGTERM or Ctrl-C."""
    from effectively_once.payments.serving import listening_socket, serve
    from effectively_once.payments.shop import migrate_shop
    from effectively_once.payments.webhooks import check_secret
    from effectively_once.protocol import EXIT_CONNECTION_LIMIT, connection_limit, receiver_listening

    parser = argparse.ArgumentParser(prog="python -m effectively_once.payments.receiver",
                                     description="The shop's webhook endpoint: verify, record once, settle.")
    parser.add_argument("--shop-dsn", required=True, help="the shop's database (dedup table, inbox), a libpq URI")
    parser.add_argument("--webhook-secret", required=True, metavar="whsec_...",
                        help="the endpoint's signing secret, the one the provider signs with")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port and prints it")
    parser.add_argument("--handler", default=HANDLER, metavar="MODULE:FUNCTION",
                        help=f"what records each verified event (default {HANDLER})")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_SECONDS, metavar="SECONDS",
                        help="refuse a signature older than this (a replayed delivery)")
    args = parser.parse_args(argv)
    try:
        check_secret(args.webhook_secret)
    except ValueError as exc:
        parser.error(f"--webhook-secret: {exc}")
    if not re.fullmatch(r"[\w.]+:\w+", args.handler):
        parser.error(f"--handler must look like module:function, got {args.handler!r}")
    try:
        handler = load_handler(args.handler)
    except (ValueError, ImportError) as exc:
        parser.error(f"--handler: {exc}")
    try:
        # Room for its pool under the role's CONNECTION LIMIT (a workshop room), or one sentence why not.
        full = room_for(args.shop_dsn, RECEIVER_CONNECTIONS, connect_timeout=5)
        if full is None:
            with psycopg.connect(args.shop_dsn, autocommit=True, connect_timeout=5) as conn:
                migrate_shop(conn)
    except psycopg.Error as exc:
        print(f"The webhook receiver cannot reach the shop database ({str(exc).strip().splitlines()[0]}); "
              "check --shop-dsn, or start the stack with `python -m effectively_once up`.", file=sys.stderr)
        return 2
    if full is not None:
        print(connection_limit(full), flush=True)
        return EXIT_CONNECTION_LIMIT
    sock, port = listening_socket(args.host, args.port)
    inbox = Inbox(args.shop_dsn, args.webhook_secret, handler, args.tolerance)
    serve(create_app(inbox, announce=receiver_listening(f"http://{args.host}:{port}")), sock)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

