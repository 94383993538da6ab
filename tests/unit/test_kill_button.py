"""Notebook 04's kill button works once: a press sends one SIGKILL, and once the consumer is dead (by the
button or by ``lab.kill_consumer``) the button greys out with the report instead of offering a kill it can
no longer make. Stored in a notebook, it says how to get it, not ``VBox(children=(Button(...``."""

from __future__ import annotations

from effectively_once.widgets.kill_button import KillButton


def test_a_press_runs_the_action_once_and_greys_the_button_out():
    calls = []
    button = KillButton("SIGKILL pid 1", lambda: calls.append("kill") or "SIGKILL sent to consumer pid 1")
    assert not button.spent and button.button.button_style == "danger" and not button.button.disabled
    button.press()
    button.press()                       # a second click on a disabled button does nothing
    assert calls == ["kill"]
    assert button.spent and button.button.disabled and button.button.button_style == ""
    assert button.button.description == "SIGKILL sent"
    assert "SIGKILL sent to consumer pid 1" in button.report.value


def test_a_failed_action_is_shown_under_the_button():
    def refuse():
        raise RuntimeError("The consumer pid 1 already exited with status 0")

    button = KillButton("SIGKILL pid 1", refuse)
    button.press()
    assert button.spent and "already exited with status 0" in button.report.value


def test_its_saved_output_says_how_to_get_the_button():
    bundle = KillButton("SIGKILL pid 1", lambda: "")._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("Run this cell to show the SIGKILL button"), bundle["text/plain"]
    assert "VBox" not in bundle["text/plain"] and "pid" not in bundle["text/plain"]
