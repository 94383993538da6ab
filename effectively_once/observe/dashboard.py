"""Plot a ``Recorder``'s series the way an on-call dashboard shows them (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence

from effectively_once.observe import metrics
from effectively_once.observe.scrape import LAG_FROM_WATERMARKS, Recorder

PHASE_COLOURS = ("#e8f5e9", "#fff3e0", "#fce4ec", "#e3f2fd")
EVENT_STYLES = {"consumer died": ("#cf222e", "-"), "consumer restarted": ("#1a7f37", ":")}


def plot_dashboard(recorder: Recorder, phases: Sequence[tuple[str, float, float]] = (), title: str = ""):
    """Four panels over time: lag, dedup hit rate, side-effect p99, DLQ depth and age; returns the figure.

    ``phases`` are ``(name, start, end)`` spans shaded on every panel; the
    recorder's marks (kills, crashes, restarts) are drawn as vertical lines.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True, constrained_layout=True)
    lag, hits, p99, dlq = axes

    ack = recorder.series(metrics.CONSUMER_LAG_MESSAGES)
    wm = recorder.series(LAG_FROM_WATERMARKS)
    lag.plot(ack.timestamps, ack.values, color="#0969da", label="from the producer's acknowledged offsets")
    lag.plot(wm.timestamps, wm.values, color="#8c959f", linestyle="--", label="from the broker's high watermarks")
    lag.set_ylabel("consumer_lag_messages")
    lag.legend(loc="upper left", fontsize=8)

    rate = recorder.series(metrics.DEDUP_CHECK_HIT_RATE)
    hits.plot(rate.timestamps, [v * 100 for v in rate.values], color="#8250df")
    hits.axhline(1.0, color="#cf222e", linestyle=":", linewidth=1, label="alert threshold 1 %")
    hits.set_ylabel("dedup_check_hit_rate (%)")
    hits.legend(loc="upper left", fontsize=8)

    # A window without a provider call has no p99: NaN, which matplotlib leaves as a gap in the line
    # (the dots keep a lone sample between two gaps visible).
    side = recorder.series(metrics.SIDE_EFFECT_DURATION_P99)
    p99.plot(side.timestamps, [v * 1000 for v in side.values], color="#bf8700", marker=".", markersize=3)
    p99.set_ylabel("side_effect_duration_p99 (ms)")

    depth = recorder.series(metrics.DLQ_DEPTH)
    age = recorder.series(metrics.DLQ_OLDEST_AGE_SECONDS)
    dlq.step(depth.timestamps, depth.values, where="post", color="#cf222e", label="dlq_depth")
    dlq.set_ylabel("dlq_depth")
    twin = dlq.twinx()
    twin.plot(age.timestamps, age.values, color="#57606a", linestyle="--", label="dlq_oldest_age_seconds")
    twin.set_ylabel("dlq_oldest_age_seconds (s)")
    dlq.legend(loc="upper left", fontsize=8)
    twin.legend(loc="center left", fontsize=8)
    dlq.set_xlabel("seconds since the recording started")

    for ax in axes:
        for i, (name, start, end) in enumerate(phases):
            ax.axvspan(start, end, color=PHASE_COLOURS[i % len(PHASE_COLOURS)], zorder=0)
            if ax is lag:
                ax.text((start + end) / 2, 1.02, name, transform=ax.get_xaxis_transform(), ha="center", fontsize=9)
        for t, label in recorder.marks:
            colour, style = EVENT_STYLES.get(label, ("#57606a", "-."))
            ax.axvline(t, color=colour, linestyle=style, linewidth=0.9, alpha=0.8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig
