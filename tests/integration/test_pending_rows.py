"""The 'pending' row: PostgreSQL's row and advisory locks, a killed lock holder, and the stuck-pending sweeper."""

from __future__ import annotations

import pytest

from effectively_once.payments.pending import KEY_MIN_LIFETIME_SECONDS, RowLockLab


@pytest.fixture
def lab(stack):
    with RowLockLab(stack) as lab:
        yield lab


def test_a_row_lock_keeps_the_second_worker_out_until_the_first_commits(lab):
    story = lab.run_story()
    assert story.outcomes_of("B") == ["refused: could not obtain lock", "no row: someone is on it",
                                      "no pending row: it is done, skip"], story.timeline
    assert story.row.records() == [{"msg_id": "msg-locked", "status": "done", "charge_id": "ch_A"}]


def test_a_killed_holder_releases_its_lock_and_leaves_the_row_pending(lab):
    story = lab.holder_killed()
    assert story.outcomes_of("A") == ["locked the pending row", "exit status -9"], story.timeline
    assert story.outcomes_of("B")[-1] == "locked the pending row: A's session is gone", story.timeline
    assert story.row.records()[0]["status"] == "pending"


def test_an_advisory_lock_excludes_by_msg_id(lab):
    story = lab.advisory()
    assert [s[3] for s in story.steps] == ["granted", "refused: A holds it", "released", "granted"]


def test_the_sweeper_finds_only_rows_older_than_the_key(lab):
    lab.add_pending("fresh", age_seconds=10)
    lab.add_pending("old", age_seconds=KEY_MIN_LIFETIME_SECONDS + 60)
    assert lab.stuck().column("msg_id") == ["old"]
    assert lab.stuck(older_than_seconds=5).column("msg_id") == ["old", "fresh"]


def test_a_unique_business_key_refuses_a_second_message_for_one_order(stack):
    from effectively_once.payments.pending import one_charge_per_order

    outcomes = [row[3] for row in one_charge_per_order(stack).rows]
    assert outcomes[0].startswith("inserted") and outcomes[1].startswith("nothing inserted"), outcomes
