"""Stripe 2020 without the pipeline: the lint rule sees the SDK call of the retry that forgets its key."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from effectively_once.incidents import stripe2020
from tests.conftest import run_cli


def test_the_lint_rule_flags_the_sdk_call_of_the_buggy_retry_path_and_passes_the_fix():
    found = stripe2020.lint_steps()
    buggy, fixed = found["charge_forgetting_the_key_on_retry"], found["charge_keeping_the_key"]
    assert len(buggy) == 1 and fixed == [] and found["elsewhere"] == [], found
    # The finding points at the retry's SDK call, not at the first attempt (which passes the key).
    source, first = inspect.getsourcelines(stripe2020.charge_forgetting_the_key_on_retry)
    flagged = source[buggy[0].line - first]
    assert "client.v1.charges.create(params=msg.body())" in flagged, flagged
    assert "passes no idempotency_key, so the SDK makes up a random one" in buggy[0].reason


def test_the_lint_command_exits_1_on_the_module_with_its_file_and_line():
    path = Path(stripe2020.__file__)
    result = run_cli("lint", str(path), timeout=60)
    finding = stripe2020.lint_steps()["charge_forgetting_the_key_on_retry"][0]
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{path}:{finding.line}: {finding.reason}"]


def test_replay_refuses_a_fault_rate_that_makes_no_retry_and_an_unknown_variant():
    with pytest.raises(ValueError, match="fail_after_charge"):
        stripe2020.replay(None, "payment_intents", fail_after_charge=0)
    with pytest.raises(ValueError, match="variant must be one of"):
        stripe2020.replay(None, "keeps_hoping")


def test_the_side_by_side_replay_refuses_an_unknown_variant_and_none_before_it_starts_anything():
    with pytest.raises(ValueError, match="variants must be one or more of"):
        stripe2020.replay_side_by_side(None, ["forgets_the_key", "keeps_hoping"])
    with pytest.raises(ValueError, match="variants must be one or more of"):
        stripe2020.replay_side_by_side(None, [])


def _counts(variant: str, **counts) -> stripe2020.Stripe2020Replay:
    base = dict(step="s", messages=3, fail_after_charge=0.25, seed=7, charges=3, charged_messages=3,
                duplicate_charges=0, charges_under_other_keys=0, retries=1, key_replays=0, recovered=1, dedup_hits=0,
                lost_charges=0, dlq=0)
    return stripe2020.Stripe2020Replay(variant=variant, **{**base, **counts})


def test_the_outcome_follows_the_ledger_and_the_expectation_follows_the_variant():
    from effectively_once.payments.matrix import CHARGED_ONCE, CHARGED_TWICE, LOST

    assert _counts("payment_intents").outcome == CHARGED_ONCE == _counts("payment_intents").expected_outcome
    for bug in ("forgets_the_key", "searches"):
        twice = _counts(bug, charges=4, duplicate_charges=1, charges_under_other_keys=1)
        assert twice.outcome == CHARGED_TWICE == twice.expected_outcome, bug
    assert _counts("payment_intents", charged_messages=2, lost_charges=1).outcome == LOST
