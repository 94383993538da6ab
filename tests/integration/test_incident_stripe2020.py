"""Stripe 2020 replayed with the official SDK on the real pipeline: a retry without the key charges twice, Search
after a 500 charges twice, the PaymentIntent retrieved by id charges once."""

from __future__ import annotations

import pytest

from effectively_once.incidents import stripe2020
from effectively_once.payments import recovery

MESSAGES = 30
SEED = 7


def test_the_sdks_own_key_covers_its_own_retries_of_one_call_and_not_a_second_call(stack):
    cover = recovery.what_the_sdk_key_covers(stack)
    first, second = cover.keys_of("first call"), cover.keys_of("second call")
    answers = [answer for call, _, answer in cover.attempts if call == "first call"]
    # The first call's answer came too late: the SDK retried it under the key it made up, and was replayed.
    assert len(first) == 1 and len(answers) >= 2, cover
    assert answers[0].startswith("no answer within") and answers[-1] == "HTTP 200", cover
    assert all(a == "HTTP 409" for a in answers[1:-1]), "in between, the key was in flight at the provider"
    # The second call is the same message sent again: a new random key, and a second charge.
    assert len(second) == 1 and first.isdisjoint(second), cover
    assert [key for _, key in cover.ledger] == [*first, *second], cover.ledger
    assert all(len(key) == 36 for key in first | second), "the SDK's keys are UUID-shaped"


@pytest.fixture(scope="module")
def replays(stack):
    # The three side by side, as notebook 06 runs them: each has a lab and a provider of its own.
    return stripe2020.replay_side_by_side(stack, stripe2020.VARIANTS, MESSAGES, SEED)


def test_a_retry_without_the_key_charges_again(replays):
    bug = replays["forgets_the_key"]
    assert bug.retries > 0, "the provider's fail_after_charge should have forced some retries at this seed"
    assert bug.outcome == bug.expected_outcome, bug.summary()
    assert bug.duplicate_charges > 0, bug.summary()
    # Every retry moved money again, and every extra charge was made under a key the SDK made up.
    assert bug.charges == MESSAGES + bug.retries and bug.extra_charges == bug.retries, bug.summary()
    assert bug.charges_under_other_keys == bug.extra_charges, bug.summary()
    assert bug.charged_messages == MESSAGES and bug.lost_charges == 0 and bug.dlq == 0
    # The dedup table never saw a second delivery: the duplicates happened inside one handling.
    assert bug.dedup_hits == 0 and bug.key_replays == 0 and bug.recovered == 0
    assert "charged more than once" in bug._repr_html_()
    keys = bug.ledger_sample.column("idempotency_key")
    assert any(len(key) == 36 and not key.startswith("charge-") for key in keys), keys


def test_keeping_the_key_and_asking_search_after_a_500_charges_again(replays):
    searched = replays["searches"]
    assert searched.outcome == searched.expected_outcome, searched.summary()
    assert searched.duplicate_charges > 0, searched.summary()
    # Each extra charge is the one made under the derived new key, after Search found nothing.
    assert searched.charges_under_other_keys == searched.extra_charges, searched.summary()
    rows = searched.ledger_sample.records()
    twice = {r["msg_id"] for r in rows if sum(x["msg_id"] == r["msg_id"] for x in rows) == 2}
    assert twice, searched.ledger_sample
    for msg_id in twice:
        keys = {x["idempotency_key"] for x in rows if x["msg_id"] == msg_id}
        assert keys == {f"charge-{msg_id}", f"charge-{msg_id}-r1"}, (msg_id, keys)
    # (A recharge that itself meets a 500 is dead-lettered: its money moved, and the row stays 'pending'.)
    assert searched.lost_charges == 0


def test_the_payment_intent_retrieved_by_id_settles_every_500_and_charges_once(replays):
    fix = replays["payment_intents"]
    assert fix.outcome == fix.expected_outcome, fix.summary()
    assert fix.ok and fix.charges == MESSAGES and fix.extra_charges == 0 and fix.dlq == 0, fix.summary()
    assert fix.charges_under_other_keys == 0
    # Every confirm that got a 500 was settled by the retrieve: the PaymentIntent had succeeded.
    assert fix.recovered > 0 and fix.key_replays == 0, fix.summary()
    assert "exactly once" in fix._repr_html_() and "retrieving the PaymentIntent" in fix._repr_html_()
