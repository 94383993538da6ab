"""Stripe 2020 replayed on the real pipeline: a retry without the key charges twice; the lint rule sees it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from effectively_once.incidents import stripe2020
from tests.conftest import run_cli

MESSAGES = 30
SEED = 7


def test_the_lint_rule_flags_the_buggy_retry_path_and_passes_the_fix():
    found = stripe2020.lint_steps()
    buggy, fixed = found["charge_forgetting_the_key_on_retry"], found["charge_keeping_the_key"]
    assert len(buggy) == 1 and fixed == [] and found["elsewhere"] == [], found
    # The finding points at the retry's POST, not at the first attempt (which carries the key).
    source, first = inspect.getsourcelines(stripe2020.charge_forgetting_the_key_on_retry)
    flagged = source[buggy[0].line - first]
    assert "retry_headers" in flagged and "http.post" in flagged, flagged
    assert "without an Idempotency-Key" in buggy[0].reason


def test_the_lint_command_exits_1_on_the_module_with_its_file_and_line():
    path = Path(stripe2020.__file__)
    result = run_cli("lint", str(path), timeout=60)
    line = stripe2020.lint_steps()["charge_forgetting_the_key_on_retry"][0].line
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{path}:{line}: " + stripe2020.lint_steps()[
        "charge_forgetting_the_key_on_retry"][0].reason]


@pytest.fixture(scope="module")
def replays(stack):
    return {fixed: stripe2020.replay(stack, fixed, MESSAGES, SEED) for fixed in (False, True)}


@pytest.mark.integration
def test_a_retry_without_the_key_charges_again(replays):
    bug = replays[False]
    assert bug.retries > 0, "the provider's fail_after_charge should have forced some retries at this seed"
    assert bug.duplicate_charges > 0, bug.summary()
    # Every retry moved money again, and every extra charge is one the provider got without a key.
    assert bug.charges == MESSAGES + bug.retries and bug.extra_charges == bug.retries, bug.summary()
    assert bug.charges_without_key == bug.extra_charges, bug.summary()
    assert bug.charged_messages == MESSAGES and bug.lost_charges == 0 and bug.dlq == 0
    # The dedup table never saw a second delivery: the duplicates happened inside one handling.
    assert bug.dedup_hits == 0 and bug.key_replays == 0 and bug.reconciled == 0
    assert "charged more than once" in bug._repr_html_()
    rows = bug.ledger_sample.records()
    assert any(r["idempotency_key"] == "(none)" for r in rows), rows


@pytest.mark.integration
def test_keeping_the_key_and_reconciling_a_replayed_500_charges_once(replays):
    fix = replays[True]
    assert fix.retries > 0, "the fixed step met the same provider faults"
    assert fix.ok and fix.charges == MESSAGES and fix.extra_charges == 0 and fix.dlq == 0, fix.summary()
    assert fix.charges_without_key == 0
    # Each retry got the first attempt's 500 back from the key store (no money moved), and the ledger
    # lookup that followed found the charge that 500 had hidden: one reconcile per retry.
    assert fix.reconciled == fix.retries and fix.key_replays == 0, fix.summary()
    assert "exactly once" in fix._repr_html_() and "ledger lookup" in fix._repr_html_()


def test_replay_refuses_a_fault_rate_that_makes_no_retry():
    with pytest.raises(ValueError, match="fail_after_charge"):
        stripe2020.replay(None, True, fail_after_charge=0)
