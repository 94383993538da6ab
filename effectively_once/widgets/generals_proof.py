"""A stepper through the Two Generals proof, with a message sequence diagram of each run.

Rendering only: the runs, views and the argument come from
:mod:`effectively_once.theory.generals`.
"""

from __future__ import annotations

from html import escape

import ipywidgets as w

from effectively_once.theory.generals import ATTACK, ProofStep, Run, proof_steps
from effectively_once.widgets.placeholder import RunToShow
from effectively_once.widgets.svgtext import text_width

_COLOURS = {ATTACK: "#c0392b", "retreat": "#2471a3"}


def run_svg(run: Run, decisions: tuple[str, str] | None = None, *, title: str | None = None,
            subtitle: str | None = None, width: int = 360) -> str:
    """An SVG sequence diagram of ``run``: lanes for A and B, arrows for messages, a cross where one is captured.

    ``decisions`` (A's, B's), when given, are written under each lane; ``title`` and
    ``subtitle`` above the diagram, one line each. No label crosses a
    line: a message's label sits above its arrow, a captured message's label above its
    cross, and the order is written above the lanes.
    """
    row = 40
    top = 96
    height = top + row * max(run.n_messages, 1) + 50
    xa, xb = 70, width - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             '<defs><marker id="eo-g-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker></defs>']
    if title:
        size = 12 if text_width(title, 12, bold=True) <= width - 8 else 11     # a long rule's name still fits
        parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="bold" '
                     f'font-size="{size}">{escape(title)}</text>')
    if subtitle:
        parts.append(f'<text x="{width / 2}" y="34" text-anchor="middle" font-size="11">{escape(subtitle)}</text>')
    parts.append(f'<text x="{width / 2}" y="56" text-anchor="middle" fill="#555">order: {run.order}</text>')
    for x, name in ((xa, "General A"), (xb, "General B")):
        parts.append(f'<text x="{x}" y="76" text-anchor="middle" font-weight="bold">{name}</text>')
        parts.append(f'<line x1="{x}" y1="82" x2="{x}" y2="{height - 36}" stroke="#999" stroke-dasharray="4 3"/>')
    for k, frm, _to, arrived in run.messages():
        y1 = top + row * (k - 1) + 8
        y2 = y1 + row - 14
        x1, x2 = (xa, xb) if frm == "A" else (xb, xa)
        if arrived:
            parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#333" stroke-width="1.5" '
                         f'marker-end="url(#eo-g-arrow)"/>')
            # above the arrow's middle, clear of it: the line falls by (y2 - y1) / 2 over half the width
            parts.append(f'<text x="{width / 2}" y="{(y1 + y2) / 2 - 8}" text-anchor="middle" fill="#555" '
                         f'font-size="11">msg {k}</text>')
        else:
            xm, ym = (x1 + x2) / 2, (y1 + y2) / 2
            parts.append(f'<line x1="{x1}" y1="{y1}" x2="{xm}" y2="{ym}" stroke="#aaa" stroke-width="1.5" '
                         f'stroke-dasharray="3 2"/>')
            parts.append(f'<text x="{xm}" y="{ym + 6}" text-anchor="middle" fill="#c0392b" font-size="18" '
                         f'font-weight="bold">&#x2717;</text>')
            # above the cross, clear of the dashed line that falls towards it
            parts.append(f'<text x="{xm}" y="{ym - 14}" text-anchor="middle" fill="#555" '
                         f'font-size="11">msg {k} captured</text>')
    if decisions:
        for x, decision in zip((xa, xb), decisions, strict=True):
            colour = _COLOURS.get(decision, "#333")
            parts.append(f'<text x="{x}" y="{height - 16}" text-anchor="middle" fill="{colour}" '
                         f'font-weight="bold">{escape(decision)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def step_html(step: ProofStep, index: int, total: int) -> str:
    """The diagram and the explanation of one proof step, as HTML."""
    svg = run_svg(step.run, (step.forced, step.forced), title=f"Step {index + 1} of {total}",
                  subtitle=step.run.describe())
    return (f'<div style="display:flex;gap:16px;align-items:flex-start">{svg}'
            f'<div style="max-width:340px;font-family:sans-serif;font-size:13px;padding-top:30px">'
            f'<p><b>Forced decision:</b> both {step.forced}.</p><p>{escape(step.reason)}.</p></div></div>')


class GeneralsProofWidget(RunToShow, w.VBox):
    """Previous/next through :func:`proof_steps`; set ``.step`` from Python to move it."""

    placeholder = "Run this cell to step through the proof: it needs this notebook's running kernel."

    def __init__(self, n_messages: int = 4) -> None:
        self.steps = proof_steps(n_messages)
        self._previous = w.Button(description="previous run", icon="arrow-left")
        self._next = w.Button(description="next run", icon="arrow-right")
        # The slider counts steps from 1, as the title does ("Step 1 of 6"); ``step`` is the 0-based index.
        self._slider = w.IntSlider(value=1, min=1, max=len(self.steps), description="step",
                                   continuous_update=True)
        self.view = w.HTML()
        self._previous.on_click(lambda _b: self._move(-1))
        self._next.on_click(lambda _b: self._move(+1))
        self._slider.observe(lambda _c: self._render(), names="value")
        super().__init__([w.HBox([self._previous, self._next, self._slider]), self.view])
        self._render()

    @property
    def step(self) -> int:
        """The index of the proof step shown, from 0 (the slider and the title count from 1)."""
        return int(self._slider.value) - 1

    @step.setter
    def step(self, value: int) -> None:
        self._slider.value = max(0, min(int(value), len(self.steps) - 1)) + 1

    @property
    def current(self) -> ProofStep:
        """The proof step shown."""
        return self.steps[self.step]

    def _move(self, delta: int) -> None:
        self.step = self.step + delta

    def _render(self) -> None:
        self._previous.disabled = self.step == 0
        self._next.disabled = self.step == len(self.steps) - 1
        self.view.value = step_html(self.current, self.step, len(self.steps))
