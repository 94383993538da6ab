"""The consumer's /metrics: the delivery-semantics metric names, served by a real consumer process and scraped."""

from __future__ import annotations

import time

from effectively_once.observe import metrics
from effectively_once.observe.scrape import Recorder, scrape
from effectively_once.payments.lab import PaymentLab

PER_CONSUMER = (metrics.DEDUP_CHECK_HIT_RATE, metrics.SIDE_EFFECT_DURATION_P99, metrics.RETRY_COUNT_P99)


def _wait_for(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true after {timeout} s")


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
