"""The PaymentIntent path with its recovery point, on the real broker, PostgreSQL and provider, through the SDK.

The crash matrix runs every crash point of the path against every layer set, and each cell must end as
``matrix.expected_outcome`` says (the course's one statement of the expected matrix); 500s after and before
the money moved are settled by retrieving the PaymentIntent; the sweeper finishes what a dead-lettered
message left; Search, asked instead, charges twice (the counter-example). The expected matrix itself, and
what needs no services, is tested in tests/unit/test_payment_intents.py.
"""

from __future__ import annotations

import psycopg
import pytest

from effectively_once.payments import recovery
from effectively_once.payments.lab import LAYER_SETS, PaymentLab
from effectively_once.payments.matrix import (
    CHARGED_TWICE,
    INTENT,
    KEY,
    LOST,
    run_matrix,
)
from effectively_once.payments.messages import MAX_NEW_KEYS, idempotency_key_for, intent_key_for, new_key_for
from effectively_once.payments.pending import COMPLETED, NO_INTENT, SETTLED, sweep
from effectively_once.protocol import DLQ_ERROR_TYPE, INTENT_CRASH_POINTS


# -- the crash matrix -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def intent_matrix(stack):
    return run_matrix(stack, INTENT_CRASH_POINTS, LAYER_SETS, messages=2, seed=3, run_prefix="pi", workers=4)


def test_every_crash_point_of_the_payment_intent_path_against_every_layer_set(intent_matrix):
    assert intent_matrix.api == "payment_intents" and len(intent_matrix.cells) == 6 * 5
    assert intent_matrix.unexpected() == {}, intent_matrix.problems()
    assert intent_matrix.holds("both") and intent_matrix.holds("dedup_only")
    assert intent_matrix.holds("idempotency_key_only") and not intent_matrix.holds("none")


def test_the_stored_payment_intent_absorbs_what_the_key_would_have(intent_matrix):
    # Without a key of ours, the dedup row's PaymentIntent is what a redelivery after the charge meets.
    without_key = intent_matrix.cell("after_provider_call", "dedup_only")
    # The two messages may sit on two partitions, so the recovered one need not be the first row.
    assert without_key.absorbed_by == INTENT and sorted(without_key.results) == ["charged", "recovered"], (
        without_key, without_key.results)
    assert len(without_key.ledger) == 2, "one charge for each of the two messages"
    assert intent_matrix.cell("after_provider_call", "both").absorbed_by == KEY
    # Crashed after the create, the row holds no id: the redelivery creates again, under the same key.
    created = intent_matrix.cell("after_intent_created", "both")
    assert created.ok and [r["status"] for r in created.shop] == ["done", "done"]
    lost = intent_matrix.cell("after_intent_stored", "dedup_as_written")
    assert lost.outcome == LOST and [r["status"] for r in lost.shop][0] == "pending"


def test_the_stored_id_outlives_the_key(stack):
    late = run_matrix(stack, ["after_provider_call", "after_status_update"], ["both", "idempotency_key_only"],
                      seed=5, expire_keys=True, run_prefix="pil")
    assert late.unexpected() == {}, late.problems()
    assert late.cell("after_provider_call", "both").absorbed_by == INTENT
    assert late.cell("after_provider_call", "idempotency_key_only").outcome == CHARGED_TWICE


def test_the_payment_intent_path_per_poll_batch_holds_at_every_crash_point(stack):
    from effectively_once.payments.lab import run_scenario

    for point in INTENT_CRASH_POINTS:
        report = run_scenario(stack, point, "both", 4, seed=8, exit_when_idle=0.5, timeout=90,
                              consumer_options={"batch_dedup": True})
        assert report.ok and report.charges == 4, (point, report)


# -- a 500 that says nothing --------------------------------------------------------------------------
def test_a_500_after_the_charge_is_settled_by_retrieving_the_payment_intent(stack):
    with PaymentLab(stack, "both") as lab:
        lab.start_provider(fail_after_charge=1.0)
        ids = lab.produce(4, seed=9)
        lab.run_until_settled(timeout=90, exit_when_idle=0.5)
        report = lab.report()
        with psycopg.connect(lab.shop_dsn) as conn:
            results = dict(conn.execute("SELECT msg_id, result FROM consumer_events WHERE topic = %s",
                                        (lab.topic,)).fetchall())
            shop = {r[0]: r[1:] for r in conn.execute(
                "SELECT msg_id, status, charge_id, payment_intent FROM charges WHERE msg_id = ANY(%s)", (ids,))}
        with psycopg.connect(lab.provider_dsn) as conn:
            ledger = {r[0]: r[1:] for r in conn.execute(
                "SELECT msg_id, charge_id, payment_intent, idempotency_key FROM ledger WHERE msg_id = ANY(%s)",
                (ids,))}
    assert report.ok and report.charges == 4 and report.dlq == 0, report
    assert results == dict.fromkeys(ids, "recovered"), results
    assert {m: key for m, (_, _, key) in ledger.items()} == {m: idempotency_key_for(m) for m in ids}
    # The dedup row holds the charge and the PaymentIntent the provider's ledger holds.
    assert shop == {m: ("done", charge, intent) for m, (charge, intent, _) in ledger.items()}, shop


def test_a_500_before_the_charge_is_confirmed_again_under_derived_keys_then_dead_lettered_and_swept(stack):
    """Every confirm fails before the money moves: each key is spent on a 500, the retrieve says no money
    moved, the next derived key gets the same; after MAX_NEW_KEYS the message is dead-lettered with its row
    'pending' and its PaymentIntent stored. Once the provider is well, the sweeper finishes each from there."""
    with PaymentLab(stack, "both") as lab:
        lab.start_provider()
        ids = lab.produce(2, seed=2)
        lab.set_faults(fail_before_charge=1.0)
        try:
            assert lab.start_consumer(max_retries=2, exit_when_idle=0.5).wait(90) == 0
        finally:
            lab.set_faults(fail_before_charge=0)
        dlq, shop, ledger = lab.dlq_records(), lab.shop_rows(), lab.ledger_rows()
        with psycopg.connect(lab.shop_dsn) as conn:
            retries = conn.execute("SELECT retries FROM consumer_events WHERE topic = %s", (lab.topic,)).fetchall()
        with psycopg.connect(lab.provider_dsn) as conn:
            keys = conn.execute("SELECT key, status_code FROM idempotency_keys WHERE key LIKE %s ORDER BY key",
                                (f"charge-{ids[0]}%",)).fetchall()
            intents = conn.execute("SELECT status FROM payment_intents WHERE metadata->>'msg_id' = ANY(%s)",
                                   (ids,)).fetchall()
        assert shop.column("status") == ["pending", "pending"] and len(ledger) == 0
        assert all(shop.column("payment_intent")), "the recovery point was stored before the first confirm"
        assert {r["headers"][DLQ_ERROR_TYPE] for r in dlq} == {"key_spent"} and len(dlq) == 2
        assert retries == [(MAX_NEW_KEYS,)] * 2, "one more confirm per derived key"
        assert [k for k, _ in keys] == [idempotency_key_for(ids[0])] + [
            new_key_for(ids[0], g) for g in range(1, MAX_NEW_KEYS + 1)]
        assert {status for _, status in keys} == {500} and intents == [("requires_confirmation",)] * 2

        with psycopg.connect(lab.shop_dsn, autocommit=True) as conn:
            from effectively_once.payments.client import ProviderClient

            client = ProviderClient(lab.provider.url)
            swept = sweep(conn, client, older_than_seconds=0)
            again = sweep(conn, client, older_than_seconds=0)
            client.close()
        assert swept.column("action") == [COMPLETED, COMPLETED], swept
        assert len(again) == 0, "nothing is left 'pending'"
        assert lab.shop_rows().column("status") == ["done", "done"]
        # The dead-lettered messages, redriven later, meet 'done' rows: still one charge each.
        assert [r["msg_id"] for r in lab.ledger_rows()] == ids
        assert lab.ledger_rows().column("idempotency_key") == [new_key_for(m, MAX_NEW_KEYS + 1) for m in ids]


def test_the_sweeper_settles_each_stuck_row_from_what_its_payment_intent_says(stack):
    """Three crashed consumers leave three 'pending' rows and no redelivery: one whose PaymentIntent succeeded,
    one whose PaymentIntent was never confirmed, one with no PaymentIntent at all."""
    from effectively_once.payments.children import ProviderProcess
    from effectively_once.payments.client import ProviderClient
    from effectively_once.stack import new_run_id

    run = new_run_id()
    provider_dsn, shop_dsn = stack.create_database(f"provider_sw{run}"), stack.create_database(f"shop_sw{run}")
    try:
        with ProviderProcess(provider_dsn) as provider:
            labs = {point: PaymentLab(stack, "both", provider=provider, shop_dsn=shop_dsn, run_id=f"sw{i}")
                    for i, point in enumerate(("after_provider_call", "after_intent_stored", "after_dedup_insert"))}
            try:
                for point, lab in labs.items():
                    lab.produce(1, seed=4)
                    assert lab.start_consumer(crash_at=point).wait(60) == -9
                with psycopg.connect(shop_dsn, autocommit=True) as conn:
                    client = ProviderClient(provider.url)
                    swept = {r["msg_id"]: r for r in sweep(conn, client, older_than_seconds=0)}
                    client.close()
                by_point = {point: swept[lab.msg_ids[0]] for point, lab in labs.items()}
                assert (by_point["after_provider_call"]["found"], by_point["after_provider_call"]["action"]) == (
                    "succeeded", SETTLED)
                assert (by_point["after_intent_stored"]["found"], by_point["after_intent_stored"]["action"]) == (
                    "requires_confirmation", COMPLETED)
                assert by_point["after_dedup_insert"]["action"] == NO_INTENT
                # The redeliveries come later: two meet 'done' rows, the third charges for the first time.
                for lab in labs.values():
                    lab.run_until_settled(timeout=60, exit_when_idle=0.5)
                    assert lab.report().ok and lab.report().charges == 1, lab.report()
                    assert lab.shop_rows().column("status") == ["done"]
            finally:
                for lab in labs.values():
                    lab.stop()
    finally:
        stack.drop_database(f"provider_sw{run}")
        stack.drop_database(f"shop_sw{run}")


# -- Search, the counter-example ------------------------------------------------------------------------
def test_within_the_index_delay_search_finds_nothing_and_the_recharge_is_a_second_charge(stack):
    seen = recovery.after_a_500(stack, search_delay_ms=1500)
    assert seen.search.charges == 2, seen
    assert [key for _, key in seen.search.ledger] == [idempotency_key_for(seen.search.msg_id),
                                                      new_key_for(seen.search.msg_id, 1)]
    assert ("GET /v1/charges/search (the msg_id)", "0 found") in seen.search.steps, seen
    # Once the delay has passed, Search finds both: too late to help.
    assert sorted(seen.found_later) == sorted(charge for charge, _ in seen.search.ledger)
    assert seen.payment_intent.charges == 1, seen
    assert [key for _, key in seen.payment_intent.ledger] == [idempotency_key_for(seen.payment_intent.msg_id)]
    assert ("GET /v1/payment_intents/pi_...", "status succeeded") in seen.payment_intent.steps, seen
    assert "money moved 2 time(s)" in repr(seen) and "#cf222e" in seen._repr_html_()
    assert intent_key_for(seen.payment_intent.msg_id) in repr(seen)
