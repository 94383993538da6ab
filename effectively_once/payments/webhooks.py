"""The provider's webhooks: every event POSTed to the shop's endpoint, signed as Stripe signs it, at least once.

What Stripe documents, and what this module does with it:

- **Signing** (https://docs.stripe.com/webhooks#verify-manually). Each
  delivery carries ``Stripe-Signature: t=<unix time>,v1=<signature>``, where
  the signature is the hex HMAC-SHA256 of ``"<t>.<payload>"`` keyed with the
  endpoint's secret (``whsec_...``, used as it is, prefix included, as the
  SDK's ``WebhookSignature._compute_signature`` does). ``t`` is the time of
  *this* attempt: Stripe signs each delivery attempt anew, a retry with a new
  timestamp (https://docs.stripe.com/webhooks#replay-attacks), so a
  retried old event still passes the receiver's tolerance (300 s by default
  in ``stripe.Webhook.construct_event``), and a captured delivery replayed
  later does not.
- **At least once** (https://docs.stripe.com/webhooks#retries). A delivery
  that gets no 2xx (another status, a timeout, a refused connection) is
  sent again later with the same event and the same event id, with
  exponential backoff: Stripe retries for up to three days in live mode.
  Here the backoff is scaled down (``webhook_retry_ms`` doubling up to
  ``webhook_retry_max_ms``) and so is the window (``webhook_give_up_after_s``);
  an event past it is marked ``given_up``, and stays readable at
  ``GET /v1/events/{id}``.
- **Duplicates and order** (https://docs.stripe.com/webhooks#handle-duplicate-events,
  https://docs.stripe.com/webhooks#event-ordering): an endpoint may receive
  the same event more than once, and Stripe does not promise to deliver
  events in the order they were created. The receiver must deduplicate by
  event id and must not rely on order; the fault knobs make both happen on
  purpose.

Durable: each delivery is a row of ``webhook_deliveries``, written in the
transaction that writes its event (which is the transaction that changed the
object). The sender claims due rows with a lease (``next_attempt_at`` pushed
past the attempt's timeout) before it POSTs, so a provider killed mid-POST
sends the event again once restarted: at least once, never at most once.

Fault knobs (the provider's ``Faults``): ``webhook_delay_ms`` (every event
waits this long before its first attempt), ``webhook_drop`` (probability that
an attempt is lost before it reaches the endpoint; the sender sees a timeout
and retries), ``webhook_duplicate`` (probability that a delivered event is
sent once more), ``webhook_out_of_order`` (probability that the events due
together are sent newest first).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import psycopg
from psycopg.rows import dict_row

from effectively_once.observe import metrics as names

SECRET_PREFIX = "whsec_"
SIGNATURE_HEADER = "Stripe-Signature"
# Stripe's deliveries say who sent them; the SDK does not look at it.
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
BATCH = 50
POLL_SECONDS = 0.1
# An attempt's lease outlives its timeout by this much: a sender that died mid-POST is retried after it.
LEASE_MARGIN_SECONDS = 5.0


class Knobs(Protocol):
    """The fault knobs the sender reads (the provider's ``Faults`` has them), read afresh for every batch."""

    webhook_delay_ms: float
    webhook_duplicate: float
    webhook_out_of_order: float
    webhook_drop: float
    webhook_retry_ms: float
    webhook_retry_max_ms: float
    webhook_timeout_ms: float
    webhook_give_up_after_s: float


def check_secret(secret: str) -> str:
    """The signing secret as given, or ``ValueError`` when it is not shaped like Stripe's (``whsec_...``)."""
    if not secret.startswith(SECRET_PREFIX) or len(secret) <= len(SECRET_PREFIX) or not secret.isprintable():
        raise ValueError(f"the webhook secret must look like Stripe's, {SECRET_PREFIX} and then a random string "
                         f"(e.g. {SECRET_PREFIX}{'0' * 8}...)")
    return secret


def signature(payload: str, secret: str, timestamp: int) -> str:
    """The ``v1`` signature of ``payload`` at ``timestamp``: hex HMAC-SHA256 of ``"<timestamp>.<payload>"``."""
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()


def signature_header(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header of one delivery of ``payload``: ``t=<unix time>,v1=<signature>``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(payload, secret, t)}"


def backoff_seconds(attempts: int, knobs: Knobs) -> float:
    """How long after its ``attempts``-th failed attempt a delivery is tried again: doubling, capped."""
    return min(knobs.webhook_retry_ms * 2 ** max(attempts - 1, 0), knobs.webhook_retry_max_ms) / 1000


@dataclass(frozen=True)
class Due:
    """A delivery the sender claimed: its event (id, the body to POST, when it was made) and its attempts so far."""

    event_id: str
    body: dict[str, Any]
    seq: int
    attempts: int
    age_seconds: float


class WebhookSender:
    """Sends every due row of ``webhook_deliveries`` to ``url``, in the background of the provider's event loop.

    ``wake()`` after a commit that wrote deliveries makes it look at once;
    otherwise it looks every ``POLL_SECONDS`` (for retries that fell due).
    """

    def __init__(self, dsn: str, url: str, secret: str, knobs: Knobs, rng: random.Random | None = None) -> None:
        self.dsn, self.url, self.secret = dsn, url, check_secret(secret)
        self.knobs = knobs
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Open the sender's own connection and HTTP client, and start sending."""
        self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row)
        # trust_env off: a proxy from the environment must not sit between the provider and the shop.
        self._http = httpx.AsyncClient(trust_env=False, headers={"User-Agent": USER_AGENT})
        self._task = asyncio.create_task(self._run(), name="webhook sender")

    async def stop(self) -> None:
        """Stop sending (a POST in progress is abandoned: its lease runs out and it is sent again later)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.aclose()
        if self._conn is not None:
            await self._conn.close()

    def wake(self) -> None:
        """Look for due deliveries now (a write just committed some)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
            try:
                while await self.deliver_due():
                    pass
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the rows are still there
                # A database that went away for a moment must not end the sending: try again on the next tick.
                print(f"webhook sender: {type(exc).__name__}: {exc}", flush=True)
                await asyncio.sleep(POLL_SECONDS)

    async def _claim(self) -> list[Due]:
        assert self._conn is not None, "start() first"
        lease = self.knobs.webhook_timeout_ms / 1000 + LEASE_MARGIN_SECONDS
        cur = await self._conn.execute(
            "UPDATE webhook_deliveries d SET next_attempt_at = clock_timestamp() + make_interval(secs => %s)"
            " FROM (SELECT event_id FROM webhook_deliveries WHERE state = 'pending'"
            "       AND next_attempt_at <= clock_timestamp() ORDER BY next_attempt_at, event_id LIMIT %s"
            "       FOR UPDATE SKIP LOCKED) due, events e"
            " WHERE d.event_id = due.event_id AND e.id = d.event_id"
            " RETURNING d.event_id, e.body, e.seq, d.attempts,"
            "   extract(epoch FROM clock_timestamp() - e.created_at)::float8 AS age_seconds",
            (lease, BATCH))
        return [Due(r["event_id"], r["body"], r["seq"], r["attempts"], r["age_seconds"]) for r in await cur.fetchall()]

    def order(self, due: Iterable[Due]) -> list[Due]:
        """The order to send ``due`` in: the events' order, or newest first when the out-of-order knob fires."""
        ordered = sorted(due, key=lambda d: d.seq)
        if len(ordered) > 1 and self.rng.random() < self.knobs.webhook_out_of_order:
            ordered.reverse()
        return ordered

    async def deliver_due(self) -> int:
        """Send every delivery due now, once each; returns how many were due."""
        due = await self._claim()
        for delivery in self.order(due):
            await self.attempt(delivery)
        return len(due)

    async def attempt(self, delivery: Due) -> None:
        """One attempt at one delivery, its outcome recorded; a duplicate sent after it when the knob says so."""
        knobs = self.knobs
        if delivery.attempts > 0 and delivery.age_seconds > knobs.webhook_give_up_after_s:
            await self._record(delivery, "state = 'given_up'")
            return
        attempts = delivery.attempts + 1
        retry_in = backoff_seconds(attempts, knobs)
        if self.rng.random() < knobs.webhook_drop:
            await self._record(delivery, "attempts = attempts + 1, dropped = dropped + 1, last_status = NULL,"
                                         " last_error = 'dropped on purpose (webhook_drop)'", retry_in)
            return
        status, error = await self._post(delivery)
        if status is not None and 200 <= status < 300:
            await self._record(delivery, "state = 'delivered', attempts = attempts + 1, last_status = %s,"
                                         " last_error = NULL, delivered_at = clock_timestamp()", params=(status,))
            if self.rng.random() < knobs.webhook_duplicate:
                await self._post(delivery)
                await self._record(delivery, "duplicates = duplicates + 1")
            return
        counter = "refused = refused + 1" if status is not None else "timed_out = timed_out + 1"
        await self._record(delivery, f"attempts = attempts + 1, {counter}, last_status = %s, last_error = %s",
                           retry_in, (status, error))

    async def _post(self, delivery: Due) -> tuple[int | None, str | None]:
        """POST the event; its status and the start of its body, or (None, why) when no answer came in time."""
        assert self._http is not None, "start() first"
        payload = json.dumps(delivery.body, indent=2)
        headers = {"Content-Type": "application/json; charset=utf-8",
                   SIGNATURE_HEADER: signature_header(payload, self.secret)}
        try:
            response = await self._http.post(self.url, content=payload.encode("utf-8"), headers=headers,
                                             timeout=self.knobs.webhook_timeout_ms / 1000)
        except httpx.TimeoutException:
            return None, f"timed out after {self.knobs.webhook_timeout_ms:g} ms"
        except httpx.TransportError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300]
        return response.status_code, response.text[:300]

    async def _record(self, delivery: Due, changes: str, retry_in: float | None = None,
                      params: tuple[Any, ...] = ()) -> None:
        assert self._conn is not None, "start() first"
        when = ", next_attempt_at = clock_timestamp() + make_interval(secs => %s)" if retry_in is not None else ""
        await self._conn.execute(f"UPDATE webhook_deliveries SET {changes}{when} WHERE event_id = %s",
                                 (*params, *((retry_in,) if retry_in is not None else ()), delivery.event_id))


async def delivery_counts(conn: psycopg.AsyncConnection) -> dict[str, float]:
    """The delivery counters of the provider's database, by metric name (``observe.metrics``' webhook names)."""
    cur = conn.cursor()
    await cur.execute(
        "SELECT count(*), coalesce(sum(attempts - dropped + duplicates), 0),"
        " coalesce(sum(greatest(attempts - 1, 0)), 0), coalesce(sum(refused), 0), coalesce(sum(timed_out), 0),"
        " coalesce(sum(dropped), 0), coalesce(sum(duplicates), 0), count(*) FILTER (WHERE state = 'pending'),"
        " count(*) FILTER (WHERE state = 'delivered'), count(*) FILTER (WHERE state = 'given_up')"
        " FROM webhook_deliveries")
    row = await cur.fetchone()
    assert row is not None, "an aggregate always returns a row"
    values = [float(v) for v in row]
    events, sends, retries, refused, timed_out, dropped, duplicates, pending, delivered, given_up = values
    return {names.WEBHOOK_EVENTS: events, names.WEBHOOK_DELIVERIES: sends, names.WEBHOOK_DELIVERY_RETRIES: retries,
            f"{names.WEBHOOK_DELIVERY_FAILURES}:refused": refused,
            f"{names.WEBHOOK_DELIVERY_FAILURES}:timed_out": timed_out,
            f"{names.WEBHOOK_DELIVERY_FAILURES}:dropped": dropped,
            names.WEBHOOK_DUPLICATE_DELIVERIES: duplicates, names.WEBHOOK_EVENTS_PENDING: pending,
            names.WEBHOOK_EVENTS_DELIVERED: delivered, names.WEBHOOK_EVENTS_GIVEN_UP: given_up}


def prometheus_text(counts: dict[str, float]) -> bytes:
    """``delivery_counts`` in Prometheus' text format (what ``observe.scrape.scrape`` reads)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import generate_latest

    failures = CounterMetricFamily(names.WEBHOOK_DELIVERY_FAILURES,
                                   "Webhook attempts that got no 2xx, by reason", labels=["reason"])
    for reason in ("refused", "timed_out", "dropped"):
        failures.add_metric([reason], counts[f"{names.WEBHOOK_DELIVERY_FAILURES}:{reason}"])
    families = [
        CounterMetricFamily(names.WEBHOOK_EVENTS, "Events queued for the webhook endpoint",
                            value=counts[names.WEBHOOK_EVENTS]),
        CounterMetricFamily(names.WEBHOOK_DELIVERIES, "POSTs sent to the webhook endpoint, duplicates included",
                            value=counts[names.WEBHOOK_DELIVERIES]),
        CounterMetricFamily(names.WEBHOOK_DELIVERY_RETRIES, "Attempts after an event's first one failed",
                            value=counts[names.WEBHOOK_DELIVERY_RETRIES]),
        failures,
        CounterMetricFamily(names.WEBHOOK_DUPLICATE_DELIVERIES, "Events sent again after a 2xx (a fault knob)",
                            value=counts[names.WEBHOOK_DUPLICATE_DELIVERIES]),
        GaugeMetricFamily(names.WEBHOOK_EVENTS_PENDING, "Events not delivered yet",
                          value=counts[names.WEBHOOK_EVENTS_PENDING]),
        CounterMetricFamily(names.WEBHOOK_EVENTS_DELIVERED, "Events the endpoint answered with a 2xx",
                            value=counts[names.WEBHOOK_EVENTS_DELIVERED]),
        CounterMetricFamily(names.WEBHOOK_EVENTS_GIVEN_UP, "Events given up after the retry window",
                            value=counts[names.WEBHOOK_EVENTS_GIVEN_UP]),
    ]

    class _Snapshot:
        def collect(self):
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry)
