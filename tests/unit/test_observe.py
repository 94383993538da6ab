"""Metrics, alert rules and trace context on known inputs (pure, no services)."""

from __future__ import annotations

import random

import pytest

from effectively_once.observe import alerts, metrics, tracing
from effectively_once.observe.metrics import Series


# -- percentiles and metrics ----------------------------------------------------------------
def test_p99_is_nearest_rank():
    assert metrics.p99(range(1, 101)) == 99          # rank ceil(0.99 * 100) = 99
    assert metrics.p99(range(1, 1001)) == 990
    assert metrics.p99([5, 1, 3]) == 5               # few values: the largest
    assert metrics.p99([7.5]) == 7.5
    assert metrics.percentile([1, 2, 3, 4], 50) == 2  # an observed value, no interpolation
    with pytest.raises(ValueError):
        metrics.p99([])
    with pytest.raises(ValueError):
        metrics.percentile([1], 0)


def test_consumer_lag_per_partition():
    lag = metrics.consumer_lag_messages({0: 100, 1: 50, 2: 10, 3: 7}, {0: 90, 1: 50, 2: -1001})
    assert lag == {0: 10, 1: 0, 2: 10, 3: 7}
    # No commit yet: the lag counts from the partition's first offset.
    assert metrics.consumer_lag_messages({0: 100}, {}, start_offsets={0: 40}) == {0: 60}
    # A commit cannot run ahead of the end in a sane cluster; never report a negative lag.
    assert metrics.consumer_lag_messages({("t", 0): 5}, {("t", 0): 9}) == {("t", 0): 0}


def test_dlq_depth_by_source():
    depth = metrics.dlq_depth(["charges", "refunds", "charges"], known_sources=["charges", "refunds", "payouts"])
    assert depth == {"charges": 2, "refunds": 1, "payouts": 0}
    assert metrics.dlq_depth([]) == {}


def test_dlq_oldest_age_is_the_maximum():
    now = 10_000.0
    assert metrics.dlq_oldest_age_seconds([now - 10, now - 7200, now - 30], now) == 7200
    assert metrics.dlq_oldest_age_seconds([], now) == 0.0
    ages = [now - i for i in range(1, 201)]
    assert metrics.dlq_oldest_age_seconds(ages, now) == 200, "the oldest, not the 198th of 200"


def test_one_forgotten_message_among_many_young_ones_fires_the_age_alert():
    now = 100_000.0
    young = [now - 60] * 999          # a thousand messages dead-lettered a minute ago...
    forgotten = [now - 86_400]        # ...and one left there for a day
    oldest = metrics.dlq_oldest_age_seconds(young + forgotten, now)
    assert oldest == 86_400
    assert metrics.p99([now - t for t in young + forgotten]) == 60, "a p99 would hide the forgotten one"
    series = Series.from_points(metrics.DLQ_OLDEST_AGE_SECONDS, [(now, oldest)])
    [firing] = alerts.dlq_age_alert(series)
    assert firing.peak == 86_400 and "1 day" not in firing.message and "24 h" in firing.message


def test_dedup_hit_rate_counts_blocked_inserts():
    events = ["inserted"] * 95 + ["done"] * 3 + ["pending"] * 2
    assert metrics.dedup_check_hit_rate(events) == pytest.approx(0.05)
    mixed = [{"dedup": "inserted"}, {"dedup": "done"}, {"kind": "provider_call"}, {"dedup": "inserted"},
             {"dedup": "inserted"}]
    assert metrics.dedup_check_hit_rate(mixed) == pytest.approx(0.25)
    assert metrics.dedup_check_hit_rate([]) == 0.0
    with pytest.raises(ValueError, match="unknown dedup outcome"):
        metrics.dedup_check_hit_rate(["skipped"])
    with pytest.raises(TypeError):
        metrics.dedup_check_hit_rate([True])


def test_side_effect_and_retry_p99():
    durations = [0.1] * 98 + [2.0, 30.0]
    assert metrics.side_effect_duration_p99(durations) == 2.0
    assert metrics.side_effect_duration_p99([]) == 0.0
    assert metrics.retry_count_p99([0] * 990 + [5] * 10) == 0
    assert metrics.retry_count_p99([0] * 980 + [5] * 20) == 5


def test_series_validates_and_slices():
    s = Series.from_points("dlq_depth", [(2, 1), (0, 0), (1, 3)], source="charges")
    assert s.timestamps == (0.0, 1.0, 2.0) and s.values == (0.0, 3.0, 1.0)
    assert s.between(1, 2).values == (3.0, 1.0)
    assert s.label_text() == '{source="charges"}'
    with pytest.raises(ValueError):
        Series("x", (0, 1), (1,))
    with pytest.raises(ValueError):
        Series("x", (1, 1), (0, 0))
    samples = [{"time": 0, "dlq_depth": 0}, {"time": 5, "other": 1}, {"time": 10, "dlq_depth": 4}]
    assert list(metrics.series_from_samples(samples, "dlq_depth")) == [(0.0, 0.0), (10.0, 4.0)]


# -- alert rules ------------------------------------------------------------------------------
def rate_series(points):
    return Series.from_points(metrics.DEDUP_CHECK_HIT_RATE, points)


def steady_with_spike(start, end, level=0.08, step=30, total=3600):
    return rate_series([(t, level if start <= t <= end else 0.0005) for t in range(0, total + 1, step)])


def test_dlq_depth_fires_on_any_message_and_only_then():
    series = Series.from_points(metrics.DLQ_DEPTH, [(0, 0), (60, 0), (120, 1), (180, 3), (240, 0), (300, 2)],
                                source="payments.charges")
    firings = alerts.dlq_depth_alert(series)
    assert [(f.start, f.end, f.peak) for f in firings] == [(120, 180, 3), (300, 300, 2)]
    assert 'dlq_depth{source="payments.charges"}' in firings[0].message
    assert alerts.dlq_depth_alert(Series.from_points(metrics.DLQ_DEPTH, [(0, 0), (60, 0)])) == []


def test_dlq_age_fires_over_one_hour():
    series = Series.from_points(metrics.DLQ_OLDEST_AGE_SECONDS, [(0, 600), (600, 3600), (1200, 4200), (1800, 5400)])
    firings = alerts.dlq_age_alert(series)
    assert [(f.start, f.end, f.peak) for f in firings] == [(1200, 1800, 5400)]
    assert "1 h 30 min" in firings[0].message  # the peak, readable
    assert alerts.dlq_age_alert(series, threshold_seconds=6000) == []


def test_sustained_hit_rate_fires_after_the_window():
    firings = alerts.dedup_hit_rate_alert(steady_with_spike(1200, 1800))  # 10 minutes at 8%
    assert len(firings) == 1
    assert (firings[0].start, firings[0].end) == (1500, 1800)  # fires once 5 minutes have passed
    assert firings[0].peak == 0.08
    assert "8.00%" in firings[0].message and "outside any deploy window" in firings[0].message
    assert "max.poll.interval.ms" in firings[0].message and "early ack" not in firings[0].message


def test_a_short_blip_does_not_fire():
    assert alerts.dedup_hit_rate_alert(steady_with_spike(1200, 1380)) == []  # 3 minutes
    assert alerts.dedup_hit_rate_alert(steady_with_spike(1200, 1380), window_seconds=120) != []


def test_a_spike_inside_a_deploy_window_does_not_fire():
    spike = steady_with_spike(1200, 1800)
    assert alerts.dedup_hit_rate_alert(spike, deploy_windows=[(1100, 1900)]) == []
    # The same spike half inside the deploy: only the part after it counts, and 3 minutes is too short.
    assert alerts.dedup_hit_rate_alert(spike, deploy_windows=[(1100, 1600)]) == []
    # A deploy somewhere else changes nothing.
    assert len(alerts.dedup_hit_rate_alert(spike, deploy_windows=[(0, 600)])) == 1


def test_under_the_threshold_does_not_fire():
    assert alerts.dedup_hit_rate_alert(steady_with_spike(0, 3600, level=0.009)) == []
    assert len(alerts.dedup_hit_rate_alert(steady_with_spike(0, 3600, level=0.011))) == 1


def test_evaluate_runs_each_rule_on_its_metric():
    series = [
        steady_with_spike(1200, 1800),
        Series.from_points(metrics.DLQ_DEPTH, [(0, 0), (900, 4)], source="charges"),
        Series.from_points(metrics.CONSUMER_LAG_MESSAGES, [(0, 10_000)]),  # no rule watches lag
    ]
    firings = alerts.evaluate(series)
    assert [f.rule for f in firings] == ["DlqNotEmpty", "DedupHitRateHigh"]
    with pytest.raises(ValueError, match="watches"):
        alerts.DLQ_NOT_EMPTY.evaluate(series[0])


def test_messages_use_clock_time_for_unix_timestamps():
    t0 = 1_700_000_000
    firings = alerts.dlq_depth_alert(Series.from_points(metrics.DLQ_DEPTH, [(t0, 1)]))
    assert "2023-11-14 22:13:20 UTC" in firings[0].message


# -- trace context ------------------------------------------------------------------------------
def test_traceparent_round_trip_and_seeding():
    value = tracing.new_traceparent(random.Random(7))
    assert value == tracing.new_traceparent(random.Random(7))
    trace_id, span_id = tracing.parse_traceparent(value)
    assert value == f"00-{trace_id}-{span_id}-01"
    assert len(trace_id) == 32 and len(span_id) == 16
    assert tracing.parse_traceparent(value.encode()) == (trace_id, span_id)


def test_child_keeps_the_trace_and_changes_the_span():
    rng = random.Random(1)
    parent = tracing.new_traceparent(rng)
    child = tracing.child_traceparent(parent, rng)
    assert tracing.trace_id_of(child) == tracing.trace_id_of(parent)
    assert tracing.parse_traceparent(child)[1] != tracing.parse_traceparent(parent)[1]
    assert tracing.trace_id_of(tracing.child_traceparent(None, rng)) not in (None, tracing.trace_id_of(parent))


@pytest.mark.parametrize("bad", [
    "", "garbage", "00-" + "0" * 32 + "-" + "a" * 16 + "-01", "00-" + "a" * 32 + "-" + "0" * 16 + "-01",
    "00-" + "A" * 32 + "-" + "a" * 16 + "-01", "ff-" + "a" * 32 + "-" + "a" * 16 + "-01",
    "00-" + "a" * 32 + "-" + "a" * 16 + "-01-extra",
])
def test_malformed_traceparents_are_refused(bad):
    with pytest.raises(ValueError):
        tracing.parse_traceparent(bad)
    assert tracing.trace_id_of(bad) is None


def test_a_later_version_is_read_for_its_ids():
    assert tracing.parse_traceparent("01-" + "b" * 32 + "-" + "c" * 16 + "-01-more") == ("b" * 32, "c" * 16)
    with pytest.raises(ValueError):
        tracing.new_traceparent(trace_id="xyz")


def test_back_to_back_firings_of_one_rule_read_as_one_line():
    points = [(t, 0.2 if t in (10, 11, 15, 16, 23, 24) else 0.0) for t in range(0, 30)]
    firings = alerts.dedup_hit_rate_alert(rate_series(points), window_seconds=1.0)
    assert len(firings) == 3
    lines = alerts.summarize(firings)
    assert len(lines) == 1, lines
    assert lines[0].startswith("DedupHitRateHigh fired 3 times, from t=10 s to t=24 s (highest peak 20.00%)")
    assert lines[0].count("max.poll.interval.ms") == 1, "the advice is written once"
    dlq = alerts.dlq_depth_alert(Series.from_points(metrics.DLQ_DEPTH, [(0, 0), (22.2426, 1), (27.7692, 3)]))
    assert alerts.summarize(dlq) == [dlq[0].message] and "t=22 s to t=28 s" in dlq[0].message
