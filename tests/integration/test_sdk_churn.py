"""Group churn with the SDK consumer on the PaymentIntent path, the provider failing after some charges and its
webhooks delivered twice: every message is charged once in the provider's ledger, every row ends 'done', and
each payment gets one receipt."""

from __future__ import annotations

import random
import time

import psycopg

from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.webhook_lab import wait_for_deliveries

MESSAGES = 120
CHURN_SECONDS = 30.0


def test_sdk_consumers_killed_at_random_charge_each_message_once_and_the_inbox_sends_one_receipt(stack, capsys):
    rng = random.Random(20)
    with PaymentLab(stack, "both") as lab:
        # Each confirm takes 150 ms and a tenth of them answer 500 after moving the money.
        lab.start_provider(webhooks=True, webhook_duplicate=0.5, fail_after_charge=0.10, latency_ms=150, seed=20)
        ids = lab.produce(MESSAGES, seed=20)
        slots = [lab.start_consumer(exit_when_idle=None), lab.start_consumer(exit_when_idle=None)]
        kills, started = 0, time.monotonic()
        next_kill = started + rng.uniform(1.5, 4.0)
        while time.monotonic() - started < CHURN_SECONDS:
            now = time.monotonic()
            if now >= next_kill:
                victim = rng.randrange(2)
                if slots[victim].running:
                    slots[victim].kill()
                    kills += 1
                next_kill = now + rng.uniform(1.5, 4.0)
            for i, consumer in enumerate(slots):
                if not consumer.running:
                    assert consumer.returncode == -9, f"a consumer died on its own:\n{consumer.log_tail()}"
                    slots[i] = lab.start_consumer(exit_when_idle=None)
            time.sleep(0.05)
        for consumer in slots:
            consumer.kill()
        lab.set_faults(fail_after_charge=0, latency_ms=0)
        lab.run_until_settled(timeout=240)
        wait_for_deliveries(lab, timeout=120)
        report = lab.report()
        with psycopg.connect(lab.shop_dsn) as conn:
            statuses = conn.execute("SELECT status, count(*) FROM charges WHERE msg_id = ANY(%s) GROUP BY status",
                                    (ids,)).fetchall()
            results = dict(conn.execute("SELECT result, count(*) FROM consumer_events WHERE topic = %s"
                                        " GROUP BY result", (lab.topic,)).fetchall())
            receipts = conn.execute("SELECT count(*), count(DISTINCT msg_id) FROM receipts").fetchone()
        with psycopg.connect(lab.provider_dsn) as conn:
            keys = conn.execute("SELECT count(*) FILTER (WHERE idempotency_key LIKE 'charge-%%'), count(*)"
                                " FROM ledger WHERE msg_id = ANY(%s)", (ids,)).fetchone()
        with capsys.disabled():
            print(f"\n[sdk churn] {stack.broker_flavor}: {kills} SIGKILLs; events {results}", flush=True)
    assert kills >= 6, f"only {kills} kills in {CHURN_SECONDS} s: the test did not churn the group"
    assert report.ok and report.charges == MESSAGES and report.dlq == 0, report
    assert statuses == [("done", MESSAGES)], statuses
    assert results.get("recovered", 0) > 0, "some 500s were settled by retrieving the PaymentIntent"
    assert keys == (MESSAGES, MESSAGES), "every charge was made under its message's derived key"
    assert receipts == (MESSAGES, MESSAGES), "one receipt per payment, duplicate deliveries and all"
