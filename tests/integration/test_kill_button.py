"""Notebook 04's kill button works once: a press sends one SIGKILL, and once the consumer is dead (by the
button or by ``lab.kill_consumer``) the button greys out with the report instead of offering a kill it can
no longer make. Stored in a notebook, it says how to get it, not ``VBox(children=(Button(...``."""

from __future__ import annotations

from effectively_once.payments.lab import PaymentLab
from effectively_once.stack.processes import pid_alive


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
