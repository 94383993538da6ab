"""The per-consumer telemetry and the exporter's arithmetic, without a broker."""

from __future__ import annotations

import time

import pytest
from prometheus_client import generate_latest

from effectively_once.observe import metrics
from effectively_once.observe.exporter import ConsumerTelemetry
from effectively_once.observe.scrape import lag_from_acknowledged, parse_metrics
from effectively_once.payments.producer import Sent


def test_telemetry_counts_hits_checks_durations_and_retries():
    telemetry = ConsumerTelemetry(dedup=True)
    telemetry.record(result="charged", side_effect_ms=20.0, retries=0)
    telemetry.record(result="charged", side_effect_ms=40.0, retries=2)
    telemetry.record(result="skipped", dedup_hit=True)
    telemetry.record(result="replayed", dedup_hit=True, side_effect_ms=10.0, retries=1)
    telemetry.record(result="dead_lettered", error="malformed: the value is not JSON")
    telemetry.record(result="dead_lettered", error="rejected: HTTP 400", retries=0)
    page = parse_metrics(generate_latest(telemetry.registry).decode())
    assert page.get("dedup_checks_total") == 5, "a malformed record never reached the dedup INSERT"
    assert page.get("dedup_check_hits_total", row_status="done") == 1
    assert page.get("dedup_check_hits_total", row_status="pending") == 1
    assert page.get(metrics.DEDUP_CHECK_HIT_RATE) == pytest.approx(2 / 5)
    assert page.get(metrics.SIDE_EFFECT_DURATION_P99) == pytest.approx(0.040)
    assert page.get(metrics.RETRY_COUNT_P99) == 2
    assert page.get("side_effect_duration_seconds_count") == 3
    assert page.get("retry_count_count") == 4, "retries are counted for every provider call, failed ones too"
    assert page.by_label("dlq_messages_total", "error_type") == {"malformed": 1, "rejected": 1}


def test_a_consumer_without_dedup_makes_no_dedup_checks():
    telemetry = ConsumerTelemetry(dedup=False)
    telemetry.record(result="charged", side_effect_ms=5.0)
    page = parse_metrics(generate_latest(telemetry.registry).decode())
    assert page.get("dedup_checks_total") == 0 and page.get(metrics.DEDUP_CHECK_HIT_RATE) == 0


def test_the_window_forgets_old_messages():
    telemetry = ConsumerTelemetry(dedup=True, window_seconds=0.2)
    telemetry.record(result="skipped", dedup_hit=True)
    assert telemetry.hit_rate() == 1.0
    time.sleep(0.3)
    telemetry.record(result="charged", side_effect_ms=1.0)
    assert telemetry.hit_rate() == 0.0


def test_lag_from_acknowledged_counts_records_past_the_commit():
    sent = [Sent("a", 0, 0), Sent("b", 0, 1), Sent("c", 0, 2), Sent("d", 1, 0)]
    assert lag_from_acknowledged(sent, {0: 2, 1: -1001}) == {0: 1, 1: 1}
    assert lag_from_acknowledged(sent, {0: 3, 1: 1}) == {0: 0, 1: 0}
