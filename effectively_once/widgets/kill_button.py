"""A one-shot button: pressed, it runs its action once, shows the report, and greys out.

Rendering only: what a press does (a SIGKILL, in notebook 04) is the callable it is
given. Once the action has happened, by this button or by another route (a cell
that sends the same SIGKILL), :meth:`KillButton.used` greys it out with the
report, so a button that can no longer do what it says cannot be pressed.
:func:`consumer_kill_button` makes the one a payment lab offers for a consumer process.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Protocol

import ipywidgets as w

from effectively_once.widgets.placeholder import RunToShow


class KillButton(RunToShow, w.VBox):
    """A red button labelled ``label``; a press calls ``on_press()`` once and shows what it returns."""

    placeholder = ("Run this cell to show the SIGKILL button: it needs this notebook's running kernel "
                   "and the consumer it started.")

    def __init__(self, label: str, on_press: Callable[[], object]) -> None:
        self._on_press = on_press
        self.button = w.Button(description=label, button_style="danger", layout=w.Layout(width="auto"))
        self.report = w.HTML()
        self.button.on_click(lambda _button: self.press())
        super().__init__([self.button, self.report])
        self.add_class("eo-kill-button")

    @property
    def spent(self) -> bool:
        """True once the action happened (pressed here, or reported through :meth:`used`)."""
        return bool(self.button.disabled)

    def press(self) -> None:
        """What a click does: run the action once and show its report (or why it could not run)."""
        if self.spent:
            return
        self.button.disabled = True
        try:
            outcome = str(self._on_press())
        except Exception as exc:  # shown under the button: the learner sees why, the kernel carries on
            outcome = str(exc)
        self.used(outcome)

    def used(self, report: str, label: str = "SIGKILL sent") -> None:
        """Grey the button out under ``label`` and show ``report``: one press is all it has."""
        self.button.disabled = True
        self.button.button_style = ""
        self.button.description = label
        self.report.value = f"<pre style='margin:4px 0;white-space:pre-wrap'>{html.escape(report)}</pre>"


class Killable(Protocol):
    """What the button needs to know of the process it kills (a payment lab's consumer)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...


def consumer_kill_button(consumer: Killable, kill: Callable[[], object]) -> KillButton:
    """A button labelled with ``consumer``'s pid that calls ``kill()`` once, when pressed.

    A consumer that was killed already (its ``kill_report`` set) gets a button greyed out
    with that report; one that has exited, a button greyed out that says so.
    """
    button = KillButton(f"SIGKILL pid {consumer.pid}", kill)
    earlier = getattr(consumer, "kill_report", None)
    if earlier is not None:
        button.used(str(earlier))
    elif not consumer.running:
        button.used(f"The consumer pid {consumer.pid} already exited with status {consumer.returncode}: "
                    "start another with lab.start_consumer(pause_at=...) for a new button.", label="no consumer")
    return button
