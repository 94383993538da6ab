"""Leases, fencing tokens (payments/leases.py) and the order of one key's messages (payments/ordering.py)."""

from __future__ import annotations

import psycopg

from effectively_once.payments.leases import LeaseLab, claim, write_fenced, write_with_lease
from effectively_once.payments.ordering import (
    OrderingLab,
)
from effectively_once.protocol import EventKind


# -- on the real stack ----------------------------------------------------------------------------
def test_with_a_lease_only_the_stalled_worker_overwrites_the_result(stack):
    with LeaseLab(stack) as lab:
        story_ = lab.run_story(fenced=False)
        assert story_.tokens_of("B") == [2], "B is refused while A's lease runs, then takes it over"
        assert story_.rows_written_by("B") == [1] and story_.rows_written_by("A") == [1]
        assert story_.row is not None and story_.row.records()[0]["result"] == "charged by A"


def test_a_fencing_token_refuses_the_stalled_worker(stack):
    with LeaseLab(stack) as lab:
        story_ = lab.run_story(fenced=True)
        assert story_.tokens_of("A") == [1] and story_.tokens_of("B") == [2]
        assert story_.rows_written_by("A") == [0]
        assert story_.row is not None
        assert story_.row.records()[0] == {"msg_id": "msg-fenced", "status": "done", "owner": "B", "token": 2,
                                           "result": "charged by B"}


def test_a_live_lease_and_a_done_row_are_never_taken_over(stack):
    with LeaseLab(stack, lease_seconds=60) as lab, psycopg.connect(lab.dsn, autocommit=True) as conn:
        assert claim(conn, "m1", "A", 60) == 1
        assert claim(conn, "m1", "B", 60) is None
        assert claim(conn, "m1", "B", 0) == 2, "a lease of 0 s has expired already"
        assert write_fenced(conn, "m1", "B", "done by B", 2) == 1
        assert claim(conn, "m1", "C", 0) is None, "a finished row is not claimed again"
        assert write_with_lease(conn, "m1", "A", "late") == 1


def test_one_partition_keeps_the_order_and_the_redrive_breaks_it_unless_the_key_is_parked(stack):
    with OrderingLab(stack) as lab:
        lab.publish_story()
        wrong = lab.run(park_keys=False)
        assert wrong.read == ["authorize", "capture", "refund"]
        assert wrong.dead_letter_topic == ["capture"]
        assert wrong.applied == ["authorize", "refund", "capture"]
        parked = lab.run(park_keys=True)
        assert parked.dead_letter_topic == ["capture", "refund"]
        assert parked.applied == ["authorize", "capture", "refund"]
        topics = list(lab.topics)
    assert not set(topics) & set(stack.list_topics()), "stop() deletes the topic and the dead-letter topics"


# -- a zombie consumer, live: one stuck provider call past max.poll.interval.ms ---------------------
def test_a_zombie_consumer_charges_twice_without_the_key_and_once_with_it(stack):
    from effectively_once.payments.zombie import run_side_by_side

    no_key, with_key = run_side_by_side(stack, "dedup", "dedup,idempotency_key")
    # A overran max.poll.interval.ms, so its client left the group, and the group refused A's commit.
    assert no_key.zombie_did(EventKind.POLL_INTERVAL_EXCEEDED), no_key.zombie_events
    assert no_key.zombie_did(EventKind.COMMIT_REFUSED), no_key.zombie_events
    assert [e["result"] for e in no_key.events_of("B")] == ["charged"], no_key.events
    assert no_key.events_of("B")[0]["dedup_hit"], "B must have found A's 'pending' row"
    assert no_key.charges == 2, no_key.ledger.records()

    assert with_key.charges == 1, with_key.ledger.records()
    b_first = with_key.events_of("B")[0]
    assert b_first["result"] == "replayed" and b_first["retries"] >= 1, "B must have met the 409 and then the replay"
    key_row = with_key.keys.records()[0]
    assert key_row["status_code"] == 200 and key_row["charge_id"] == with_key.ledger.records()[0]["charge_id"]
    assert with_key.running_at_end == (True, True), (
        "a commit refused after a lost assignment must be logged, not crash the consumer")


