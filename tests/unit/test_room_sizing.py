"""The room's arithmetic and its typed records, without services: sizes, refusals, run records, idleness."""

from __future__ import annotations

import pytest

from effectively_once import protocol
from effectively_once.connections import (
    DEMO_CONNECTIONS,
    LEARNER_CONNECTION_LIMIT,
    PROVIDER_CONNECTIONS,
    ConnectionLimitReached,
    limit_reached,
    raise_if_limit,
    role_of,
)
from effectively_once.payments.clocks import IdleClock
from effectively_once.run_results import RunRecord
from effectively_once.stack.room import (
    INSTRUCTOR_CONNECTIONS,
    ROOM_STEP,
    SUPERUSER_RESERVED,
    Room,
    read_room,
    write_room,
)


def test_the_room_is_sized_in_steps_for_every_learners_limit():
    assert Room(learners=0).sized_for == ROOM_STEP, "an empty room is sized for one step"
    assert Room(learners=30).sized_for == 30 and Room(learners=31).sized_for == 40
    assert Room(learners=3, planned=30).sized_for == 30, "up --secure --learners N sizes before the learners come"
    assert Room(learners=30).max_connections == 30 * LEARNER_CONNECTION_LIMIT + INSTRUCTOR_CONNECTIONS + \
        SUPERUSER_RESERVED
    assert DEMO_CONNECTIONS <= LEARNER_CONNECTION_LIMIT and 2 * PROVIDER_CONNECTIONS < LEARNER_CONNECTION_LIMIT


def test_the_room_is_recorded_and_read_back(tmp_path):
    assert read_room(tmp_path) == Room()
    write_room(tmp_path, Room(learners=5, planned=30))
    assert read_room(tmp_path) == Room(learners=5, planned=30)
    assert read_room(tmp_path).with_learners(4) == Room(learners=4, planned=30)


@pytest.mark.parametrize("message, role, server_full", [
    ('connection to server at "127.0.0.1", port 5432 failed: FATAL:  too many connections for role "learner07"',
     "learner07", False),
    ("FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute", "learner02", True),
    ("FATAL:  sorry, too many clients already", "learner02", True),
])
def test_a_refusal_over_a_limit_becomes_one_sentence(message, role, server_full):
    reached = limit_reached(RuntimeError(message), "postgresql://learner02:pw@127.0.0.1:5432/postgres")
    assert isinstance(reached, ConnectionLimitReached) and reached.role == role
    text = str(reached)
    assert text.count(". ") == 0 and text.endswith("."), "one sentence"
    if server_full:
        assert "max_connections" in text and "workshop add-learners" in text
    else:
        assert f"the role {role} has all of its PostgreSQL connections in use (its CONNECTION LIMIT)" in text
    assert reached._render_traceback_() == [text], "a notebook shows the sentence, not a traceback"


def test_other_errors_are_not_taken_for_a_limit():
    assert limit_reached(RuntimeError('password authentication failed for user "learner02"')) is None
    assert role_of("postgresql://learner%2001:pw@host/db") == "learner 01"
    assert role_of(None) is None


def test_the_parent_reads_the_childs_sentence_from_its_announce_line():
    sentence = "the role learner02 has all 40 of its PostgreSQL connections in use (its CONNECTION LIMIT): fix."
    log = "starting\n" + protocol.connection_limit(sentence) + "\nTraceback (most recent call last):\n"
    with pytest.raises(ConnectionLimitReached) as raised:
        raise_if_limit(log)
    assert str(raised.value) == sentence
    raise_if_limit("provider listening on http://127.0.0.1:1\n")  # no line: nothing raised


def test_a_run_record_round_trips_and_summarises():
    record = RunRecord("demo", 1.0, 12.5, ok=True, crash_at="after_provider_call", layers=("dedup",), messages=10,
                       charges=10)
    assert RunRecord.from_json(record.to_json()) == record
    assert RunRecord.from_json(b'{"command": "demo", "finished_at": 1, "seconds": 2, "ok": false, "new": 1}').ok \
        is False, "a field it does not know is left out"
    assert record.summary() == "demo crash at after_provider_call, 10 messages: every message charged exactly once"
    failed = RunRecord("demo", 1.0, 3.0, ok=False, error="the role learner02 has all 40 ...")
    assert failed.summary().startswith("demo failed after 3 s: the role learner02")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_silence_before_the_end_of_every_partition_is_not_idle():
    now = FakeClock()
    clock = IdleClock(1.0, grace=3.0, clock=now)
    clock.reset()
    for _ in range(20):  # a slow first fetch on a busy machine: 20 s and the broker has not answered
        now.now += 1.0
        assert not clock.tick(assigned=True, records=0, at_end=False)
    now.now += 0.5
    assert not clock.tick(assigned=True, records=0, at_end=True), "the end was just reported"
    now.now += 1.0
    assert clock.tick(assigned=True, records=0, at_end=True), "read to the end and quiet for the limit: idle"


def test_a_broker_that_never_reports_the_end_still_lets_the_consumer_go():
    from effectively_once.payments.clocks import END_WAIT

    now = FakeClock()
    clock = IdleClock(1.0, grace=3.0, clock=now)
    clock.reset()
    now.now += END_WAIT - 0.1
    assert not clock.tick(assigned=True, records=0, at_end=False)
    now.now += 1.2
    assert not clock.tick(assigned=True, records=0, at_end=False)
    now.now += 3.0
    assert clock.tick(assigned=True, records=0, at_end=False)
