"""Event lines (protocol.ProcessEvent): each one a process writes reads back as it was written."""

from __future__ import annotations

import json
from itertools import zip_longest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from effectively_once import protocol
from effectively_once.protocol import EVENT_FIELDS, EventKind, ProcessEvent, event, parse_events

# Field values as JSON carries them: what an event may hold.
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                     max_leaves=8)


@st.composite
def _events(draw) -> ProcessEvent:
    kind = draw(st.sampled_from(list(EventKind)))
    return ProcessEvent(kind, {name: draw(_json) for name in EVENT_FIELDS[kind]})


@given(_events())
def test_every_event_reads_back_as_it_was_written(written):
    line = written.format()
    assert "\n" not in line and line.startswith(protocol.EVENT_PREFIX)
    assert ProcessEvent.parse(line) == written
    assert parse_events(line + "\n") == [written]


@given(st.lists(_events(), max_size=6), st.lists(st.text().filter(lambda t: protocol.EVENT_PREFIX not in t)))
def test_events_are_found_among_the_human_lines_in_order(written, prose):
    # The human sentences around each event, as a consumer's log has them.
    log = "\n".join(part for pair in zip_longest(prose, [e.format() for e in written], fillvalue="") for part in pair)
    assert parse_events(log) == written


def test_an_event_kind_is_its_plain_string():
    """A learner, a notebook or a JSON reader compares a kind with the string it sees in the log."""
    assert EventKind.REVOKED == "revoked" and str(EventKind.REVOKED) == "revoked" and f"{EventKind.PAUSED}" == "paused"
    line = event(EventKind.REVOKED, partitions=[0, 2]).format()
    assert json.loads(line.removeprefix(protocol.EVENT_PREFIX)) == {"kind": "revoked", "partitions": [0, 2]}
    assert ProcessEvent("revoked", {"partitions": [1]}).kind is EventKind.REVOKED
    assert parse_events(line, "revoked") == parse_events(line, EventKind.REVOKED) != []
    assert parse_events(line, EventKind.STARTED) == []


def test_every_kind_declares_its_fields():
    assert set(EVENT_FIELDS) == set(EventKind)


def test_a_writer_and_a_reader_that_disagree_on_the_fields_fail_at_once():
    with pytest.raises(ValueError, match="a paused event has the fields point, msg_id, not point"):
        event(EventKind.PAUSED, point="after_provider_call")
    with pytest.raises(ValueError, match="unknown event kind 'rebooted'"):
        ProcessEvent("rebooted", {})
    with pytest.raises(ValueError, match="a revoked event has the fields partitions"):
        ProcessEvent.parse(protocol.EVENT_PREFIX + '{"kind": "revoked", "partition": 0}')


def test_a_broken_event_line_is_an_error_unless_the_process_is_still_writing_it():
    whole = event(EventKind.STARTED, topic="t", group="g", layers=["dedup"], step="m:f").format()
    half = whole[: len(whole) // 2]
    assert parse_events(f"consumer started\n{whole}\n{half}") == [ProcessEvent.parse(whole)]
    with pytest.raises(ValueError, match="not JSON"):
        parse_events(f"{half}\n{whole}\n")
    with pytest.raises(ValueError, match="without a kind"):
        parse_events(protocol.EVENT_PREFIX + '{"topic": "t"}\n')
    with pytest.raises(ValueError, match="no EO-EVENT prefix"):
        ProcessEvent.parse("consumer started: topic t")


def test_a_line_that_only_mentions_the_prefix_is_not_an_event():
    assert parse_events(f"consumer error: saw {protocol.EVENT_PREFIX}in a payload\n") == []
