"""Stripe 2020 replayed on the real pipeline: a retry without the key charges twice, the fix charges once."""

from __future__ import annotations

import pytest

from effectively_once.incidents import stripe2020

MESSAGES = 30
SEED = 7


@pytest.fixture(scope="module")
def replays(stack):
    return {fixed: stripe2020.replay(stack, fixed, MESSAGES, SEED) for fixed in (False, True)}


def test_a_retry_without_the_key_charges_again(replays):
    bug = replays[False]
    assert bug.retries > 0, "the provider's fail_after_charge should have forced some retries at this seed"
    assert bug.outcome == bug.expected_outcome, bug.summary()
    # Every retry moved money again, and every extra charge is one the provider got without a key.
    assert bug.charges == MESSAGES + bug.retries and bug.extra_charges == bug.retries, bug.summary()
    assert bug.charges_without_key == bug.extra_charges, bug.summary()
    assert bug.charged_messages == MESSAGES and bug.lost_charges == 0 and bug.dlq == 0
    # The dedup table never saw a second delivery: the duplicates happened inside one handling.
    assert bug.dedup_hits == 0 and bug.key_replays == 0 and bug.reconciled == 0
    assert "charged more than once" in bug._repr_html_()
    rows = bug.ledger_sample.records()
    assert any(r["idempotency_key"] == "(none)" for r in rows), rows


def test_keeping_the_key_and_reconciling_a_replayed_500_charges_once(replays):
    fix = replays[True]
    assert fix.retries > 0, "the fixed step met the same provider faults"
    assert fix.outcome == fix.expected_outcome, fix.summary()
    assert fix.charges == MESSAGES and fix.extra_charges == 0 and fix.dlq == 0, fix.summary()
    assert fix.charges_without_key == 0
    # Each retry got the first attempt's 500 back from the key store (no money moved), and the ledger
    # lookup that followed found the charge that 500 had hidden: one reconcile per retry.
    assert fix.reconciled == fix.retries and fix.key_replays == 0, fix.summary()
    assert "exactly once" in fix._repr_html_() and "ledger lookup" in fix._repr_html_()


