"""The shop's webhook receiver (payments/receiver.py, payments/inbox.py) against the real provider process.

Signed deliveries are verified with the official SDK (400 otherwise); each event is recorded once in the
inbox, so duplicates and out-of-order deliveries change nothing; success events settle the 'pending' rows a
crashed consumer left; a receiver killed mid-stream loses nothing, because the provider sends again; a
handler without the inbox sends a customer two receipts.
"""

from __future__ import annotations

import json
import time

import httpx
import psycopg

from effectively_once.observe import metrics as names
from effectively_once.observe.scrape import Recorder
from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.matrix import PluggedStep
from effectively_once.payments.webhook_lab import wait_for_deliveries
from effectively_once.payments.webhooks import signature_header


def _counter(scrape, name: str, **labels: str) -> float:
    value = scrape.get(f"{name}_total", 0.0, **labels)
    assert value is not None
    return value


def _rows(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def _post(receiver, payload: str | bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return httpx.post(receiver.url, content=payload if isinstance(payload, bytes) else payload.encode(),
                      headers=headers, timeout=10, trust_env=False)


def _event(event_id: str, event_type: str, intent_id: str, msg_id: str) -> str:
    obj = {"id": intent_id, "object": "payment_intent", "amount": 1250, "currency": "usd", "status":
           "succeeded" if event_type.endswith("succeeded") else "requires_payment_method",
           "latest_charge": "ch_test", "metadata": {"msg_id": msg_id}}
    return json.dumps({"id": event_id, "object": "event", "type": event_type, "created": int(time.time()),
                       "livemode": False, "data": {"object": obj}})


def test_every_delivery_is_verified_with_the_sdk_and_a_bad_one_gets_400(stack):
    with PaymentLab(stack, "both") as lab:
        receiver = lab.start_receiver()
        payload = _event("evt_sig1", "payment_intent.succeeded", "pi_sig1", "msg-sig-1")
        good = signature_header(payload, receiver.secret)
        first, again = _post(receiver, payload, good), _post(receiver, payload, good)
        assert (first.status_code, first.json()["outcome"]) == (200, "recorded"), first.text
        assert (again.status_code, again.json()["outcome"]) == (200, "duplicate"), again.text
        refused = {
            "tampered": _post(receiver, payload.replace("1250", "1"), good),
            "another secret": _post(receiver, payload, signature_header(payload, "whsec_someone_else")),
            "stale": _post(receiver, payload, signature_header(payload, receiver.secret, int(time.time()) - 600)),
            "unsigned": _post(receiver, payload, None),
            "garbled header": _post(receiver, payload, "v1=deadbeef"),
        }
        for why, answer in refused.items():
            assert answer.status_code == 400 and "signature" in answer.json()["error"], (why, answer.text)
        assert "tolerance" in refused["stale"].json()["error"]
        not_json = "this is not an event"
        bad_body = _post(receiver, not_json, signature_header(not_json, receiver.secret))
        assert bad_body.status_code == 400 and "not an event" in bad_body.json()["error"], bad_body.text
        seen = receiver.metrics()
        assert _counter(seen, names.INBOX_EVENTS) == 1 and _counter(seen, names.INBOX_DUPLICATES) == 1
        assert _counter(seen, names.INBOX_REFUSED, reason="signature") == len(refused)
        assert _counter(seen, names.INBOX_REFUSED, reason="payload") == 1
        assert _rows(lab.shop_dsn, "SELECT event_id, type, msg_id FROM webhook_inbox") == [
            ("evt_sig1", "payment_intent.succeeded", "msg-sig-1")]
        assert _rows(lab.shop_dsn, "SELECT count(*) FROM receipts") == [(1,)], "one receipt, not two"


def test_duplicates_and_out_of_order_deliveries_are_absorbed_by_the_inbox(stack):
    with PaymentLab(stack, "both") as lab:
        lab.start_provider(webhooks=True, webhook_duplicate=1.0, webhook_out_of_order=1.0)
        ids = lab.produce(6, seed=3)
        lab.run_until_settled(timeout=90, exit_when_idle=0.5)
        wait_for_deliveries(lab)
        sample = Recorder.for_lab(lab, webhooks=True).sample()
        sent, got = lab.provider.metrics(), lab.receiver.metrics()
        with psycopg.connect(lab.provider_dsn) as conn:
            events = dict(conn.execute(
                "SELECT id, seq FROM events WHERE type IN ('payment_intent.succeeded', 'charge.succeeded')"))
        inbox = _rows(lab.shop_dsn, "SELECT event_id, type, msg_id FROM webhook_inbox ORDER BY received_at")
        receipts = _rows(lab.shop_dsn, "SELECT msg_id FROM receipts ORDER BY msg_id")
        report = lab.report()
    assert report.ok and report.charges == 6, report
    # Every event was sent twice; the inbox holds each once, and the duplicates were counted as hits.
    assert _counter(sent, names.WEBHOOK_DUPLICATE_DELIVERIES) == len(events) == 12
    assert sorted(event_id for event_id, _, _ in inbox) == sorted(events)
    assert _counter(got, names.INBOX_EVENTS) == 12 and _counter(got, names.INBOX_DUPLICATES) == 12
    assert sample[f"{names.INBOX_DUPLICATES}_total"] == 12, "the recorder samples the inbox too"
    # One receipt per payment, whatever the number of deliveries.
    assert [m for (m,) in receipts] == ids
    # Out of order: each payment's two events were written charge first, and arrived PaymentIntent first.
    for msg_id in ids:
        mine = [(events[e], t) for e, t, m in inbox if m == msg_id]
        assert [t for _, t in mine] == ["payment_intent.succeeded", "charge.succeeded"], (msg_id, mine)
        assert mine[0][0] > mine[1][0], "the later event arrived first"


def test_the_events_settle_the_pending_rows_a_crashed_consumer_left(stack):
    with PaymentLab(stack, "both", partitions=1) as lab:
        lab.start_provider(webhooks=True)
        ids = lab.produce(3, seed=5)
        assert lab.start_consumer(crash_at="after_provider_call").wait(60) == -9
        wait_for_deliveries(lab)
        shop = {r["msg_id"]: r for r in lab.shop_rows()}
        ledger = {r["msg_id"]: r for r in lab.ledger_rows()}
        # The consumer died with the row 'pending'; the payment_intent.succeeded event settled it.
        assert (shop[ids[0]]["status"], shop[ids[0]]["charge_id"]) == ("done", ledger[ids[0]]["charge_id"])
        settled = _rows(lab.shop_dsn, "SELECT type, settled FROM webhook_inbox WHERE msg_id = %s ORDER BY type",
                        (ids[0],))
        assert settled == [("charge.succeeded", None), ("payment_intent.succeeded", ids[0])], settled
        # A failure event arriving late (out of order) records, and moves nothing back.
        late = _event("evt_late_failure", "payment_intent.payment_failed", shop[ids[0]]["payment_intent"], ids[0])
        answer = _post(lab.receiver, late, signature_header(late, lab.receiver.secret))
        assert answer.status_code == 200 and lab.shop_rows().records()[0]["status"] == "done"
        # The redelivery meets a 'done' row: skipped, no call, no second charge.
        lab.run_until_settled(timeout=60, exit_when_idle=0.5)
        events = lab.event_rows().records()
        report = lab.report()
    assert [(e["msg_id"], e["result"]) for e in events] == [(ids[0], "skipped"), (ids[1], "charged"),
                                                           (ids[2], "charged")], events
    assert report.ok and report.charges == 3, report


def test_a_receiver_killed_mid_stream_loses_no_event_the_provider_sends_again(stack):
    with PaymentLab(stack, "both") as lab:
        lab.start_provider(webhooks=True, webhook_retry_ms=100, webhook_retry_max_ms=500)
        lab.receiver.kill()
        ids = lab.produce(5, seed=6)
        lab.run_until_settled(timeout=90, exit_when_idle=0.5)
        time.sleep(1.0)
        refused = lab.provider.metrics().get(f"{names.WEBHOOK_DELIVERY_FAILURES}_total", 0.0, reason="timed_out")
        assert refused, "with the receiver down, the deliveries failed and wait for a retry"
        lab.restart_receiver()
        wait_for_deliveries(lab)
        receipts = _rows(lab.shop_dsn, "SELECT msg_id FROM receipts ORDER BY msg_id")
        inbox = _rows(lab.shop_dsn, "SELECT count(*), count(DISTINCT event_id) FROM webhook_inbox")
    assert [m for (m,) in receipts] == ids
    assert inbox == [(10, 10)]


def handler_without_an_inbox(conn, event):
    """Settles and sends the receipt for every delivery it gets: no record of the events it has seen."""
    from effectively_once.payments.inbox import send_receipt, settle, succeeded_payment

    payment = succeeded_payment(event)
    if payment is not None:
        with conn.transaction():
            settle(conn, payment)
            send_receipt(conn, event["id"], payment)
    return "recorded"


def test_without_the_inbox_a_duplicate_delivery_sends_a_second_receipt(stack):
    with PluggedStep(handler_without_an_inbox) as handler, PaymentLab(stack, "both") as lab:
        lab.start_receiver(handler=handler.spec)
        lab.start_provider(webhooks=True, webhook_duplicate=1.0)
        ids = lab.produce(3, seed=7)
        lab.run_until_settled(timeout=60, exit_when_idle=0.5)
        wait_for_deliveries(lab)
        receipts = _rows(lab.shop_dsn, "SELECT msg_id, count(*) FROM receipts GROUP BY msg_id ORDER BY msg_id")
    assert receipts == [(m, 2) for m in ids], receipts


def test_the_receiver_handles_many_deliveries_at_once_on_a_pool_of_its_size(stack):
    """A burst of deliveries waits for the pool's connections instead of opening one each (a room's role has a
    CONNECTION LIMIT): every delivery is handled, and no more than RECEIVER_POOL_SIZE connections ever open."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from effectively_once.connections import RECEIVER_POOL_SIZE
    from effectively_once.payments.receiver import Inbox

    lock, seen, busy = threading.Lock(), set(), [0, 0]  # connections used; [in use now, most in use at once]

    def slow_handler(conn, event):
        with lock:
            seen.add(conn.info.backend_pid)
            busy[0] += 1
            busy[1] = max(busy)
        try:
            conn.execute("SELECT pg_sleep(0.2)")
        finally:
            with lock:
                busy[0] -= 1
        return "recorded"

    secret = "whsec_pooltest"
    inbox = Inbox(stack.postgres_dsn("postgres"), secret, slow_handler)
    payloads = [_event(f"evt_pool{i}", "payment_intent.succeeded", f"pi_pool{i}", f"msg-pool-{i}") for i in range(12)]
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(lambda p: inbox.receive(p.encode(), signature_header(p, secret)), payloads))
    finally:
        inbox.close()
    assert [status for status, _ in answers] == [200] * 12, answers
    assert busy[1] == RECEIVER_POOL_SIZE and len(seen) == RECEIVER_POOL_SIZE, (busy, seen)
