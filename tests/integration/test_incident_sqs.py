"""The SQS visibility-timeout model on the real PostgreSQL: duplicates without a fix, none with either fix."""

from __future__ import annotations

import json
import time

import pytest

from effectively_once import stack as stack_mod
from effectively_once.incidents import sqs_visibility as sqs


@pytest.fixture
def queue_dsn(stack):
    name = f"sqs_unit_{stack_mod.new_run_id()}"
    dsn = stack.create_database(name)
    with sqs.SqsQueue(dsn) as queue:
        queue.create_schema()
    yield dsn
    stack.drop_database(name)


def test_queue_hides_a_received_message_and_a_stale_handle_deletes_nothing(queue_dsn):
    with sqs.SqsQueue(queue_dsn) as a, sqs.SqsQueue(queue_dsn) as b:
        mid = a.send("hello")
        (first,) = a.receive(visibility_timeout=0.2)
        assert (first.id, first.body, first.receive_count) == (mid, "hello", 1)
        assert b.receive(visibility_timeout=0.2) == [], "a received message must be hidden"
        time.sleep(0.3)
        (second,) = b.receive(visibility_timeout=5)
        assert second.id == mid and second.receive_count == 2
        assert second.receipt_handle != first.receipt_handle
        assert not a.change_visibility(first.receipt_handle, 0), "a stale handle must not change visibility"
        assert not a.delete(first.receipt_handle), "a stale handle must delete nothing"
        assert a.depth() == 1
        assert b.change_visibility(second.receipt_handle, 10)
        assert b.delete(second.receipt_handle)
        assert a.depth() == 0


def test_concurrent_receivers_never_get_the_same_message(queue_dsn):
    with sqs.SqsQueue(queue_dsn) as a, sqs.SqsQueue(queue_dsn) as b:
        for n in range(6):
            a.send(json.dumps({"n": n}))
        a.conn.execute("BEGIN")
        a.conn.execute("SELECT id FROM sqs_messages ORDER BY id LIMIT 2 FOR UPDATE")
        # b skips the two rows a holds locked instead of waiting for them
        got_b = b.receive(visibility_timeout=5, max_messages=6)
        a.conn.execute("COMMIT")
        got_a = a.receive(visibility_timeout=5, max_messages=6)
        assert len(got_b) == 4 and len(got_a) == 2
        assert not {m.id for m in got_a} & {m.id for m in got_b}


def test_max_receives_stops_handing_a_message_out(queue_dsn):
    with sqs.SqsQueue(queue_dsn, max_receives=2) as queue:
        queue.send("x")
        assert queue.receive(0) and queue.receive(0)
        assert queue.receive(0) == []
        assert queue.depth() == 1


def test_without_a_fix_slow_side_effects_run_twice(stack):
    result = sqs.replay(stack, fix=None, messages=30, visibility_timeout=0.3, seed=3)
    print(result.summary())
    assert result.side_effect_duration_p99 > result.visibility_timeout
    assert result.outcome == result.expected_outcome
    assert result.stale_deletes > 0, "the first worker's delete must have found its handle stale"
    slow = {mid for mid, d in result.durations.items() if d > result.visibility_timeout}
    assert set(result.duplicated_messages) <= slow, "only messages slower than the timeout may repeat"
    assert not result.lost and result.left_in_queue == 0
    assert result.elapsed_seconds < 10
    assert "duplicate" in result._repr_html_()
    fig = result.plot()
    assert fig.axes[0].get_lines()[0].get_ydata()[0] == pytest.approx(0.3)


@pytest.mark.parametrize("fix", ["extend_visibility", "dedup"])
def test_each_fix_leaves_no_duplicates(stack, fix):
    result = sqs.replay(stack, fix=fix, messages=30, visibility_timeout=0.3, seed=3)
    print(result.summary())
    assert result.side_effect_duration_p99 > result.visibility_timeout, "the fix must not work by being faster"
    assert result.outcome == result.expected_outcome
    assert not result.lost and result.left_in_queue == 0
    assert len(result.side_effects) == result.messages
    if fix == "extend_visibility":
        assert result.redeliveries == 0 and result.visibility_extensions > 0
    else:
        assert result.absorbed_by_dedup == result.redeliveries > 0


def test_delete_race_brings_a_deleted_message_back(stack):
    racy = sqs.replay_delete_race(stack, atomic=False)
    assert racy.delete_returned and racy.outcome == racy.expected_outcome and racy.duplicates == 1, racy
    atomic = sqs.replay_delete_race(stack, atomic=True)
    assert atomic.delete_returned and atomic.outcome == atomic.expected_outcome and atomic.duplicates == 0, atomic


def test_replay_drops_its_database(stack):
    import psycopg

    sqs.replay(stack, fix="extend_visibility", messages=5)
    with psycopg.connect(stack.postgres_dsn("postgres")) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (stack.database("sqs_%"),)).fetchall()
    assert left == []
