"""The widgets driven from Python, without a browser: stepping updates state and counters deterministically,
and every label of their SVGs lies inside the picture, clear of the lines."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET

import pytest

from effectively_once.theory import channel, generals
from effectively_once.widgets.generals_proof import GeneralsProofWidget, run_svg, step_html
from effectively_once.widgets.message_loss import (
    LANE_X,
    SUMMARY_BAR_X,
    MessageLossAnimation,
    MessageLossWidget,
    counters,
    event_drawing,
    plot_summary,
    summary_svg,
)
from effectively_once.widgets.svgtext import text_width

NS = "{http://www.w3.org/2000/svg}"


def _texts(svg: str) -> tuple[ET.Element, list[tuple[str, float, float, float, float]]]:
    """Every <text> of ``svg`` with its estimated box (left, top, right, bottom)."""
    root = ET.fromstring(svg)
    default = float(root.get("font-size", 12))
    out = []
    for node in root.iter(f"{NS}text"):
        content = "".join(node.itertext())
        size = float(node.get("font-size", default))
        width = text_width(content, size, bold=node.get("font-weight") == "bold")
        x, y = float(node.get("x")), float(node.get("y"))
        left = {"middle": x - width / 2, "end": x - width}.get(node.get("text-anchor", "start"), x)
        out.append((content, left, y - 0.8 * size, left + width, y + 0.25 * size))
    return root, out


def _view_box(root: ET.Element) -> tuple[float, float]:
    _x, _y, width, height = (float(v) for v in root.get("viewBox").split())
    return width, height


def _segments(root: ET.Element) -> list[tuple[float, float, float, float]]:
    return [tuple(float(line.get(k)) for k in ("x1", "y1", "x2", "y2")) for line in root.iter(f"{NS}line")]


def _crosses(box, segment, pad: float = 1.0) -> bool:
    _t, left, top, right, bottom = box
    x1, y1, x2, y2 = segment
    for i in range(201):
        x, y = x1 + (x2 - x1) * i / 200, y1 + (y2 - y1) * i / 200
        if left - pad <= x <= right + pad and top - pad <= y <= bottom + pad:
            return True
    return False


def _overlap(a, b) -> bool:
    return a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]


def test_stepping_is_deterministic_and_counters_move():
    a = MessageLossWidget(seed=11)
    b = MessageLossWidget(seed=11)
    assert a.counters["network sends"] == 0
    for k in (1, 7, 23):
        a.step = k
        b.step = k
        assert a.counters == b.counters
        assert a.frame_svg() == b.frame_svg()
        assert a.counters == counters(a.events[:k], a.animated_messages)
    assert a.counters["network sends"] >= 1


def test_the_front_end_gets_every_event_drawing_and_every_frame():
    wdg = MessageLossWidget(seed=4)
    anim = wdg.animation
    assert isinstance(anim, MessageLossAnimation) and anim._esm.strip().startswith("//")
    assert len(anim.events) == len(wdg.events) and len(anim.frames) == len(wdg.events) + 1
    assert anim.frames[-1] == counters(wdg.events, wdg.animated_messages)
    assert {"x1", "x2", "token", "lost", "label", "colour"} <= set(anim.events[0])
    assert "Out of 1000 messages" in anim.summary and wdg.summary_svg == anim.summary
    wdg.step = 5
    assert anim.step == 5
    wdg.play()
    assert anim.playing
    wdg.run_to_end()
    assert not anim.playing and wdg.finished


def test_final_counters_equal_the_simulation_totals():
    for dedup, idem in ((False, False), (False, True), (True, True)):
        wdg = MessageLossWidget(seed=5, message_loss=0.3, ack_loss=0.3, retries=3,
                                idempotent_producer=idem, consumer_dedup=dedup)
        wdg.run_to_end()
        totals = channel.simulate(wdg.draws, wdg.semantics)
        c = wdg.counters
        assert (c["messages lost"], c["messages duplicated"], c["copies stored"], c["dedup skips"]) == \
            (totals.lost, totals.duplicated, totals.stored_copies, totals.dedup_hits)
        assert wdg.finished


def test_lost_acks_are_counted_apart_from_lost_commits():
    wdg = MessageLossWidget(seed=3, message_loss=0.0, ack_loss=0.5, retries=4)
    wdg.run_to_end()
    kinds = [e.kind for e in wdg.events]
    assert wdg.counters["producer acks lost"] == kinds.count("ack_lost") > 0
    assert wdg.counters["consumer commits lost"] == kinds.count("commit_lost") > 0
    assert "acks lost" not in wdg.counters


def test_a_lost_commit_goes_from_the_consumer_towards_the_broker():
    wdg = MessageLossWidget(seed=3, message_loss=0.0, ack_loss=0.5, retries=4)
    lost = next(e for e in wdg.events if e.kind == "commit_lost")
    assert (lost.src, lost.dst) == ("consumer", "broker")
    d = event_drawing(lost)
    assert d.lost and d.token == "commit" and LANE_X["broker"] < d.x2 < LANE_X["consumer"] == d.x1
    ack = event_drawing(next(e for e in wdg.events if e.kind == "ack_lost"))
    assert ack.lost and ack.token == "ack" and (ack.x1, ack.x2) == (LANE_X["broker"], LANE_X["network"])


def test_controls_rebuild_the_run_and_name_the_semantic():
    wdg = MessageLossWidget(seed=2)
    wdg.step = 10
    wdg.retries.value = 0
    assert wdg.step == 0 and wdg.semantics.name == "at-most-once"
    assert wdg.animation.semantics == "at-most-once"
    wdg.retries.value = 4
    wdg.idempotent_producer.value = True
    wdg.consumer_dedup.value = True
    assert wdg.semantics.name == "effectively-once"
    wdg.run_to_end()
    assert wdg.counters["messages duplicated"] == 0


def test_step_is_clamped_and_speed_reaches_the_front_end():
    wdg = MessageLossWidget(seed=1)
    wdg.step = 10_000
    assert wdg.step == len(wdg.events)
    wdg.step = 3
    wdg.step_forward()
    assert wdg.step == 4
    wdg.speed.value = 900
    assert wdg.animation.speed_ms == 900


def test_the_static_frame_stands_in_for_the_widget_once():
    wdg = MessageLossWidget(seed=7, preview_step=40)
    bundle = wdg._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["image/svg+xml"] == wdg.frame_svg(40) and "step 40 of" in bundle["image/svg+xml"]
    ET.fromstring(bundle["image/svg+xml"])      # well-formed, so GitHub and nbviewer can draw it


def test_lost_messages_are_drawn_with_a_cross():
    wdg = MessageLossWidget(seed=0, message_loss=0.9, ack_loss=0.0, retries=0)
    first_lost = next(i for i, e in enumerate(wdg.events) if e.kind == "lost")
    svg = wdg.frame_svg(first_lost + 1)
    assert "&#x2717;" in svg and "lost in the network" in svg


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


LOSSES = (0.0, 0.05, 0.2, 0.5, 0.9)


@pytest.mark.parametrize("message_loss,ack_loss", list(itertools.product(LOSSES, LOSSES)))
def test_every_summary_label_lies_inside_the_chart(message_loss, ack_loss):
    for retries in (1, 3, 10):
        draws = channel.draw(1000, message_loss, ack_loss, max_retries=retries, seed=0)
        svg = summary_svg(channel.compare(draws, retries=retries))
        root, texts = _texts(svg)
        width, height = _view_box(root)
        values = [t for t in texts if re.fullmatch(r"\d+ (lost|duplicated)", t[0])]
        assert len(values) == 8
        for box in texts:
            text, left, top, right, bottom = box
            assert 0 <= left and right <= width and 0 <= top and bottom <= height, \
                f"{text!r} spans x {left:.0f}..{right:.0f} in a {width:.0f} px chart ({message_loss}/{ack_loss})"
        for box in texts:
            if box not in values and box[2] > 20:     # a semantic's name ends before the bars begin
                assert box[3] < SUMMARY_BAR_X, f"{box[0]!r} runs into the bars"


def test_the_longest_bar_keeps_its_label_at_the_defaults():
    # the case that used to clip: "337 duplicated" drawn at x=514 of 520
    svg = summary_svg(channel.compare(channel.draw(1000, 0.2, 0.2, max_retries=3, seed=0), retries=3))
    root, texts = _texts(svg)
    width, _ = _view_box(root)
    longest = max((t for t in texts if re.fullmatch(r"\d+ duplicated", t[0])), key=lambda t: t[1])
    assert longest[3] <= width


@pytest.mark.parametrize("message_loss,ack_loss", [(0.2, 0.2), (0.5, 0.4), (0.9, 0.9), (0.0, 0.9)])
def test_every_diagram_label_lies_inside_the_frame(message_loss, ack_loss):
    for retries, idem, dedup in ((0, False, False), (3, False, False), (10, True, False), (10, True, True)):
        wdg = MessageLossWidget(seed=1, message_loss=message_loss, ack_loss=ack_loss, retries=retries,
                                idempotent_producer=idem, consumer_dedup=dedup)
        for step in range(0, len(wdg.events) + 1, 3):
            root, texts = _texts(wdg.frame_svg(step))
            width, height = _view_box(root)
            for text, left, top, right, bottom in texts:
                assert 0 <= left and right <= width and 0 <= top and bottom <= height, \
                    f"{text!r} spans x {left:.0f}..{right:.0f} in a {width:.0f} px frame"


def test_generals_stepper_walks_the_proof():
    wdg = GeneralsProofWidget(4)
    assert wdg.step == 0 and wdg._previous.disabled
    assert (wdg._slider.min, wdg._slider.value, wdg._slider.max) == (1, 1, len(wdg.steps))
    assert f"Step 1 of {len(wdg.steps)}" in wdg.view.value
    wdg._next.click()
    assert wdg.current.run.delivered == 3 and "msg 4 captured" in wdg.view.value
    assert wdg._slider.value == 2 and f"Step 2 of {len(wdg.steps)}" in wdg.view.value
    wdg.step = 99
    assert wdg.current.run.order == generals.RETREAT and wdg._next.disabled
    assert wdg._slider.value == wdg._slider.max and f"Step {wdg._slider.max} of" in wdg.view.value


def test_run_svg_crosses_out_the_captured_message():
    svg = run_svg(generals.Run(generals.ATTACK, 2, 4), ("attack", "retreat"))
    assert svg.count("&#x2717;") == 1 and "msg 3 captured" in svg and "retreat" in svg


def _assert_labels_clear(svg: str, where: str) -> None:
    root, texts = _texts(svg)
    width, height = _view_box(root)
    lines = _segments(root)
    for box in texts:
        assert 0 <= box[1] and box[3] <= width and 0 <= box[2] and box[4] <= height, \
            f"{box[0]!r} leaves the picture ({where})"
        if box[0] != "\u2717":      # the cross marks the end of its line on purpose
            hit = [seg for seg in lines if _crosses(box, seg)]
            assert not hit, f"{box[0]!r} overlaps a line ({where}): {hit}"
    for a, b in itertools.combinations(texts, 2):
        assert not _overlap(a, b), f"{a[0]!r} overlaps {b[0]!r} ({where})"


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_generals_labels_clear_the_lines_and_each_other(n):
    steps = generals.proof_steps(n)
    for index, step in enumerate(steps):
        html = step_html(step, index, len(steps))
        _assert_labels_clear(html[html.index("<svg"):html.index("</svg>") + 6], f"step {index + 1} of n={n}")


def test_the_failing_rules_are_drawn_without_overlaps():
    # notebook 01 draws each first-try rule's counterexample in a 300 px diagram titled with the rule
    for rule in generals.first_try_rules(4):
        v = generals.find_violation(rule, 4)
        _assert_labels_clear(run_svg(v.run, (v.decision_a, v.decision_b), title=v.rule, width=300), v.rule)
    _assert_labels_clear(run_svg(generals.Run(generals.ATTACK, 3, 4)), "the first run")
