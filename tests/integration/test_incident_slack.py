"""Slack 2022 replayed on the real broker: the dedup table absorbs whatever the broker lets through."""

from __future__ import annotations

from effectively_once.incidents.slack_zombie import replay


def test_zombie_replay_dedup_holds_on_any_broker(stack):
    result = replay(stack, charges=4)
    assert result.dedup_ledger_rows == 4, "the dedup table must hold each charge exactly once"
    assert result.duplicates_absorbed == result.delivered - 4
    if stack.broker_flavor == "apache-kafka":
        assert result.outcome == result.expected_outcome and result.naive_ledger_rows == 4, result.as_dict()
        assert result.zombie_commit != "accepted"
    else:
        # Tansu does not fence the zombie: its records reach read_committed consumers.
        assert result.outcome == result.expected_outcome, result.as_dict()
        assert result.naive_double_charges == 4 and result.duplicates_absorbed == 4
    assert "fence" in result._repr_html_()
