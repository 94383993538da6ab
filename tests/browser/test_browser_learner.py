"""The learner's path in a real browser: what a learner does must never break a cell, and nothing on the page
shows what they have not done yet. JupyterLab in headless Chromium, at a 1400 x 900 window.

- 07: answer both quizzes (and an open question), then run the rest of the notebook: no error;
- lab 04: solve it with an ``import uuid`` at the top of the cell, Run All: both checks pass;
- 04: opened as stored, the button cell says how to get the button (no ``VBox(children=...`` repr) and no
  cell shows a kill; after Run All the button is greyed out, showing the kill the cell below made;
- 02: after Run All the widget is at step 0, its controls and counters are on screen together, and
  ticking the checkboxes gives the counters the lesson describes, different for each setting;
- 02: two views of one widget play at its speed, not twice as fast;
- 02: with ``prefers-reduced-motion`` no token glides: each step appears at once.

Uses the JupyterLab and Chromium fixtures of ``test_browser.py`` (skipped where Chromium is missing).
"""

from __future__ import annotations

import contextlib
import textwrap
import time
import urllib.parse

import pytest

from effectively_once.widgets.message_loss import MessageLossWidget
from tests.browser.test_browser import (  # noqa: F401  (fixtures, used by name)
    ARTIFACTS,
    CELL_INDEX,
    PANEL,
    TOKEN_TRACK,
    _api,
    _clear,
    _command,
    _open,
    _run,
    _saved_and_clean,
    _shutdown_session,
    browser,
    chromium,
    jupyterlab,
)
from tests.unit.test_plugged_step import SOLVED_WITH_AN_IMPORT

WINDOW = {"width": 1400, "height": 900}


@contextlib.contextmanager
def _page(browser, jupyterlab: dict, path: str, *, clear: bool = True, reduced_motion: bool = False):  # noqa: F811
    """``path`` open in a 1400 x 900 page (cleared unless ``clear=False``); a screenshot on failure."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=WINDOW, reduced_motion="reduce" if reduced_motion else "no-preference")
    name = path.replace("/", "_").removesuffix(".ipynb")
    try:
        _open(page, jupyterlab, path)
        if clear:
            _clear(page, path)
        yield page
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"browser_learner_{name}_failure.png"))
        raise
    finally:
        page.close()
        _shutdown_session(jupyterlab, path)


def _index(page, path: str, needle: str) -> int:
    index = page.evaluate(CELL_INDEX, [path, needle])
    assert index >= 0, f"{path} has no cell with {needle!r}"
    return index


SET_SOURCE = f"""([path, index, text]) => {{
    ({PANEL})(path).content.model.cells.get(index).sharedModel.setSource(text);
    return true;
}}"""


def _set_source(page, path: str, needle: str, text: str) -> None:
    page.evaluate(SET_SOURCE, [path, _index(page, path, needle), text])


def _saved_text(server: dict, path: str) -> str:
    saved = _api(server["base"], server["token"], f"/api/contents/{urllib.parse.quote(path)}?content=1")
    parts = []
    for cell in saved["content"]["cells"]:
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain") or ""
            parts.append(text if isinstance(text, str) else "".join(text))
    return "\n".join(parts)


# -- 07: the quiz, answered -----------------------------------------------------------------
@pytest.mark.timeout(300)
def test_a_learner_answers_the_quiz_of_07_and_runs_the_rest_without_error(browser, jupyterlab):  # noqa: F811
    path = "notebooks/07_review.ipynb"
    with _page(browser, jupyterlab, path) as page:
        check = _index(page, path, "probe = MultipleChoiceWidget(question)")
        _run(page, path, "notebook:run-all-above", range(check), 120, index=check)
        # As the notebook asks: pick an answer, press "Check my answer"; write an answer and compare.
        for group in range(2):
            page.locator(".widget-radio-box").nth(group).locator("input[type='radio']").nth(1).check()
        for button in page.locator("button", has_text="Check my answer").all():
            button.click()
        page.locator(".widget-textarea textarea").first.fill("The consumer keeps a dedup log of msg_ids.")
        page.locator("button", has_text="Compare with a model answer").first.click()
        page.get_by_text("Model answer.").first.wait_for(timeout=20_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.widget-html-content')]"
            ".filter(e => /^(Right\\.|Not quite\\.)/.test(e.innerText.trim())).length >= 2", timeout=20_000)
        _run(page, path, "notebook:run-all-below", None, 120, index=check)
        _saved_and_clean(page, jupyterlab, path)
        page.screenshot(path=str(ARTIFACTS / "browser_learner_07_answered.png"))


# -- lab 04, solved with an import at the top of the cell -----------------------------------------
ABSORBERS_ANSWER = textwrap.dedent('''\
    def which_layer_absorbs():
        """Crash point -> "dedup", "idempotency_key" or "nothing needed", with both layers on."""
        return {"before_dedup_insert": "nothing needed", "after_dedup_insert": "nothing needed",
                "after_provider_call": "idempotency_key", "after_status_update": "dedup"}
    ''')


@pytest.mark.timeout(600)
def test_lab_04_solved_with_an_import_at_the_top_of_the_cell_passes(browser, jupyterlab, stack):  # noqa: F811
    path = "labs/04_kill_the_consumer.ipynb"
    with _page(browser, jupyterlab, path) as page:
        _set_source(page, path, "def charge_once(ctx, msg):", SOLVED_WITH_AN_IMPORT.strip() + "\n")
        _set_source(page, path, "def which_layer_absorbs():", ABSORBERS_ANSWER)
        # Before any check fails, no hint is on the page: they live in the package, not in the check cells.
        hints = page.locator(".jp-Cell", has_text="the second call must carry the same Idempotency-Key")
        assert hints.count() == 0, "lab 04 shows a hint before its check failed"
        _run(page, path, "notebook:run-all-cells", None, 540)
        _saved_and_clean(page, jupyterlab, path)
        text = _saved_text(jupyterlab, path)
        assert "Exercise 1 passed" in text and "Exercise 2 passed" in text, text[-2000:]
        assert "NameError" not in text


# -- 04: the kill button, before and after -------------------------------------------------
BUTTON_CELL_TEXT = f"""([path, needle]) => {{
    const panel = ({PANEL})(path);
    const cells = panel.content.widgets;
    const i = cells.findIndex(c => c.model.sharedModel.getSource().includes(needle));
    // The outputs themselves, without the prompt ("[9]:") beside them.
    const text = cell => [...cell.node.querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText).join(' ');
    return {{button: text(cells[i]), below: text(cells[i + 1])}};
}}"""


@pytest.mark.timeout(480)
def test_04_shows_no_saved_kill_and_its_button_greys_out_once_used(browser, jupyterlab, stack):  # noqa: F811
    path = "notebooks/04_kill_the_consumer.ipynb"
    with _page(browser, jupyterlab, path, clear=False) as page:
        page.locator(".jp-Cell", has_text="lab.kill_button(consumer)").first.scroll_into_view_if_needed()
        stored = page.evaluate(BUTTON_CELL_TEXT, [path, "lab.kill_button(consumer)"])
        page.screenshot(path=str(ARTIFACTS / "browser_learner_04_as_stored.png"))
        assert stored["button"].strip().startswith("Run this cell to show the SIGKILL button"), stored
        assert "VBox(" not in stored["button"] and "Button(" not in stored["button"], stored
        assert stored["below"].strip() == "", f"the cell below the button shows a stored run: {stored['below']}"
        assert page.get_by_text("SIGKILL sent").count() == 0, "the page shows a kill nobody has made"

        _clear(page, path)
        _run(page, path, "notebook:run-all-cells", None, 420)
        button = page.locator(".eo-kill-button button").first
        button.scroll_into_view_if_needed()
        assert button.is_disabled(), "after Run All the consumer is dead: its button must not offer a kill"
        assert button.inner_text().strip() == "SIGKILL sent"
        report = page.locator(".eo-kill-button").first.inner_text()
        assert "by lab.kill_consumer()" in report, report
        page.screenshot(path=str(ARTIFACTS / "browser_learner_04_after_run_all.png"))
        _saved_and_clean(page, jupyterlab, path)


# -- 02: the widget ----------------------------------------------------------------------------
READ_COUNTERS = """(index) => {
    const widget = document.querySelectorAll('.eo-message-loss-widget')[index];
    const out = {};
    for (const td of widget.querySelectorAll('.eo-counter')) out[td.dataset.name] = +td.textContent;
    out.status = widget.querySelector('.eo-status').textContent;
    return out;
}"""

# Where the controls and the counters are in the window once the widget's top is scrolled to the top.
LAYOUT = """() => {
    const widget = document.querySelector('.eo-message-loss-widget');
    widget.scrollIntoView({block: 'start'});
    const box = e => { const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom}; };
    const controls = [...widget.querySelectorAll('.widget-slider, .widget-checkbox, .widget-text')].map(box);
    return {controls, counters: box(widget.querySelector('.eo-counters')), height: window.innerHeight};
}"""


def _run_02(page, path: str = "notebooks/02_message_loss.ipynb") -> None:
    _run(page, path, "notebook:run-all-cells", None, 180)
    page.locator(".eo-message-loss-widget .eo-counter").first.wait_for(timeout=60_000)


def _wait_for_counters(page, expected: dict[str, int], timeout: float = 30_000) -> None:
    page.wait_for_function(f"""(want) => {{
        const got = ({READ_COUNTERS})(0);
        return Object.entries(want).every(([k, v]) => got[k] === v);
    }}""", arg=expected, timeout=timeout)


@pytest.mark.timeout(300)
def test_02_opens_at_step_0_fits_the_window_and_each_checkbox_changes_the_counters(browser, jupyterlab):  # noqa: F811
    path = "notebooks/02_message_loss.ipynb"
    reference = MessageLossWidget()
    with _page(browser, jupyterlab, path) as page:
        _run_02(page, path)
        opened = page.evaluate(READ_COUNTERS, 0)
        assert opened["status"] == f"step 0 of {len(reference.events)}", opened
        assert opened["network sends"] == 0 and opened["messages"] == 0, opened

        layout = page.evaluate(LAYOUT)
        page.screenshot(path=str(ARTIFACTS / "browser_learner_02_controls_and_counters.png"))
        assert len(layout["controls"]) >= 6, layout
        lowest = max([c["bottom"] for c in layout["controls"]] + [layout["counters"]["bottom"]])
        highest = min([c["top"] for c in layout["controls"]] + [layout["counters"]["top"]])
        assert highest >= 0 and lowest <= layout["height"], (
            f"controls and counters span {highest:.0f}..{lowest:.0f} px of a {layout['height']} px window")

        widget = page.locator(".eo-message-loss-widget").first
        expected = reference.checkbox_outcomes()
        seen = {}
        for ticked, (producer, dedup) in (("neither", (False, False)), ("idempotent producer", (True, False)),
                                          ("both", (True, True)), ("consumer dedup", (False, True))):
            for label, on in (("idempotent producer", producer), ("consumer dedup", dedup)):
                box = widget.locator(".widget-checkbox", has_text=label).locator("input[type='checkbox']")
                box.set_checked(on)
            page.wait_for_timeout(500)  # the kernel rebuilds the run and sends it back
            widget.locator("button.eo-end").click()
            _wait_for_counters(page, expected[ticked])
            seen[ticked] = page.evaluate(READ_COUNTERS, 0)
        neither, producer, both = seen["neither"], seen["idempotent producer"], seen["both"]
        assert producer["retries dropped by broker"] > 0 == neither["retries dropped by broker"]
        assert 0 < producer["messages duplicated"] < neither["messages duplicated"], (neither, producer)
        assert both["dedup skips"] > 0 and both["messages duplicated"] == 0, both
        assert seen["consumer dedup"]["messages duplicated"] == 0 < seen["consumer dedup"]["dedup skips"]
        assert len({tuple(sorted((k, v) for k, v in s.items() if k != "status")) for s in seen.values()}) == 4


def _play(page, widget) -> None:
    """Press play on ``widget`` and wait until it has taken its first step."""
    widget.locator("button.eo-play").click()
    page.wait_for_function(
        "() => +document.querySelector('.eo-message-loss-widget .eo-status').textContent.split(' ')[1] >= 1",
        timeout=20_000)


PLAYED_STEPS = """async ([ms]) => {
    const status = () => [...document.querySelectorAll('.eo-message-loss-widget .eo-status')]
        .map(e => +e.textContent.split(' ')[1]);
    const before = status();
    const t0 = performance.now();
    await new Promise(r => setTimeout(r, ms));
    return {before, after: status(), seconds: (performance.now() - t0) / 1000};
}"""


@pytest.mark.timeout(300)
def test_02_two_views_of_the_widget_play_at_its_speed(browser, jupyterlab):  # noqa: F811
    path = "notebooks/02_message_loss.ipynb"
    with _page(browser, jupyterlab, path) as page:
        _run_02(page, path)
        # A second view of the same widget: the learner shows it again in a new cell.
        last = page.evaluate(f"(path) => ({PANEL})(path).content.model.cells.length", path) - 1
        _command(page, path, "notebook:insert-cell-below", last)
        page.evaluate(SET_SOURCE, [path, last + 1, "widget"])
        _run(page, path, "notebook:run-cell", range(last + 1, last + 2), 60, index=last + 1)
        page.wait_for_function("() => document.querySelectorAll('.eo-message-loss-widget').length === 2",
                               timeout=30_000)
        speed_ms = MessageLossWidget().animation.speed_ms
        first = page.locator(".eo-message-loss-widget").first
        first.scroll_into_view_if_needed()
        _play(page, first)
        played = page.evaluate(PLAYED_STEPS, [4000])
        first.locator("button.eo-play").click()  # pause
        steps = played["after"][0] - played["before"][0]
        at_speed = played["seconds"] * 1000 / speed_ms
        assert steps >= 0.4 * at_speed, f"it hardly played: {steps} steps in {played['seconds']:.1f} s"
        assert steps <= 1.25 * at_speed + 1, (
            f"{steps} steps in {played['seconds']:.1f} s at {speed_ms} ms a step: two views, two clocks")
        page.wait_for_timeout(500)
        final = page.evaluate(READ_COUNTERS, 0)["status"], page.evaluate(READ_COUNTERS, 1)["status"]
        assert final[0] == final[1], f"the two views show different steps: {final}"


@pytest.mark.timeout(300)
def test_02_with_reduced_motion_no_token_glides(browser, jupyterlab):  # noqa: F811
    path = "notebooks/02_message_loss.ipynb"
    with _page(browser, jupyterlab, path, reduced_motion=True) as page:
        assert page.evaluate("() => matchMedia('(prefers-reduced-motion: reduce)').matches")
        _run_02(page, path)
        widget = page.locator(".eo-message-loss-widget").first
        widget.scroll_into_view_if_needed()
        _play(page, widget)
        track = page.evaluate(TOKEN_TRACK)
        start = page.evaluate(READ_COUNTERS, 0)["status"]
        time.sleep(1.5)
        later = page.evaluate(READ_COUNTERS, 0)["status"]
        widget.locator("button.eo-play").click()
        assert all(xy is None for xy in track), f"a token glided under reduced motion: {track}"
        assert later != start, "with reduced motion it still plays, one step at a time"
        assert page.locator(".eo-message-loss-widget svg.eo-message-loss line").count() > 0, "the rows are drawn"
