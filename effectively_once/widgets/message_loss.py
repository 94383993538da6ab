"""The animated message-loss widget: a lossy channel, one event at a time.

Rendering only. The model, its random draws and every event come from
:mod:`effectively_once.theory.channel`. This module turns each event into a
drawing (:func:`event_drawing`: where its arrow starts, where it ends or
vanishes, its colour and label), and :class:`MessageLossAnimation`, an
anywidget, sends those drawings to the browser. There ``message_loss.js``
moves each message, ack and commit along the lanes with
``requestAnimationFrame`` and advances the steps on its own clock: playing
needs no kernel round trip per frame.

From Python, setting ``widget.step`` moves the animation deterministically;
the counters follow, which is how the tests drive it without a browser. The
same drawings give a static SVG frame, which the widget's output carries for
readers without a widget front end (GitHub, nbviewer).

The defaults (``DEFAULTS``) are a case where each checkbox changes the counters
the way notebook 02 says: ticking *idempotent producer* drops the retried copies
at the broker but leaves duplicated side effects from redeliveries; ticking
*consumer dedup* too skips those (``checkbox_outcomes`` shows all four, and a
unit test holds the defaults to it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

import anywidget
import ipywidgets as w
import traitlets

from effectively_once.theory import channel
from effectively_once.theory.channel import Event, Semantics
from effectively_once.widgets.placeholder import RunToShow
from effectively_once.widgets.svgtext import text_width

LANES = ("producer", "network", "broker", "consumer")
LANE_X = {"producer": 60, "network": 220, "broker": 380, "consumer": 540}
LABEL_X = 566
WIDTH = 880
ROW = 22
TOP = 56
VISIBLE_ROWS = 16


@dataclass(frozen=True)
class StartingValues:
    """The values the widget's controls start at."""

    message_loss: float
    ack_loss: float
    retries: int
    seed: int


# A seed at which, within the ten animated messages, the idempotent producer removes some duplicates
# but not all, and the dedup log the rest (see checkbox_outcomes; a unit test holds the defaults to it).
DEFAULTS = StartingValues(message_loss=0.2, ack_loss=0.2, retries=3, seed=3)

COLOURS = {"normal": "#2471a3", "retry": "#e67e22", "duplicate": "#c0392b", "lost": "#7f8c8d",
           "ack": "#27ae60", "dedup": "#8e44ad", "cross": "#c0392b"}

LABELS = {
    "send": "send", "lost": "lost in the network", "stored": "stored by the broker",
    "dropped_duplicate": "broker drops the retry: same sequence",
    "ack": "ack", "ack_lost": "ack lost in the network", "timeout": "no ack: time out, retry",
    "give_up": "no ack: out of retries, give up", "deliver": "deliver", "process": "side effect runs",
    "dedup_skip": "dedup log: seen before, skip", "commit": "commit offset",
    "commit_lost": "commit lost: will be redelivered",
}

COUNTER_NAMES = ("messages", "network sends", "lost in network", "producer acks lost", "consumer commits lost",
                 "copies stored", "retries dropped by broker", "deliveries", "side effects", "dedup skips",
                 "messages lost", "messages duplicated")

# What travels on an arrow: a message (round token) or an acknowledgement (square token).
_TOKENS = {"send": "message", "stored": "message", "dropped_duplicate": "message", "deliver": "message",
           "ack": "ack", "ack_lost": "ack", "commit": "commit", "commit_lost": "commit"}
_LOST = ("lost", "ack_lost", "commit_lost", "give_up")

def event_colour(event: Event) -> str:
    """The colour an event is drawn in: retries orange, duplicates red, losses grey."""
    if event.kind in _LOST:
        return COLOURS["lost"]
    if event.kind == "dedup_skip" or event.kind == "dropped_duplicate":
        return COLOURS["dedup"]
    if event.duplicate:
        return COLOURS["duplicate"]
    if event.retry:
        return COLOURS["retry"]
    if event.kind in ("ack", "commit"):
        return COLOURS["ack"]
    return COLOURS["normal"]


def event_label(event: Event) -> str:
    """The text written next to an event's row."""
    label = f"m{event.message} {LABELS[event.kind]}"
    if event.copy >= 0 and event.kind in ("stored", "deliver", "process", "dedup_skip"):
        label += f" (copy {event.copy + 1})"
    if event.retry and event.kind in ("send", "deliver"):
        label += " (retry)" if event.kind == "send" else " (redelivery)"
    return label


@dataclass(frozen=True)
class Drawing:
    """How one event is drawn: from ``x1`` to ``x2`` on its row; ``lost`` ends it in a cross at ``x2``.

    ``token`` is what travels (message, ack, commit), or "" for an event that happens in one
    place (``glyph`` then marks it: a cross, a circle arrow for a timeout, a dot).
    """

    x1: float
    x2: float
    colour: str
    label: str
    token: str
    lost: bool
    dashed: bool
    glyph: str


def event_drawing(event: Event) -> Drawing:
    """The drawing of ``event``. A lost commit vanishes half way from the consumer to the broker."""
    x1, x2 = float(LANE_X[event.src]), float(LANE_X[event.dst])
    if event.kind == "commit_lost":
        x2 = (x1 + x2) / 2
    glyph = ""
    if x1 == x2:
        glyph = "cross" if event.kind in _LOST else ("cycle" if event.kind == "timeout" else "dot")
    return Drawing(x1=x1, x2=x2, colour=event_colour(event), label=event_label(event),
                   token=_TOKENS.get(event.kind, ""), lost=event.kind in _LOST,
                   dashed=_TOKENS.get(event.kind) in ("ack", "commit"), glyph=glyph)


def counters(events: list[Event], n_messages: int) -> dict[str, int]:
    """Live counters after ``events`` have happened (a message counts as lost once its log is over)."""
    kinds = Counter(e.kind for e in events)
    effects = Counter(e.message for e in events if e.kind == "process")
    started = {e.message for e in events}
    return {
        "messages": len(started),
        "network sends": kinds["send"],
        "lost in network": kinds["lost"],
        "producer acks lost": kinds["ack_lost"],
        "consumer commits lost": kinds["commit_lost"],
        "copies stored": kinds["stored"],
        "retries dropped by broker": kinds["dropped_duplicate"],
        "deliveries": kinds["deliver"],
        "side effects": kinds["process"],
        "dedup skips": kinds["dedup_skip"],
        "messages lost": sum(1 for m in _finished(events) if effects[m] == 0),
        "messages duplicated": sum(1 for c in effects.values() if c > 1),
    }


def _finished(events: list[Event]) -> set[int]:
    # A message's log is over once a later message has started, or it ended with its last event.
    if not events:
        return set()
    last = events[-1].message
    done = {e.message for e in events if e.message < last}
    if events[-1].kind in ("give_up", "commit"):
        # the last event of a message that stored nothing, or whose last copy committed
        done.add(last)
    return done


_GLYPHS = {"cross": "&#x2717;", "cycle": "&#x21bb;", "dot": "&#x25cf;"}


def _row_svg(d: Drawing, y: float) -> str:
    out = []
    if d.glyph:
        colour = COLOURS["cross"] if d.glyph == "cross" else d.colour
        out.append(f'<text x="{d.x1}" y="{y + 5}" text-anchor="middle" fill="{colour}" font-size="16" '
                   f'font-weight="bold">{_GLYPHS[d.glyph]}</text>')
    else:
        dashed = ' stroke-dasharray="5 3"' if d.dashed else ""
        arrow = "" if d.lost else ' marker-end="url(#eo-ml-arrow)"'
        out.append(f'<line x1="{d.x1}" y1="{y}" x2="{d.x2}" y2="{y}" stroke="{d.colour}" stroke-width="2"'
                   f'{dashed}{arrow}/>')
        if d.lost:
            out.append(f'<text x="{d.x2}" y="{y + 5}" text-anchor="middle" fill="{COLOURS["cross"]}" '
                       f'font-size="16" font-weight="bold">&#x2717;</text>')
    out.append(f'<text x="{LABEL_X}" y="{y + 4}" fill="{d.colour}" font-size="11">{escape(d.label)}</text>')
    return "".join(out)


def diagram_svg(events: list[Event], step: int, *, title: str = "") -> str:
    """The sequence diagram after ``step`` events, showing the latest rows: the static frame of the animation."""
    shown = events[:step][-VISIBLE_ROWS:]
    height = TOP + ROW * VISIBLE_ROWS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12" class="eo-message-loss">',
             '<defs><marker id="eo-ml-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
             'markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
             '</marker></defs>', f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    if title:
        parts.append(f'<text x="8" y="14" font-weight="bold">{escape(title)}</text>')
    for lane in LANES:
        x = LANE_X[lane]
        parts.append(f'<text x="{x}" y="34" text-anchor="middle" font-weight="bold">{lane}</text>')
        parts.append(f'<line x1="{x}" y1="40" x2="{x}" y2="{height - 4}" stroke="#bbb" stroke-dasharray="4 3"/>')
    for i, event in enumerate(shown):
        parts.append(_row_svg(event_drawing(event), TOP + ROW * i))
    parts.append("</svg>")
    return "".join(parts)


def counters_html(values: dict[str, int], semantics_name: str) -> str:
    """The counters as a small HTML table (the same markup the browser front end writes)."""
    rows = "".join(f'<tr><td style="padding:1px 8px">{escape(k)}</td>'
                   f'<td style="text-align:right;padding:1px 8px" class="eo-counter" '
                   f'data-name="{escape(k)}">{v}</td></tr>'
                   for k, v in values.items())
    return (f'<div style="font-family:sans-serif;font-size:12px"><b>{escape(semantics_name)}</b>'
            f'<table>{rows}</table></div>')


SUMMARY_FONT = 11
SUMMARY_NAME_X = 4
SUMMARY_BAR_X = 260


def summary_svg(totals: dict[str, channel.Totals], width: int = 560) -> str:
    """Horizontal bars of lost and duplicated messages for each semantic.

    Every bar is followed by its label ("12 lost", "337 duplicated"). The bars are scaled to
    the width left once the longest label has its column, so the longest bar's label still
    ends inside the SVG, whatever the loss rates.
    """
    names = list(totals)
    sent = next(iter(totals.values())).sent if totals else 0
    labels = {(n, kind): f"{value} {kind}" for n, t in totals.items()
              for kind, value in (("lost", t.lost), ("duplicated", t.duplicated))}
    label_column = max([text_width(label, SUMMARY_FONT) for label in labels.values()] + [0.0]) + 12
    worst = max([1] + [max(t.lost, t.duplicated) for t in totals.values()])
    bar_w = max(width - SUMMARY_BAR_X - label_column, 20.0)
    row = 34
    height = 30 + row * len(names)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="{SUMMARY_FONT}" '
             f'class="eo-summary"><rect width="{width}" height="{height}" fill="white"/>'
             f'<text x="{SUMMARY_NAME_X}" y="14" font-weight="bold">Out of {sent} messages, same losses for all: '
             f'<tspan fill="{COLOURS["lost"]}">lost</tspan>, <tspan fill="{COLOURS["duplicate"]}">duplicated'
             f'</tspan></text>']
    for i, name in enumerate(names):
        t = totals[name]
        y = 26 + row * i
        parts.append(f'<text x="{SUMMARY_NAME_X}" y="{y + 14}">{escape(name)}</text>')
        for j, (kind, value, colour) in enumerate((("lost", t.lost, COLOURS["lost"]),
                                                   ("duplicated", t.duplicated, COLOURS["duplicate"]))):
            length = bar_w * value / worst
            parts.append(f'<rect x="{SUMMARY_BAR_X}" y="{y + 2 + 13 * j}" width="{length:.1f}" height="11" '
                         f'fill="{colour}"/>')
            parts.append(f'<text x="{SUMMARY_BAR_X + 4 + length:.1f}" y="{y + 11 + 13 * j}" fill="{colour}">'
                         f'{escape(labels[name, kind])}</text>')
    parts.append("</svg>")
    return "".join(parts)


_ESM = Path(__file__).with_name("message_loss.js")


class MessageLossAnimation(anywidget.AnyWidget):
    """The browser half: lanes, travelling tokens, counters and the summary, played without the kernel.

    Python sends every event's drawing (``events``), the counters after each step
    (``frames``) and the summary chart; the front end animates them. ``step`` and
    ``playing`` are synced both ways.
    """

    _esm = _ESM
    events: traitlets.List[dict] = traitlets.List([]).tag(sync=True)
    frames: traitlets.List[dict] = traitlets.List([]).tag(sync=True)
    layout_info = traitlets.Dict({}).tag(sync=True)
    summary = traitlets.Unicode("").tag(sync=True)
    semantics = traitlets.Unicode("").tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)
    playing = traitlets.Bool(False).tag(sync=True)
    speed_ms = traitlets.Int(400).tag(sync=True)


CHECKBOX_SETTINGS = (("neither", False, False), ("idempotent producer", True, False),
                     ("consumer dedup", False, True), ("both", True, True))


def _semantics(retries: int, idempotent_producer: bool, consumer_dedup: bool) -> Semantics:
    return Semantics(channel.semantics_for(retries, idempotent_producer, consumer_dedup), retries,
                     idempotent_producer, consumer_dedup)


def _layout() -> dict:
    return {"lanes": [[lane, LANE_X[lane]] for lane in LANES], "label_x": LABEL_X, "width": WIDTH, "row": ROW,
            "top": TOP, "visible_rows": VISIBLE_ROWS, "colours": COLOURS}


class MessageLossWidget(RunToShow, w.VBox):
    """Producer -> network -> broker -> consumer, animated one event per step.

    Parameters are the starting values of the controls (by default ``DEFAULTS``).
    ``animated_messages`` messages are animated; the summary compares the four
    semantics on ``summary_messages`` messages drawn with the same seed and loss
    rates. ``preview_step`` is the step drawn in the static frame that readers
    without a widget front end see in the widget's place.
    """

    placeholder = "Run this cell to play the animation: it needs this notebook's running kernel."

    def __init__(self, *, message_loss: float = DEFAULTS.message_loss, ack_loss: float = DEFAULTS.ack_loss,
                 retries: int = DEFAULTS.retries, idempotent_producer: bool = False, consumer_dedup: bool = False,
                 seed: int = DEFAULTS.seed, speed_ms: int = 400, animated_messages: int = 10,
                 summary_messages: int = 1000, preview_step: int = 40) -> None:
        self.animated_messages = animated_messages
        self.summary_messages = summary_messages
        self.preview_step = preview_step
        style = {"description_width": "130px"}
        self.message_loss = w.FloatSlider(value=message_loss, min=0, max=0.9, step=0.05,
                                          description="message loss", style=style)
        self.ack_loss = w.FloatSlider(value=ack_loss, min=0, max=0.9, step=0.05, description="ack loss",
                                      style=style)
        self.retries = w.IntSlider(value=retries, min=0, max=10, description="retries", style=style)
        self.idempotent_producer = w.Checkbox(value=idempotent_producer, description="idempotent producer")
        self.consumer_dedup = w.Checkbox(value=consumer_dedup, description="consumer dedup")
        self.seed = w.IntText(value=seed, description="seed", style=style)
        self.speed = w.IntSlider(value=speed_ms, min=100, max=2000, step=50, description="ms per step",
                                 style=style)
        self.animation = MessageLossAnimation(speed_ms=speed_ms, layout_info=_layout())
        w.dlink((self.speed, "value"), (self.animation, "speed_ms"))
        for control in (self.message_loss, self.ack_loss, self.retries, self.idempotent_producer,
                        self.consumer_dedup, self.seed):
            control.observe(lambda _c: self._rebuild(), names="value")
        # Two columns of controls, so that they and the counters below fit one screen together.
        controls = w.HBox([w.VBox([self.message_loss, self.ack_loss, self.retries],
                                  layout=w.Layout(margin="0 16px 0 0")),
                           w.VBox([self.idempotent_producer, self.consumer_dedup, self.seed, self.speed])],
                          layout=w.Layout(flex_flow="row wrap"))
        super().__init__([controls, self.animation])
        self.add_class("eo-message-loss-widget")
        self._rebuild()

    # --- state, readable and settable from Python ---------------------------------------------

    @property
    def semantics(self) -> Semantics:
        """The semantic the controls describe."""
        return _semantics(int(self.retries.value), bool(self.idempotent_producer.value),
                          bool(self.consumer_dedup.value))

    def checkbox_outcomes(self) -> dict[str, dict[str, int]]:
        """The final counters for each setting of the two checkboxes, at the current sliders and seed.

        Keys are ``"neither"``, ``"idempotent producer"``, ``"consumer dedup"`` and ``"both"``. The
        widget itself is left as it is: same checkboxes, same step.
        """
        retries = int(self.retries.value)
        out = {}
        for label, idempotent, dedup in CHECKBOX_SETTINGS:
            events = list(channel.iter_events(self.draws, _semantics(retries, idempotent, dedup)))
            out[label] = counters(events, self.animated_messages)
        return out

    @property
    def step(self) -> int:
        """How many events have been played."""
        return int(self.animation.step)

    @step.setter
    def step(self, value: int) -> None:
        self.animation.step = max(0, min(int(value), len(self.events)))

    @property
    def finished(self) -> bool:
        """True once every event of the animated messages has been played."""
        return self.step >= len(self.events)

    @property
    def counters(self) -> dict[str, int]:
        """The live counters at the current step."""
        return dict(self.animation.frames[self.step])

    def step_forward(self) -> None:
        """One more event (the front end's "step" button does the same)."""
        self.step = self.step + 1

    def play(self) -> None:
        """Start playing in the browser from the current step (no effect without a front end)."""
        self.animation.playing = True

    def pause(self) -> None:
        """Stop playing."""
        self.animation.playing = False

    def run_to_end(self) -> None:
        """Jump to the last step (the summary appears)."""
        self.animation.playing = False
        self.step = len(self.events)

    # --- what is drawn ------------------------------------------------------------------------

    @property
    def summary_svg(self) -> str:
        """The summary chart of all four semantics, shown at the last step."""
        return self.animation.summary

    def frame_svg(self, step: int | None = None) -> str:
        """The static frame at ``step`` (default: the current one)."""
        step = self.step if step is None else max(0, min(int(step), len(self.events)))
        return diagram_svg(self.events, step, title=f"{self.semantics.name}: step {step} of {len(self.events)}")

    def _rebuild(self) -> None:
        retries = int(self.retries.value)
        self.draws = channel.draw(self.animated_messages, self.message_loss.value, self.ack_loss.value,
                                  max_retries=retries, seed=int(self.seed.value))
        self.events = list(channel.iter_events(self.draws, self.semantics))
        summary_draws = channel.draw(self.summary_messages, self.message_loss.value, self.ack_loss.value,
                                     max_retries=max(retries, 1), seed=int(self.seed.value))
        self.summary = channel.compare(summary_draws, retries=max(retries, 1))
        with self.animation.hold_sync():
            self.animation.playing = False
            self.animation.step = 0
            self.animation.events = [asdict(event_drawing(e)) for e in self.events]
            self.animation.frames = [counters(self.events[:k], self.animated_messages)
                                     for k in range(len(self.events) + 1)]
            self.animation.summary = summary_svg(self.summary)
            self.animation.semantics = self.semantics.name

    def _repr_mimebundle_(self, **kwargs):
        # The widget for a live front end; for readers without one (GitHub, nbviewer) a static
        # frame in its place, so the notebook shows the picture once.
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            step = min(self.preview_step, len(self.events))
            bundle["image/svg+xml"] = self.frame_svg(step)
        return bundle

    def save_frame(self, path: str | Path, dpi: int = 110) -> Path:
        """Save the current frame as a PNG."""
        return save_frame_png(self.events, self.step, self.counters, self.semantics.name, path, dpi=dpi)


def save_frame_png(events: list[Event], step: int, values: dict[str, int], semantics_name: str,
                   path: str | Path, dpi: int = 110) -> Path:
    """Draw one frame of the animation with matplotlib: the same lanes, arrows and counters."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    shown = events[:step][-VISIBLE_ROWS:]
    fig, (ax, side) = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [3.6, 1]})
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(VISIBLE_ROWS + 0.5, -1.2)
    ax.axis("off")
    for lane in LANES:
        x = LANE_X[lane]
        ax.text(x, -0.8, lane, ha="center", fontweight="bold")
        ax.plot([x, x], [-0.4, VISIBLE_ROWS + 0.4], color="#bbb", linestyle=(0, (4, 3)), linewidth=1)
    for i, e in enumerate(shown):
        d = event_drawing(e)
        if d.glyph:
            marker = {"cross": "x", "dot": "o", "cycle": "$\u21bb$"}[d.glyph]
            ax.plot([d.x1], [i], marker=marker, color=COLOURS["cross"] if d.glyph == "cross" else d.colour,
                    markersize=9, markeredgewidth=2.5)
        else:
            ax.annotate("", xy=(d.x2, i), xytext=(d.x1, i),
                        arrowprops={"arrowstyle": "-" if d.lost else "->", "color": d.colour, "linewidth": 1.8,
                                    "linestyle": "--" if d.dashed else "-"})
            if d.lost:
                ax.plot([d.x2], [i], marker="x", color=COLOURS["cross"], markersize=9, markeredgewidth=2.5)
        ax.text(LABEL_X, i, d.label, ha="left", va="center", fontsize=7.5, color=d.colour)
    ax.set_title(f"{semantics_name}: step {step} of {len(events)}", loc="left", fontsize=10)
    side.axis("off")
    side.text(0, 1, "\n".join(f"{k}: {v}" for k, v in values.items()), va="top", family="monospace",
              fontsize=8.5, transform=side.transAxes)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return out


def plot_summary(totals: dict[str, channel.Totals], ax=None):
    """A matplotlib bar chart of lost and duplicated messages per semantic; returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _fig, ax = plt.subplots(figsize=(8, 3.2))
    names = list(totals)
    y = np.arange(len(names))
    ax.barh(y - 0.2, [totals[n].lost for n in names], height=0.4, color=COLOURS["lost"], label="lost")
    ax.barh(y + 0.2, [totals[n].duplicated for n in names], height=0.4, color=COLOURS["duplicate"],
            label="duplicated")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    sent = totals[names[0]].sent if names else 0
    ax.set_xlabel(f"messages (out of {sent})")
    ax.legend(loc="lower right")
    return ax
