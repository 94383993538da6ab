"""Notebook 04's kill button works once: a press sends one SIGKILL, and once the consumer is dead (by the
button or by ``lab.kill_consumer``) the button greys out with the report instead of offering a kill it can
no longer make. Stored in a notebook, it says how to get it, not ``VBox(children=(Button(...``."""

from __future__ import annotations

import pytest

from effectively_once.payments.lab import PaymentLab
from effectively_once.stack.processes import pid_alive
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


@pytest.mark.integration
def test_the_lab_greys_out_the_button_of_a_consumer_it_killed(stack):
    lab = PaymentLab(stack, "both", run_id="kb", partitions=1)
    try:
        lab.start_provider()
        lab.produce(1, seed=1)
        # Killed by the cell below the button (Run All): the button greys out with that report.
        first = lab.start_consumer(pause_at="after_provider_call")
        first.wait_until_paused(timeout=60)
        button = lab.kill_button(first)
        assert not button.spent and button.button.description == f"SIGKILL pid {first.pid}"
        report = lab.kill_consumer(first)
        assert not pid_alive(first.pid)
        assert button.spent and "by lab.kill_consumer()" in button.report.value
        assert f"pid {first.pid}" in button.report.value
        button.press()  # what a click after Run All does: nothing more
        assert lab.kill_consumer(first) is report
        # Pressed by the learner: the SIGKILL lands, and the cell below reports the learner's kill.
        second = lab.start_consumer(pause_at="after_provider_call")
        second.wait_until_paused(timeout=60)
        pressed = lab.kill_button(second)
        pressed.press()
        assert not pid_alive(second.pid) and second.killed_by_sigkill
        assert pressed.spent and "by you (the button)" in pressed.report.value
        assert lab.kill_consumer(second).by == "you (the button)"
        # A button made for a consumer that is already dead starts greyed out.
        again = lab.kill_button(second)
        assert again.spent and "by you (the button)" in again.report.value
    finally:
        lab.stop()
