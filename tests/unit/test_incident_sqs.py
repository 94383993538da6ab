"""The SQS 2019 replay's plan and its refusals, without a database."""

from __future__ import annotations

import pytest

from effectively_once.incidents import sqs_visibility as sqs


def test_the_replay_is_seeded():
    a = sqs.plan_durations(30, 0.3, seed=3)
    assert a == sqs.plan_durations(30, 0.3, seed=3)
    assert a != sqs.plan_durations(30, 0.3, seed=4)
    assert all(d > 0.45 or d < 0.1 for d in a), "durations must stay clear of the timeout"


def test_replay_rejects_an_unknown_fix():
    with pytest.raises(ValueError, match="fix must be one of"):
        sqs.replay(None, fix="retry_harder")


def _replay(fix, executions: dict[int, int]) -> sqs.SqsReplay:
    rows = [{"message_id": mid} for mid, n in executions.items() for _ in range(n)]
    return sqs.SqsReplay(fix=fix, visibility_timeout=0.3, messages=len(executions), workers=2, max_receives=5,
                         seed=3, durations={mid: 0.1 for mid in executions}, side_effects=rows, deliveries=0,
                         deletes_ok=0, stale_deletes=0, absorbed_by_dedup=0, visibility_extensions=0, left_in_queue=0)


def test_the_outcome_follows_the_side_effects_and_the_expectation_follows_the_fix():
    assert _replay(None, {1: 2, 2: 1}).outcome == sqs.RAN_TWICE == sqs.EXPECTED_OUTCOME[None]
    assert _replay("dedup", {1: 1, 2: 1}).outcome == sqs.RAN_ONCE == _replay("dedup", {}).expected_outcome
    assert _replay("dedup", {1: 1, 2: 0}).outcome == sqs.LOST
    race = sqs.DeleteRaceReplay(atomic=True, delete_returned=True, reappeared=False, side_effect_runs=1)
    assert race.outcome == sqs.STAYED_DELETED == race.expected_outcome
    assert sqs.DeleteRaceReplay(False, True, True, 2).outcome == sqs.CAME_BACK
