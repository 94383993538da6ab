"""Slack 2022 without a broker: what each broker must do to the zombie, and the outcome the replay reads."""

from __future__ import annotations

from effectively_once.incidents import slack_zombie


def _replay(flavor: str, zombie_records_delivered: int) -> slack_zombie.ZombieReplay:
    return slack_zombie.ZombieReplay(broker_flavor=flavor, charges=4, zombie_commit="fenced", delivered=4,
                                     zombie_records_delivered=zombie_records_delivered, naive_ledger_rows=4,
                                     dedup_ledger_rows=4, duplicates_absorbed=0)


def test_the_outcome_follows_what_reached_the_consumers_and_the_expectation_follows_the_broker():
    kafka, tansu = _replay("apache-kafka", 0), _replay("tansu", 4)
    assert kafka.outcome == slack_zombie.FENCED == kafka.expected_outcome
    assert tansu.outcome == slack_zombie.NOT_FENCED == tansu.expected_outcome
    assert _replay("tansu", 0).outcome != _replay("tansu", 0).expected_outcome
