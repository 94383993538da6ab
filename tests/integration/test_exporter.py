"""The consumer's /metrics: the delivery-semantics metric names, served by a real consumer process and scraped."""

from __future__ import annotations

import time

import pytest
from prometheus_client import generate_latest

from effectively_once.observe import metrics
from effectively_once.observe.exporter import ConsumerTelemetry
from effectively_once.observe.scrape import Recorder, lag_from_acknowledged, parse_metrics, scrape
from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.producer import Sent

PER_CONSUMER = (metrics.DEDUP_CHECK_HIT_RATE, metrics.SIDE_EFFECT_DURATION_P99, metrics.RETRY_COUNT_P99)


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


def _wait_for(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true after {timeout} s")


@pytest.mark.integration
def test_a_consumer_process_serves_the_per_consumer_metrics(stack):
    with PaymentLab(stack, "both") as lab:
        lab.start_provider(latency_ms=2)
        lab.produce(10, seed=4)
        lab.produce_raw([b"not json"])
        consumer = lab.start_consumer(exit_when_idle=None, metrics_port=0)
        url = consumer.wait_for_metrics()
        page = _wait_for(lambda: (p := scrape(url)).get("messages_processed_total", result="charged") == 10
                         and p.get("dlq_messages_total", error_type="malformed") == 1 and p)
        for name in PER_CONSUMER:
            assert name in page.names(), f"{name} is not served"
        assert page.get("dedup_checks_total") == 10 and page.get(metrics.DEDUP_CHECK_HIT_RATE) == 0
        assert page.get("side_effect_duration_seconds_count") == 10
        assert page.get(metrics.SIDE_EFFECT_DURATION_P99) > 0.002, "the provider's 2 ms latency is in the p99"
        lag = _wait_for(lambda: scrape(url).by_label(metrics.CONSUMER_LAG_MESSAGES, "partition"))
        assert set(lag) <= {"0", "1", "2"} and all(v >= 0 for v in lag.values())

        # A second group reads the same records again: every dedup INSERT hits a 'done' row.
        replay = lab.start_consumer(exit_when_idle=None, metrics_port=0, group=f"{lab.group}.replay")
        replay_url = replay.wait_for_metrics()
        again = _wait_for(lambda: (p := scrape(replay_url)).get("dedup_checks_total") == 10 and p)
        assert again.get("dedup_check_hits_total", row_status="done") == 10
        assert again.get(metrics.DEDUP_CHECK_HIT_RATE) == 1.0
        assert lab.report().ok
        consumer.stop()
        replay.stop()
        assert not consumer.running and not replay.running


@pytest.mark.integration
def test_the_recorder_samples_lag_and_the_dlq_from_the_broker(stack):
    with PaymentLab(stack, "both") as lab:
        lab.start_provider()
        lab.produce(6, seed=2)
        lab.produce_raw([b"{broken"])
        with Recorder.for_lab(lab, interval=0.2) as recorder:
            first = recorder.sample()
            assert first[metrics.CONSUMER_LAG_MESSAGES] == 7 and first[metrics.DLQ_DEPTH] == 0
            lab.start_consumer(exit_when_idle=None, metrics_port=0)
            _wait_for(lambda: recorder.samples[-1].get(metrics.DLQ_DEPTH) == 1
                      and recorder.samples[-1].get(metrics.CONSUMER_LAG_MESSAGES) == 0)
            time.sleep(0.5)
        depth = recorder.series(metrics.DLQ_DEPTH, source=lab.topic)
        assert depth.values[0] == 0 and depth.values[-1] == 1
        assert recorder.series(metrics.DLQ_OLDEST_AGE_SECONDS).values[-1] > 0
        assert max(recorder.series("consumers_up").values) == 1
        assert recorder.errors == []
