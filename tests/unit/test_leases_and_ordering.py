"""Leases and ordering without a broker: the ordered consumer's loop, parking a key, and the zombie's refusals."""

from __future__ import annotations

import pytest

from effectively_once.payments.ordering import (
    APPLIED,
    DEAD_LETTERED,
    PARKED,
    Event,
    FlakyHandler,
    HandlerFailed,
    OrderedConsumer,
    story,
)


# -- the consumer loop's logic, no broker ---------------------------------------------------------
def run_loop(park_keys: bool, events: list[Event]) -> tuple[list[str], list[tuple[str, str]], OrderedConsumer]:
    handler = FlakyHandler(("capture",))
    dead: list[tuple[Event, str]] = []
    loop = OrderedConsumer(handler, lambda event, reason: dead.append((event, reason)), park_keys=park_keys)
    for event in events:
        loop.process(event)
    first_pass = list(dead)
    dead.clear()
    loop.redrive(e for e, _ in first_pass)
    assert not dead, "the redrive must not dead-letter again: the handler fails capture only once"
    return [e.kind for e in handler.applied], [(e.kind, r) for e, r in first_pass], loop


def test_a_redrive_without_parking_applies_the_capture_after_the_refund():
    applied, dead, loop = run_loop(False, story())
    assert applied == ["authorize", "refund", "capture"]
    assert [kind for kind, _ in dead] == ["capture"]
    assert [o[3] for o in loop.outcomes] == [APPLIED, DEAD_LETTERED, APPLIED, APPLIED]


def test_parking_the_key_keeps_its_messages_in_order_through_the_redrive():
    applied, dead, loop = run_loop(True, story())
    assert applied == ["authorize", "capture", "refund"]
    assert [kind for kind, _ in dead] == ["capture", "refund"]
    assert "parked" in dead[1][1]
    assert [o[3] for o in loop.outcomes] == [APPLIED, DEAD_LETTERED, PARKED, APPLIED, APPLIED]
    assert not loop.parked, "the redrive unparks the key"


def test_parking_holds_back_only_the_key_that_failed():
    mixed = [*story("cus_001"), *story("cus_002", ("authorize", "refund"))]
    mixed = [mixed[0], mixed[3], mixed[1], mixed[4], mixed[2]]  # interleaved, each key in its order
    applied, dead, _ = run_loop(True, mixed)
    assert [kind for kind, _ in dead] == ["capture", "refund"]
    assert applied == ["authorize", "authorize", "refund", "capture", "refund"]


def test_a_message_that_fails_again_at_the_redrive_parks_its_key_again():
    handler = FlakyHandler(())
    calls = {"n": 0}

    def always_fails_capture(event: Event) -> None:
        if event.kind == "capture":
            calls["n"] += 1
            raise HandlerFailed("still down")
        handler(event)

    dead: list[Event] = []
    loop = OrderedConsumer(always_fails_capture, lambda e, r: dead.append(e), park_keys=True)
    for event in story():
        loop.process(event)
    first = list(dead)
    dead.clear()
    assert loop.redrive(first) == [DEAD_LETTERED, PARKED]
    assert [e.kind for e in dead] == ["capture", "refund"] and calls["n"] == 2
    assert [e.kind for e in handler.applied] == ["authorize"]


def test_an_event_survives_its_record_value():
    event = story()[1]
    assert Event.from_json(event.to_json()) == event
    assert event.key == "cus_042" and event.kind == "capture"


def test_run_zombie_refuses_a_stall_too_short_for_a_takeover():
    from effectively_once.payments.zombie import run_zombie

    with pytest.raises(ValueError, match="stall_seconds"):
        run_zombie(None, stall_seconds=3, max_poll_interval_ms=2000)  # type: ignore[arg-type]
