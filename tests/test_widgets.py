"""The widgets driven from Python, without a browser: stepping updates state and counters deterministically."""

from __future__ import annotations

import re

from effectively_once.theory import channel, generals
from effectively_once.widgets.generals import GeneralsProofWidget, run_svg
from effectively_once.widgets.message_loss import MessageLossWidget, counters, plot_summary


def test_stepping_is_deterministic_and_counters_move():
    a = MessageLossWidget(seed=11)
    b = MessageLossWidget(seed=11)
    assert a.counters["network sends"] == 0
    for k in (1, 7, 23):
        a.step = k
        b.step = k
        assert a.counters == b.counters
        assert a.diagram.value == b.diagram.value
    assert a.counters["network sends"] >= 1
    assert re.search(r'data-name="network sends">(\d+)<', a.counter_view.value).group(1) == \
        str(a.counters["network sends"])


def test_final_counters_equal_the_simulation_totals():
    for dedup, idem in ((False, False), (False, True), (True, True)):
        wdg = MessageLossWidget(seed=5, message_loss=0.3, ack_loss=0.3, retries=3,
                                idempotent_producer=idem, consumer_dedup=dedup)
        wdg.run_to_end()
        totals = channel.simulate(wdg.draws, wdg.semantics)
        c = wdg.counters
        assert (c["messages lost"], c["messages duplicated"], c["copies stored"], c["dedup skips"]) == \
            (totals.lost, totals.duplicated, totals.stored_copies, totals.dedup_hits)
        assert wdg.finished and "Out of 1000 messages" in wdg.summary_view.value


def test_controls_rebuild_the_run_and_name_the_semantic():
    wdg = MessageLossWidget(seed=2)
    wdg.step = 10
    wdg.retries.value = 0
    assert wdg.step == 0 and wdg.semantics.name == "at-most-once"
    wdg.retries.value = 4
    wdg.idempotent_producer.value = True
    wdg.consumer_dedup.value = True
    assert wdg.semantics.name == "effectively-once"
    wdg.run_to_end()
    assert wdg.counters["messages duplicated"] == 0


def test_step_is_clamped_and_step_button_advances():
    wdg = MessageLossWidget(seed=1)
    wdg.step = 10_000
    assert wdg.step == len(wdg.events)
    wdg.step = 3
    wdg.step_button.click()
    assert wdg.step == 4
    wdg.speed.value = 900
    assert wdg.play.interval == 900


def test_lost_messages_are_drawn_with_a_cross():
    wdg = MessageLossWidget(seed=0, message_loss=0.9, ack_loss=0.0, retries=0)
    first_lost = next(i for i, e in enumerate(wdg.events) if e.kind == "lost")
    wdg.step = first_lost + 1
    assert "&#x2717;" in wdg.diagram.value and "lost in the network" in wdg.diagram.value


def test_counters_mark_a_message_lost_only_when_its_log_is_over():
    draws = channel.draw(3, 1.0, 0.0, max_retries=1, seed=0)
    events = list(channel.iter_events(draws, channel.AT_LEAST_ONCE.with_retries(1)))
    assert counters(events[:2], 3)["messages lost"] == 0      # send, lost: the retry is still to come
    assert counters(events, 3)["messages lost"] == 3


def test_frame_png_is_written(tmp_path):
    wdg = MessageLossWidget(seed=3)
    wdg.step = 30
    path = wdg.save_frame(tmp_path / "frame.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_summary_plot_has_a_bar_per_semantic():
    import matplotlib
    matplotlib.use("Agg")
    totals = channel.compare(channel.draw(500, 0.2, 0.2, seed=0))
    ax = plot_summary(totals)
    assert len(ax.patches) == 2 * len(totals)


def test_generals_stepper_walks_the_proof():
    wdg = GeneralsProofWidget(4)
    assert wdg.step == 0 and wdg._previous.disabled
    wdg._next.click()
    assert wdg.current.run.delivered == 3 and "msg 4 captured" in wdg.view.value
    wdg.step = 99
    assert wdg.current.run.order == generals.RETREAT and wdg._next.disabled


def test_run_svg_crosses_out_the_captured_message():
    svg = run_svg(generals.Run(generals.ATTACK, 2, 4), ("attack", "retreat"))
    assert svg.count("&#x2717;") == 1 and "msg 3 captured" in svg and "retreat" in svg
