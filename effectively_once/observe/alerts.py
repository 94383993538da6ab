"""Alert rules as code, evaluated over metric series.

- ``DLQ_NOT_EMPTY``: any non-zero ``dlq_depth`` (a message in the DLQ is a payment
  nobody has made yet);
- ``DLQ_TOO_OLD``: ``dlq_oldest_age_seconds`` (the oldest message's age, a
  maximum) over one hour;
- ``DEDUP_HIT_RATE_HIGH``: ``dedup_check_hit_rate`` above 1 % sustained for a
  window (5 minutes by default) outside deploy windows. A deploy restarts
  consumers, and a restarted consumer re-reads what it had not committed, so
  hits during a deploy are expected. Outside one, records are being delivered
  again: offset commits that are late, missing or failing; a poll batch whose
  processing outlasts ``max.poll.interval.ms``, so the member is removed and
  its partitions replayed; rebalances from crashes, restarts or scaling; or an
  upstream re-publish or a DLQ redrive. (Acknowledging too early is not among
  them: it loses a message when the consumer dies between the ack and the
  effect, and redelivers nothing.)

A rule fires over intervals: ``rule.evaluate(series, deploy_windows)`` returns
one ``Firing`` per interval, each with a message a person on call can act on.
``summarize(firings)`` folds a rule's back-to-back firings into one line with a
count and a time range, as an alert manager groups a flapping alert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from effectively_once.observe.metrics import DEDUP_CHECK_HIT_RATE, DLQ_DEPTH, DLQ_OLDEST_AGE_SECONDS, Series

DeployWindow = tuple[float, float]


@dataclass(frozen=True)
class Firing:
    """One interval over which a rule fired."""

    rule: str
    start: float
    end: float
    peak: float
    message: str
    first: float | None = None   # the first sample of the run (``start`` waits out ``for_seconds``)
    what: str = ""               # the condition, e.g. "dedup_check_hit_rate above 1.00% outside any deploy window"
    peak_text: str = ""          # the peak as the message writes it
    meaning: str = ""            # what to do, the same for every firing of the rule


def format_time(t: float) -> str:
    """A timestamp for a message: UTC clock time for Unix times, else seconds since the series' origin."""
    if t >= 1e9:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"t={t:.0f} s"


def format_duration(seconds: float) -> str:
    """``90`` -> ``1 min 30 s``; ``7200`` -> ``2 h``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return " ".join(p for p in parts if p) or "0 s"


def _format_value(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value * 100:.2f}%"
    if unit == "seconds":
        return format_duration(value)
    return f"{value:g}"


def in_deploy_window(t: float, deploy_windows: Iterable[DeployWindow]) -> bool:
    """True when ``t`` lies in one of the ``(start, end)`` windows (both ends included)."""
    return any(start <= t <= end for start, end in deploy_windows)


@dataclass(frozen=True)
class AlertRule:
    """``metric > threshold``, held for ``for_seconds``, optionally ignoring deploy windows.

    ``for_seconds`` works like Prometheus' ``for:``: a run of consecutive samples
    above the threshold fires once it has lasted that long (from its first sample),
    and the firing interval starts there. A sample inside a deploy window breaks
    a run when ``ignore_deploy_windows`` is set.
    """

    name: str
    metric: str
    threshold: float
    for_seconds: float = 0.0
    ignore_deploy_windows: bool = False
    unit: str = "count"
    meaning: str = ""

    def evaluate(self, series: Series, deploy_windows: Sequence[DeployWindow] = ()) -> list[Firing]:
        """The intervals over which this rule fires on ``series``."""
        if series.name != self.metric:
            raise ValueError(f"rule {self.name} watches {self.metric}, not {series.name}")
        firings: list[Firing] = []
        run: list[tuple[float, float]] = []
        for t, value in list(series) + [(float("inf"), float("nan"))]:  # a sentinel closes the last run
            excluded = self.ignore_deploy_windows and in_deploy_window(t, deploy_windows)
            if value > self.threshold and not excluded:
                run.append((t, value))
                continue
            if run:
                firing = self._firing(run, series)
                if firing:
                    firings.append(firing)
            run = []
        return firings

    def _firing(self, run: list[tuple[float, float]], series: Series) -> Firing | None:
        first = run[0][0]
        held = [(t, v) for t, v in run if t - first >= self.for_seconds]
        if not held:
            return None  # a blip shorter than the window
        start, end = held[0][0], run[-1][0]
        peak = max(v for _, v in run)
        where = series.label_text()
        lasted = f" for {format_duration(end - first)}" if end > first else ""
        deploy = " outside any deploy window" if self.ignore_deploy_windows else ""
        what = f"{self.metric}{where} above {_format_value(self.threshold, self.unit)}{deploy}"
        peak_text = _format_value(peak, self.unit)
        message = (f"{self.name}: {self.metric}{where} above {_format_value(self.threshold, self.unit)}"
                   f"{lasted}{deploy}, from {format_time(first)} to {format_time(end)} (peak {peak_text})")
        if self.meaning:
            message += f". {self.meaning}"
        return Firing(self.name, start, end, peak, message, first=first, what=what, peak_text=peak_text,
                      meaning=self.meaning)


DLQ_NOT_EMPTY = AlertRule(
    "DlqNotEmpty", DLQ_DEPTH, threshold=0.0, unit="count",
    meaning="Messages are waiting in the dead-letter queue: read their reasons, fix, then redrive at a limited rate")
DLQ_TOO_OLD = AlertRule(
    "DlqMessagesTooOld", DLQ_OLDEST_AGE_SECONDS, threshold=3600.0, unit="seconds",
    meaning="The oldest dead-lettered message has waited over an hour: someone must triage it now")
DEDUP_HIT_RATE_HIGH = AlertRule(
    "DedupHitRateHigh", DEDUP_CHECK_HIT_RATE, threshold=0.01, for_seconds=300.0, ignore_deploy_windows=True,
    unit="ratio",
    meaning="Records are being delivered again: check offset commits (late, missing or failing), poll batches "
            "that outlast max.poll.interval.ms, consumer-group rebalances (crashes, restarts, scaling), and any "
            "upstream re-publish or DLQ redrive; the dedup table is absorbing it, so no money moved twice")

RULES = (DLQ_NOT_EMPTY, DLQ_TOO_OLD, DEDUP_HIT_RATE_HIGH)


def dlq_depth_alert(series: Series) -> list[Firing]:
    """Fires over every interval where ``dlq_depth`` is not zero."""
    return DLQ_NOT_EMPTY.evaluate(series)


def dlq_age_alert(series: Series, threshold_seconds: float = 3600.0) -> list[Firing]:
    """Fires where ``dlq_oldest_age_seconds`` is above ``threshold_seconds`` (one hour by default)."""
    return replace(DLQ_TOO_OLD, threshold=threshold_seconds).evaluate(series)


def dedup_hit_rate_alert(series: Series, deploy_windows: Sequence[DeployWindow] = (), *,
                         window_seconds: float = 300.0, threshold: float = 0.01) -> list[Firing]:
    """Fires where ``dedup_check_hit_rate`` stays above ``threshold`` for ``window_seconds`` outside deploys."""
    return replace(DEDUP_HIT_RATE_HIGH, threshold=threshold, for_seconds=window_seconds).evaluate(
        series, deploy_windows)


def evaluate(series_list: Iterable[Series], deploy_windows: Sequence[DeployWindow] = (),
             rules: Iterable[AlertRule] = RULES) -> list[Firing]:
    """Every firing of every rule over every series it watches, in time order."""
    rules = list(rules)
    firings = [firing for series in series_list for rule in rules if rule.metric == series.name
               for firing in rule.evaluate(series, deploy_windows)]
    return sorted(firings, key=lambda f: (f.start, f.rule))


def summarize(firings: Sequence[Firing]) -> list[str]:
    """One line per rule and run of back-to-back firings: a count and a time range instead of repeats.

    A rule that fires three times in a row over one incident says so once:
    ``DedupHitRateHigh fired 3 times, from t=11 s to t=25 s (peak 21.74%): ...``,
    with its advice written once. A single firing keeps its own message.
    """
    lines: list[str] = []
    group: list[Firing] = []
    for firing in [*sorted(firings, key=lambda f: (f.start, f.rule)), None]:
        if group and (firing is None or firing.rule != group[-1].rule or firing.what != group[-1].what):
            if len(group) == 1:
                lines.append(group[0].message)
            else:
                peak = max(group, key=lambda f: f.peak)
                line = (f"{group[0].rule} fired {len(group)} times, from "
                        f"{format_time(group[0].first if group[0].first is not None else group[0].start)} "
                        f"to {format_time(group[-1].end)} (highest peak {peak.peak_text}): {group[0].what}")
                if group[0].meaning:
                    line += f". {group[0].meaning}"
                lines.append(line)
            group = []
        if firing is not None:
            group.append(firing)
    return lines
