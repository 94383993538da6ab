"""The message-loss widget at its defaults tells notebook 02's story: each checkbox changes the counters.

Notebook 02 says the idempotent producer removes the duplicates its own retries create (the
broker drops the retried copy) but not those of a redelivery, and that the consumer's dedup log
removes the rest. Within the ten messages the widget animates, that is only visible at some
seeds: this test ticks the boxes as a learner does, in all four combinations, and holds the
defaults to it.
"""

from __future__ import annotations

import pytest

from effectively_once.widgets.message_loss import DEFAULTS, MessageLossWidget


def _final_counters(idempotent_producer: bool, consumer_dedup: bool) -> dict[str, int]:
    widget = MessageLossWidget()
    widget.idempotent_producer.value = idempotent_producer
    widget.consumer_dedup.value = consumer_dedup
    assert widget.step == 0, "a change of control starts the run again at step 0"
    widget.run_to_end()
    return widget.counters


@pytest.fixture(scope="module")
def ticked() -> dict[str, dict[str, int]]:
    return {"neither": _final_counters(False, False), "idempotent producer": _final_counters(True, False),
            "consumer dedup": _final_counters(False, True), "both": _final_counters(True, True)}


def test_the_widget_opens_at_step_0_with_its_defaults():
    widget = MessageLossWidget()
    assert widget.step == 0 and widget.animation.step == 0 and not widget.animation.playing
    assert (widget.message_loss.value, widget.ack_loss.value, widget.retries.value, widget.seed.value) == (
        DEFAULTS.message_loss, DEFAULTS.ack_loss, DEFAULTS.retries, DEFAULTS.seed)
    assert widget.counters["network sends"] == 0 and widget.counters["messages"] == 0


def test_neither_box_duplicates_from_both_causes(ticked):
    neither = ticked["neither"]
    assert neither["messages lost"] == 0, "at-least-once with three retries lost none of the ten"
    assert neither["copies stored"] > neither["messages"], "a lost ack made a retry store a second copy"
    assert neither["consumer commits lost"] > 0, "a lost commit redelivered a copy"
    assert neither["messages duplicated"] > 0 and neither["dedup skips"] == 0


def test_the_idempotent_producer_alone_removes_some_duplicates_not_all(ticked):
    neither, producer = ticked["neither"], ticked["idempotent producer"]
    assert producer["retries dropped by broker"] > 0, "the broker dropped retried copies"
    assert producer["copies stored"] == producer["messages"] < neither["copies stored"], "one copy per message"
    assert 0 < producer["messages duplicated"] < neither["messages duplicated"], \
        "fewer duplicates, and the redelivered ones remain"
    assert producer["side effects"] < neither["side effects"]
    assert producer["dedup skips"] == 0


def test_the_dedup_log_removes_the_rest(ticked):
    producer, both, dedup = ticked["idempotent producer"], ticked["both"], ticked["consumer dedup"]
    assert both["dedup skips"] > 0, "with both boxes ticked, the dedup log still has work to do"
    assert both["messages duplicated"] == 0 and both["messages lost"] == 0
    assert both["side effects"] == both["messages"], "each message's side effect ran once"
    assert both["side effects"] < producer["side effects"]
    assert dedup["messages duplicated"] == 0 and dedup["dedup skips"] > both["dedup skips"], \
        "without the idempotent producer the dedup log skips more: the retried copies too"


def test_checkbox_outcomes_are_what_ticking_the_boxes_gives(ticked):
    widget = MessageLossWidget()
    widget.step = 5
    assert widget.checkbox_outcomes() == ticked
    assert widget.step == 5 and not widget.idempotent_producer.value, "checkbox_outcomes leaves the widget as it is"


def test_its_saved_output_says_how_to_get_the_widget():
    bundle = MessageLossWidget()._repr_mimebundle_()
    assert bundle["text/plain"].startswith("Run this cell"), bundle["text/plain"]
    assert "MessageLossWidget(" not in bundle["text/plain"]
