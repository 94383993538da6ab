"""The animated message-loss widget: a lossy channel, one event at a time.

Rendering only. The model, its random draws and every event come from
:mod:`effectively_once.theory.channel`; this module turns them into an SVG
sequence diagram with four lanes (producer, network, broker, consumer), live
counters, and a summary of losses and duplicates for each semantic.

Playback runs in the browser (an ``ipywidgets.Play`` linked to the step
slider), so it works in JupyterLab and VS Code alike. From Python, setting
``widget.step`` moves the animation deterministically; the counters and the
diagram follow, which is how the tests drive it without a browser.
"""

from __future__ import annotations

from collections import Counter
from html import escape
from pathlib import Path

import ipywidgets as w

from effectively_once.theory import channel
from effectively_once.theory.channel import Event, Semantics

LANES = ("producer", "network", "broker", "consumer")
LANE_X = {"producer": 60, "network": 220, "broker": 380, "consumer": 540}
LABEL_X = 566
WIDTH = 830
ROW = 22
VISIBLE_ROWS = 16

COLOURS = {"normal": "#2471a3", "retry": "#e67e22", "duplicate": "#c0392b", "lost": "#7f8c8d",
           "ack": "#27ae60", "dedup": "#8e44ad"}

LABELS = {
    "send": "send", "lost": "lost in the network", "stored": "stored by the broker",
    "dropped_duplicate": "broker drops the retry (same producer id + sequence)",
    "ack": "ack", "ack_lost": "ack lost", "timeout": "no ack: time out, retry",
    "give_up": "no ack: out of retries, give up", "deliver": "deliver", "process": "side effect runs",
    "dedup_skip": "dedup log: already processed, skip", "commit": "commit offset",
    "commit_lost": "commit lost: will be redelivered",
}

COUNTER_NAMES = ("messages", "network sends", "lost in network", "acks lost", "copies stored",
                 "retries dropped by broker", "deliveries", "side effects", "dedup skips",
                 "messages lost", "messages duplicated")


def event_colour(event: Event) -> str:
    """The colour an event is drawn in: retries orange, duplicates red, losses grey."""
    if event.kind in ("lost", "ack_lost", "commit_lost", "give_up"):
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


def counters(events: list[Event], n_messages: int) -> dict[str, int]:
    """Live counters after ``events`` have happened (a message counts as lost once its log is over)."""
    kinds = Counter(e.kind for e in events)
    effects = Counter(e.message for e in events if e.kind == "process")
    started = {e.message for e in events}
    return {
        "messages": len(started),
        "network sends": kinds["send"],
        "lost in network": kinds["lost"],
        "acks lost": kinds["ack_lost"] + kinds["commit_lost"],
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


def _row_svg(event: Event, y: float, newest: bool, speed_ms: int) -> str:
    colour = event_colour(event)
    x1, x2 = LANE_X[event.src], LANE_X[event.dst]
    dashed = ' stroke-dasharray="5 3"' if event.kind in ("ack", "ack_lost", "commit", "commit_lost") else ""
    label = f"m{event.message} {LABELS[event.kind]}"
    if event.copy >= 0 and event.kind in ("stored", "deliver", "process", "dedup_skip"):
        label += f" (copy {event.copy + 1})"
    if event.retry and event.kind in ("send", "deliver"):
        label += " (retry)" if event.kind == "send" else " (redelivery)"
    dur = f"{max(speed_ms, 100) / 1000 * 0.8:.2f}s"
    out = []
    if x1 == x2:
        marker = "&#x2717;" if event.kind == "lost" else ("&#x21bb;" if event.kind == "timeout" else "&#x25cf;")
        if event.kind in ("give_up",):
            marker = "&#x2717;"
        out.append(f'<text x="{x1}" y="{y + 5}" text-anchor="middle" fill="{colour}" font-size="16" '
                   f'font-weight="bold">{marker}'
                   + (f'<animate attributeName="opacity" from="0" to="1" dur="{dur}"/>' if newest else "")
                   + "</text>")
    else:
        end = x2
        out.append(f'<line x1="{x1}" y1="{y}" x2="{end}" y2="{y}" stroke="{colour}" stroke-width="2"{dashed} '
                   f'marker-end="url(#eo-ml-arrow)">'
                   + (f'<animate attributeName="x2" from="{x1}" to="{end}" dur="{dur}"/>' if newest else "")
                   + "</line>")
        if event.kind in ("ack_lost", "commit_lost"):
            out.append(f'<text x="{x2}" y="{y + 5}" text-anchor="middle" fill="#c0392b" font-size="16" '
                       f'font-weight="bold">&#x2717;</text>')
    out.append(f'<text x="{LABEL_X}" y="{y + 4}" fill="{colour}" font-size="11">'
               f'{escape(label)}</text>')
    return "".join(out)


def diagram_svg(events: list[Event], step: int, *, speed_ms: int = 400, title: str = "") -> str:
    """The sequence diagram after ``step`` events, showing the latest rows (the newest one animated)."""
    shown = events[:step][-VISIBLE_ROWS:]
    height = 60 + ROW * VISIBLE_ROWS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12" class="eo-message-loss">',
             '<defs><marker id="eo-ml-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
             'markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/>'
             '</marker></defs>', f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    if title:
        parts.append(f'<text x="8" y="14" font-weight="bold">{escape(title)}</text>')
    for lane in LANES:
        x = LANE_X[lane]
        parts.append(f'<text x="{x}" y="34" text-anchor="middle" font-weight="bold">{lane}</text>')
        parts.append(f'<line x1="{x}" y1="40" x2="{x}" y2="{height - 4}" stroke="#bbb" stroke-dasharray="4 3"/>')
    for i, event in enumerate(shown):
        parts.append(_row_svg(event, 56 + ROW * i, i == len(shown) - 1, speed_ms))
    parts.append("</svg>")
    return "".join(parts)


def counters_html(values: dict[str, int], semantics_name: str) -> str:
    """The live counters as a small HTML table."""
    rows = "".join(f'<tr><td style="padding:1px 8px">{escape(k)}</td>'
                   f'<td style="text-align:right;padding:1px 8px" class="eo-counter" '
                   f'data-name="{escape(k)}">{v}</td></tr>'
                   for k, v in values.items())
    return (f'<div style="font-family:sans-serif;font-size:12px"><b>{escape(semantics_name)}</b>'
            f'<table>{rows}</table></div>')


def summary_svg(totals: dict[str, channel.Totals], width: int = 520) -> str:
    """Horizontal bars of lost and duplicated messages for each semantic."""
    names = list(totals)
    worst = max([1] + [max(t.lost, t.duplicated) for t in totals.values()])
    bar_w = width - 250
    row = 34
    height = 30 + row * len(names)
    sent = next(iter(totals.values())).sent if totals else 0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><text x="4" y="14" font-weight="bold">Out of {sent} messages, same losses for all: '
             f'<tspan fill="{COLOURS["lost"]}">lost</tspan>, <tspan fill="{COLOURS["duplicate"]}">duplicated'
             f'</tspan></text>']
    for i, name in enumerate(names):
        t = totals[name]
        y = 26 + row * i
        parts.append(f'<text x="4" y="{y + 14}">{escape(name)}</text>')
        for j, (value, colour) in enumerate(((t.lost, COLOURS["lost"]), (t.duplicated, COLOURS["duplicate"]))):
            length = bar_w * value / worst
            parts.append(f'<rect x="240" y="{y + 2 + 13 * j}" width="{length:.1f}" height="11" fill="{colour}"/>')
            parts.append(f'<text x="{244 + length:.1f}" y="{y + 11 + 13 * j}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


class MessageLossWidget(w.VBox):
    """Producer -> network -> broker -> consumer, animated one event per step.

    Parameters are the starting values of the controls. ``animated_messages``
    messages are animated; the summary compares the four semantics on
    ``summary_messages`` messages drawn with the same seed and loss rates.
    """

    def __init__(self, *, message_loss: float = 0.2, ack_loss: float = 0.2, retries: int = 3,
                 idempotent_producer: bool = False, consumer_dedup: bool = False, seed: int = 0,
                 speed_ms: int = 400, animated_messages: int = 10, summary_messages: int = 1000) -> None:
        self.animated_messages = animated_messages
        self.summary_messages = summary_messages
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
        self.play = w.Play(value=0, min=0, max=1, step=1, interval=speed_ms, description="play")
        self.step_slider = w.IntSlider(value=0, min=0, max=1, description="step", style=style)
        self.step_button = w.Button(description="step", icon="step-forward")
        self.diagram = w.HTML()
        self.counter_view = w.HTML()
        self.summary_view = w.HTML()
        self.semantics_label = w.HTML()
        w.jslink((self.play, "value"), (self.step_slider, "value"))
        w.jslink((self.play, "max"), (self.step_slider, "max"))
        self.speed.observe(self._on_speed, names="value")
        for control in (self.message_loss, self.ack_loss, self.retries, self.idempotent_producer,
                        self.consumer_dedup, self.seed):
            control.observe(lambda _c: self._rebuild(), names="value")
        self.step_slider.observe(lambda _c: self._render(), names="value")
        self.step_button.on_click(lambda _b: setattr(self, "step", self.step + 1))
        controls = w.VBox([self.message_loss, self.ack_loss, self.retries,
                           w.HBox([self.idempotent_producer, self.consumer_dedup]), self.seed, self.speed,
                           w.HBox([self.play, self.step_button]), self.step_slider, self.semantics_label])
        super().__init__([w.HBox([controls, self.counter_view]), self.diagram, self.summary_view])
        self.add_class("eo-message-loss-widget")
        self._rebuild()

    # --- state, readable and settable from Python ---------------------------------------------

    @property
    def semantics(self) -> Semantics:
        """The semantic the controls describe."""
        name = channel.semantics_for(self.retries.value, self.idempotent_producer.value, self.consumer_dedup.value)
        return Semantics(name, int(self.retries.value), bool(self.idempotent_producer.value),
                         bool(self.consumer_dedup.value))

    @property
    def step(self) -> int:
        """How many events have been played."""
        return int(self.step_slider.value)

    @step.setter
    def step(self, value: int) -> None:
        self.step_slider.value = max(0, min(int(value), len(self.events)))

    @property
    def finished(self) -> bool:
        """True once every event of the animated messages has been played."""
        return self.step >= len(self.events)

    @property
    def counters(self) -> dict[str, int]:
        """The live counters at the current step."""
        return counters(self.events[:self.step], self.animated_messages)

    def run_to_end(self) -> None:
        """Jump to the last step (the summary appears)."""
        self.step = len(self.events)

    # --- rendering ----------------------------------------------------------------------------

    def _on_speed(self, change) -> None:
        self.play.interval = int(change["new"])

    def _rebuild(self) -> None:
        retries = int(self.retries.value)
        self.draws = channel.draw(self.animated_messages, self.message_loss.value, self.ack_loss.value,
                                  max_retries=retries, seed=int(self.seed.value))
        self.events = list(channel.iter_events(self.draws, self.semantics))
        summary_draws = channel.draw(self.summary_messages, self.message_loss.value, self.ack_loss.value,
                                     max_retries=max(retries, 1), seed=int(self.seed.value))
        self.summary = channel.compare(summary_draws, retries=max(retries, 1))
        self.play.value = 0
        self.play.max = len(self.events)
        self.step_slider.max = len(self.events)
        self.step_slider.value = 0
        self._render()

    def _render(self) -> None:
        self.semantics_label.value = f"<b>semantic:</b> {escape(self.semantics.name)}"
        self.diagram.value = diagram_svg(self.events, self.step, speed_ms=int(self.speed.value),
                                         title=f"step {self.step} of {len(self.events)}")
        self.counter_view.value = counters_html(self.counters, self.semantics.name)
        self.summary_view.value = summary_svg(self.summary) if self.finished else \
            '<div style="font-family:sans-serif;font-size:12px;color:#777">The summary of all four ' \
            'semantics appears when the animation reaches its last step.</div>'

    def save_frame(self, path: str | Path, dpi: int = 110) -> Path:
        """Save the current frame as a PNG (for readers without a kernel)."""
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
        colour = event_colour(e)
        x1, x2 = LANE_X[e.src], LANE_X[e.dst]
        if x1 == x2:
            marker = "x" if e.kind in ("lost", "give_up") else ("o" if e.kind != "timeout" else "$\u21bb$")
            ax.plot([x1], [i], marker=marker, color=colour, markersize=9, markeredgewidth=2.5)
        else:
            style = "--" if e.kind in ("ack", "ack_lost", "commit", "commit_lost") else "-"
            ax.annotate("", xy=(x2, i), xytext=(x1, i),
                        arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 1.8, "linestyle": style})
            if e.kind in ("ack_lost", "commit_lost"):
                ax.plot([x2], [i], marker="x", color="#c0392b", markersize=9, markeredgewidth=2.5)
        ax.text(LABEL_X, i, f"m{e.message} {LABELS[e.kind]}", ha="left", va="center", fontsize=7.5,
                color=colour)
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
