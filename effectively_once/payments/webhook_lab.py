"""What notebook 04e runs: the provider's webhooks into the shop's receiver, live, and what they left behind.

    with PaymentLab(stack, "both") as lab:
        lab.start_provider(webhooks=True, webhook_duplicate=1.0)   # the receiver first, then the provider
        lab.produce(5); lab.run_until_settled()
        wait_for_deliveries(lab)
        delivery_counts(lab)      # what the provider sent next to what the inbox kept
        signature_checks(lab)     # genuine and forged deliveries, and the receiver's answers

``stuck_rows(stack)`` crashes three consumers at three points with no webhook
reaching the shop and sweeps what they left; ``run_handler(stack, handler)``
is the exercise's live run of a handler written by hand.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from effectively_once.db import columns
from effectively_once.observe import metrics as names
from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.lab_reports import Table
from effectively_once.protocol import EventKind

if TYPE_CHECKING:
    from effectively_once.observe.scrape import Scrape
    from effectively_once.stack import Stack


def _counter(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape.get(f"{name}_total", 0.0, **labels) or 0.0


def wait_for_deliveries(lab: PaymentLab, timeout: float = 60.0, give_up: Callable[[], bool] | None = None) -> None:
    """Wait until the lab's provider has delivered every event it queued for the receiver.

    ``TimeoutError`` after ``timeout`` s, or as soon as ``give_up()`` says
    there is no point waiting (the receiver's handler keeps failing, say).
    """
    if lab.provider is None:
        raise RuntimeError("The lab has no provider: call lab.start_provider(webhooks=True) first.")
    deadline = time.monotonic() + timeout
    while True:
        if give_up is not None and give_up():
            raise TimeoutError("the receiver kept answering 500: its handler failed")
        seen = lab.provider.metrics()
        queued = _counter(seen, names.WEBHOOK_EVENTS)
        if queued and _counter(seen, names.WEBHOOK_EVENTS_DELIVERED) == queued:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the provider still had undelivered webhook events after {timeout:g} s "
                               f"({queued - _counter(seen, names.WEBHOOK_EVENTS_DELIVERED):g} of {queued:g})")
        time.sleep(0.1)


def delivery_counts(lab: PaymentLab) -> Table:
    """The provider's webhook counters next to the receiver's inbox counters, as one table."""
    if lab.provider is None or lab.receiver is None:
        raise RuntimeError("The lab needs a provider started with webhooks=True.")
    sent, kept = lab.provider.metrics(), lab.receiver.metrics()
    rows = [
        ("provider", "events queued for the shop", _counter(sent, names.WEBHOOK_EVENTS)),
        ("provider", "POSTs sent, duplicates included", _counter(sent, names.WEBHOOK_DELIVERIES)),
        ("provider", "events sent again after a 2xx", _counter(sent, names.WEBHOOK_DUPLICATE_DELIVERIES)),
        ("receiver", "events recorded in the inbox", _counter(kept, names.INBOX_EVENTS)),
        ("receiver", "inbox duplicate hits", _counter(kept, names.INBOX_DUPLICATES)),
        ("receiver", "deliveries refused (400)", sum(_counter(kept, names.INBOX_REFUSED, reason=r)
                                                      for r in ("signature", "payload"))),
    ]
    return Table("webhook deliveries", ["who", "what", "count"], [(w, what, int(n)) for w, what, n in rows])


def inbox_rows(lab: PaymentLab, limit: int = 50) -> Table:
    """The receiver's ``webhook_inbox``, in the order the events arrived."""
    with psycopg.connect(lab.shop_dsn) as conn:
        cur = conn.execute("SELECT event_id, type, msg_id, settled FROM webhook_inbox WHERE msg_id = ANY(%s)"
                           " ORDER BY received_at LIMIT %s", (lab.msg_ids, limit))
        return Table("shop: webhook_inbox", columns(cur), cur.fetchall())


def receipts(lab: PaymentLab) -> Table:
    """The receipts the shop sent, one row per e-mail."""
    with psycopg.connect(lab.shop_dsn) as conn:
        cur = conn.execute("SELECT msg_id, amount, currency FROM receipts WHERE msg_id = ANY(%s) ORDER BY msg_id, id",
                           (lab.msg_ids,))
        return Table("shop: receipts", columns(cur), cur.fetchall())


def signature_checks(lab: PaymentLab) -> Table:
    """POST one real event to the lab's receiver, genuinely signed and forged four ways; each answer.

    The event is read back from the provider (``GET /v1/events``, through the
    SDK) and signed as the provider signs it (``webhooks.signature_header``).
    """
    from effectively_once.payments.client import ProviderClient
    from effectively_once.payments.webhooks import signature_header

    receiver, provider = lab.receiver, lab.provider
    if receiver is None or receiver.url is None or provider is None or provider.url is None:
        raise RuntimeError("The lab needs a provider started with webhooks=True.")
    client = ProviderClient(provider.url)
    try:
        found = client.stripe.v1.events.list(params={"type": "payment_intent.succeeded", "limit": 1}).data
    finally:
        client.close()
    if not found:
        raise RuntimeError("No payment_intent.succeeded event yet: charge something first.")
    payload = json.dumps(found[0].to_dict(), indent=2)
    now = int(time.time())
    tries = [
        ("signed with the endpoint's secret, just now", payload, signature_header(payload, receiver.secret, now)),
        ("the amount changed on the way", payload.replace('"amount":', '"amount": 1, "was":', 1),
         signature_header(payload, receiver.secret, now)),
        ("signed with another secret", payload, signature_header(payload, "whsec_" + uuid.uuid4().hex, now)),
        ("signed ten minutes ago (a replayed capture)", payload, signature_header(payload, receiver.secret, now - 600)),
        ("no Stripe-Signature header", payload, None),
    ]
    rows = []
    for what, body, signature in tries:
        headers = {"Content-Type": "application/json"} | ({"Stripe-Signature": signature} if signature else {})
        # Raw HTTP: a delivery is the provider's request to the shop, which no SDK call makes (and a forged one less).
        answer = httpx.post(receiver.url, content=body.encode(), headers=headers, timeout=10, trust_env=False)
        said = answer.json()
        # The SDK's message names the timestamp it refused: dropped, so the table reads the same on every run.
        text = re.sub(r"\s*\(\d+\)", "", said.get("outcome") or said.get("error", ""))
        rows.append((what, answer.status_code, text[:90]))
    return Table("deliveries to the receiver", ["delivery", "status", "answer"], rows)


@dataclass
class StuckRows:
    """Three consumers crashed at three points, no webhook reaching the shop: the rows, the sweep, the end."""

    before: Table
    swept: Table
    after: Table
    ledger: Table

    def _repr_html_(self) -> str:
        parts = "".join(f"<div>{t._repr_html_()}</div>" for t in (self.before, self.swept, self.after, self.ledger))
        return f"<div style='display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap'>{parts}</div>"

    def __repr__(self) -> str:
        return "\n\n".join(repr(t) for t in (self.before, self.swept, self.after, self.ledger))


CRASHES = ("after_provider_call", "after_intent_stored", "after_dedup_insert")


def stuck_rows(stack: Stack, older_than_seconds: float = 0.0) -> StuckRows:
    """Crash one consumer at each of ``CRASHES`` (one message each, one shared provider without webhooks and one
    shop), sweep the 'pending' rows they left, then let each message be redelivered.

    ``older_than_seconds`` is the sweeper's threshold (0 here: in production,
    the provider's key lifetime). Everything is dropped at the end.
    """
    from effectively_once.payments.children import ProviderProcess
    from effectively_once.payments.client import ProviderClient
    from effectively_once.payments.pending import sweep
    from effectively_once.stack import new_run_id

    run = new_run_id()
    provider_db, shop_db = f"provider_stuck{run}", f"shop_stuck{run}"
    provider_dsn, shop_dsn = stack.create_database(provider_db), stack.create_database(shop_db)
    labs: list[PaymentLab] = []
    try:
        with ProviderProcess(provider_dsn) as provider:
            assert provider.url is not None, "a started provider has announced its address"
            for i, point in enumerate(CRASHES):
                lab = PaymentLab(stack, "both", provider=provider, shop_dsn=shop_dsn, run_id=f"stuck{i}", partitions=1)
                labs.append(lab)
                lab.produce(1, seed=i)
                crashed = lab.start_consumer(crash_at=point)
                if crashed.wait(60) != -9:
                    raise RuntimeError(f"the consumer did not crash at {point}:\n{crashed.log_tail()}")
            ids = [lab.msg_ids[0] for lab in labs]

            def rows(title: str) -> Table:
                with psycopg.connect(shop_dsn) as conn:
                    cur = conn.execute("SELECT msg_id, status, payment_intent FROM charges WHERE msg_id = ANY(%s)"
                                       " ORDER BY msg_id", (ids,))
                    return Table(title, columns(cur), cur.fetchall())

            before = rows("shop: charges, after the crashes")
            client = ProviderClient(provider.url)
            with psycopg.connect(shop_dsn, autocommit=True) as conn:
                swept = sweep(conn, client, older_than_seconds)
            client.close()
            for lab in labs:
                lab.run_until_settled(timeout=60, exit_when_idle=0.5)
            after = rows("shop: charges, after the redeliveries")
            with psycopg.connect(provider_dsn) as conn:
                cur = conn.execute("SELECT msg_id, count(*) AS charges FROM ledger WHERE msg_id = ANY(%s)"
                                   " GROUP BY msg_id ORDER BY msg_id", (ids,))
                ledger = Table("provider: ledger, charges per message", columns(cur), cur.fetchall())
    finally:
        for lab in labs:
            lab.stop()
        stack.drop_database(provider_db)
        stack.drop_database(shop_db)
    return StuckRows(before, swept, after, ledger)


@dataclass
class HandlerRun:
    """A webhook handler written by hand, run in the real receiver: what the provider sent and what the shop kept.

    Every event was delivered twice and out of order; one message's consumer
    crashed after its charge, so its row could only be settled by an event.
    """

    messages: int
    events: int                  # events the provider queued for the shop
    inbox_rows: int              # rows in webhook_inbox
    distinct_events: int         # distinct event ids among them
    receipts_per_message: dict[str, int]
    duplicate_answers: float     # deliveries the handler answered "duplicate" (the receiver counts them)
    crashed_msg_id: str
    crashed_row: str | None      # the status of the crashed consumer's row, once the events were in
    receiver_log: str
    error: str | None = None


def run_handler(stack: Stack, handler: Callable[..., Any], messages: int = 3, timeout: float = 60.0) -> HandlerRun:
    """Run ``handler(conn, event)`` as the receiver's handler (plugged in as ``--handler``) against a provider that
    sends every event twice, newest first; one consumer crashes after its first charge, then the rest are charged."""
    from effectively_once.payments.matrix import PluggedStep

    with PluggedStep(handler) as plugged, PaymentLab(stack, "both", partitions=1) as lab:
        lab.start_receiver(handler=plugged.spec)
        lab.start_provider(webhooks=True, webhook_duplicate=1.0, webhook_out_of_order=1.0)
        ids = lab.produce(messages, seed=11)
        crashed = lab.start_consumer(crash_at="after_provider_call")
        crashed.wait(timeout)
        error = None
        receiver = lab.receiver
        assert receiver is not None, "started above"

        def failing() -> bool:
            return bool(receiver.log_events(EventKind.HANDLER_FAILED))

        try:
            wait_for_deliveries(lab, timeout, give_up=failing)
        except TimeoutError as exc:
            error = str(exc)
        with psycopg.connect(lab.shop_dsn) as conn:
            row = conn.execute("SELECT status FROM charges WHERE msg_id = %s", (ids[0],)).fetchone()
        lab.run_until_settled(timeout, exit_when_idle=0.5)
        if error is None:
            try:
                wait_for_deliveries(lab, timeout, give_up=failing)
            except TimeoutError as exc:
                error = str(exc)
        assert lab.provider is not None and lab.receiver is not None
        events = _counter(lab.provider.metrics(), names.WEBHOOK_EVENTS)
        duplicates = _counter(lab.receiver.metrics(), names.INBOX_DUPLICATES)
        with psycopg.connect(lab.shop_dsn) as conn:
            inbox = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM webhook_inbox").fetchone() or (0, 0)
            sent: dict[str, int] = dict(conn.execute("SELECT msg_id, count(*) FROM receipts GROUP BY msg_id")
                                        .fetchall())
        return HandlerRun(messages=messages, events=int(events), inbox_rows=inbox[0], distinct_events=inbox[1],
                          receipts_per_message={m: sent.get(m, 0) for m in ids}, duplicate_answers=duplicates,
                          crashed_msg_id=ids[0], crashed_row=row[0] if row else None,
                          receiver_log=lab.receiver.log_tail(3000), error=error)
