"""A window without provider calls has no p99: the consumer serves NaN, the recorder keeps NaN, the dashboard
draws a gap. (A zero there would read as a very fast provider, and did: notebook 05's plot dipped to 0.)"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot

matplotlib.use("Agg")

from effectively_once.observe import metrics  # noqa: E402
from effectively_once.observe.dashboard import plot_dashboard  # noqa: E402
from effectively_once.observe.exporter import ConsumerTelemetry  # noqa: E402
from effectively_once.observe.scrape import Recorder, scrape  # noqa: E402


def _recorder(urls: list[str]) -> Recorder:
    # No broker: ``sample`` reads only the consumers' /metrics until ``start`` connects one.
    return Recorder(bootstrap="unused:9092", topic="t", group="g", dlq_topic="t.dlq", targets=lambda: list(urls),
                    acknowledged=list)


def test_an_empty_window_is_nan_on_metrics_and_in_the_recording():
    telemetry = ConsumerTelemetry(window_seconds=60)
    url = telemetry.serve()
    try:
        page = scrape(url)
        assert math.isnan(page.get(metrics.SIDE_EFFECT_DURATION_P99)), "no call yet: no p99"
        assert math.isnan(page.get(metrics.RETRY_COUNT_P99))
        recorder = _recorder([url])
        first = recorder.sample()
        telemetry.record(result="charged", side_effect_ms=80.0, retries=1)
        second = recorder.sample()
        assert math.isnan(first[metrics.SIDE_EFFECT_DURATION_P99]) and math.isnan(first[metrics.RETRY_COUNT_P99])
        assert second[metrics.SIDE_EFFECT_DURATION_P99] == 0.08 and second[metrics.RETRY_COUNT_P99] == 1
    finally:
        telemetry.close()


def test_no_live_consumer_is_nan_and_the_worst_consumer_wins():
    idle, busy = ConsumerTelemetry(window_seconds=60), ConsumerTelemetry(window_seconds=60)
    urls = [idle.serve(), busy.serve()]
    try:
        busy.record(result="charged", side_effect_ms=30.0)
        assert math.isnan(_recorder([]).sample()[metrics.SIDE_EFFECT_DURATION_P99]), "nobody to ask: a gap"
        assert _recorder(urls).sample()[metrics.SIDE_EFFECT_DURATION_P99] == 0.03, "an idle consumer is no zero"
    finally:
        idle.close()
        busy.close()


def test_the_dashboard_draws_an_empty_window_as_a_gap():
    telemetry = ConsumerTelemetry(window_seconds=60)
    url = telemetry.serve()
    try:
        recorder = _recorder([url])
        recorder.sample()
        telemetry.record(result="charged", side_effect_ms=20.0)
        recorder.sample()
        figure = plot_dashboard(recorder)
        p99_panel = figure.axes[2]
        values = list(p99_panel.lines[0].get_ydata())
        matplotlib.pyplot.close(figure)
        assert math.isnan(values[0]) and values[1] == 20.0, values
        assert 0.0 not in values
    finally:
        telemetry.close()
