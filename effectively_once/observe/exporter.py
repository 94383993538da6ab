"""The consumer's telemetry: Prometheus metrics on ``/metrics`` and a span per message.

``ConsumerTelemetry`` is fed by the poll loop (``record`` for each message,
``update_lag`` as it goes) and serves, in Prometheus' text format:

raw material, as Prometheus likes it (a query computes rates from counters)
    ``dedup_checks_total``                     dedup INSERTs tried
    ``dedup_check_hits_total{row_status}``     INSERTs blocked by the UNIQUE constraint ('done' or 'pending' row)
    ``side_effect_duration_seconds``           histogram of the provider call (retries included)
    ``retry_count``                            histogram of the retries each provider call needed
    ``dlq_messages_total{error_type}``         records this consumer sent to the dead-letter topic
    ``messages_processed_total{result}``       charged, replayed, recovered, skipped, dead_lettered
the per-consumer metrics, by name, over the last ``window_seconds``
    ``dedup_check_hit_rate``, ``side_effect_duration_p99`` (seconds), ``retry_count_p99``
    (the two p99s are NaN for a window without a provider call: a percentile of nothing is
    undefined, not zero, as PromQL's histogram_quantile also answers,
    https://github.com/prometheus/prometheus/issues/6645; a plot draws it as a gap)
    ``consumer_lag_messages{topic,partition}`` the client's cached end offset minus this consumer's position

The lag a consumer reports about itself has two blind spots, which is why lag
belongs with the broker's metrics: it vanishes when the consumer dies (exactly
when lag grows), and it trusts the end offset the broker reports, which Tansu
reports short of the last record. (For a ``read_committed`` consumer the end
that matters is the last stable offset, not the high watermark: records after
an open transaction cannot be read yet.) ``observe.scrape`` therefore also
measures lag from outside, from the records the producer had acknowledged.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from effectively_once.observe import metrics, spans

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RETRY_BUCKETS = (0, 1, 2, 3, 5, 8, 13)
DEFAULT_WINDOW_SECONDS = 30.0
LAG_EVERY_SECONDS = 0.25


class ConsumerTelemetry:
    """Metrics (own registry) and spans of one consumer process.

    ``dedup`` says whether the consumer runs a dedup layer: without one there
    is no dedup check to count. ``group`` is the consumer group, recorded on
    every message span as ``messaging.consumer.group.name``.
    """

    def __init__(self, *, dedup: bool = True, window_seconds: float = DEFAULT_WINDOW_SECONDS,
                 registry: CollectorRegistry | None = None, group: str | None = None) -> None:
        self.dedup, self.window_seconds, self.group = dedup, window_seconds, group
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.dedup_checks = Counter("dedup_checks", "Dedup INSERTs tried", registry=r)
        self.dedup_hits = Counter("dedup_check_hits", "Dedup INSERTs blocked by the UNIQUE constraint",
                                  ["row_status"], registry=r)
        for status in (metrics.DEDUP_DONE, metrics.DEDUP_PENDING):
            self.dedup_hits.labels(status)  # served as 0 from the start, so a rate has a baseline
        self.side_effect = Histogram("side_effect_duration_seconds", "Duration of the provider call, retries included",
                                     buckets=DURATION_BUCKETS, registry=r)
        self.retries = Histogram("retry_count", "Retries one provider call needed", buckets=RETRY_BUCKETS,
                                 registry=r)
        self.dlq_sends = Counter("dlq_messages", "Records sent to the dead-letter topic", ["error_type"], registry=r)
        self.processed = Counter("messages_processed", "Messages taken to their end", ["result"], registry=r)
        self.lag = Gauge(metrics.CONSUMER_LAG_MESSAGES, "Cached end offset minus this consumer's position",
                         ["topic", "partition"], registry=r)
        Gauge(metrics.DEDUP_CHECK_HIT_RATE, "Share of dedup checks that hit, over the window",
              registry=r).set_function(self.hit_rate)
        Gauge(metrics.SIDE_EFFECT_DURATION_P99, "p99 of the provider call's duration in seconds, over the window",
              registry=r).set_function(self.side_effect_p99)
        Gauge(metrics.RETRY_COUNT_P99, "p99 of retries per provider call, over the window",
              registry=r).set_function(self.retry_p99)
        # (monotonic time, dedup outcome or None, duration s or None, retries or None) per message
        self._recent: deque[tuple[float, str | None, float | None, int | None]] = deque()
        self._lock = threading.Lock()
        self._lag_labels: set[tuple[str, str]] = set()
        self._lag_checked = 0.0
        self._server: WSGIServer | None = None
        self.url: str | None = None

    # -- fed by the poll loop ------------------------------------------------------------
    def record(self, *, result: str, dedup_hit: bool = False, side_effect_ms: float | None = None,
               retries: int = 0, error: str | None = None) -> None:
        """Count one message's end (the same facts as its ``consumer_events`` row)."""
        self.processed.labels(result).inc()
        kind = (error or "").split(":", 1)[0] if result == "dead_lettered" else None
        if kind:
            self.dlq_sends.labels(kind).inc()
        outcome = None
        # A malformed record never reaches the step, so no dedup check was made for it.
        if self.dedup and kind != "malformed":
            self.dedup_checks.inc()
            outcome = metrics.DEDUP_INSERTED
            if dedup_hit:
                # A hit on a 'done' row ends in a skip; on a 'pending' row the charge is retried.
                outcome = metrics.DEDUP_DONE if result == "skipped" else metrics.DEDUP_PENDING
                self.dedup_hits.labels(outcome).inc()
        duration = side_effect_ms / 1000 if side_effect_ms is not None else None
        if duration is not None:
            self.side_effect.observe(duration)
        called_provider = duration is not None or kind in ("rejected", "retries_exhausted")
        if called_provider:
            self.retries.observe(retries)
        trace_attrs: dict[str, str | bool | int | float] = {
            "eo.result": result, "eo.dedup_hit": dedup_hit, "eo.retries": retries}
        if side_effect_ms is not None:
            trace_attrs["eo.side_effect_ms"] = side_effect_ms
        span = spans.trace.get_current_span()
        if span.is_recording():
            span.set_attributes(trace_attrs)
        with self._lock:
            self._recent.append((time.monotonic(), outcome, duration, retries if called_provider else None))

    def message_span(self, traceparent: str | bytes | None, msg_id: str | None, base: Mapping[str, Any]):
        """The ``process {topic}`` span of one message (see ``observe.spans.message_span``)."""
        attributes = {"messaging.system": "kafka", "messaging.destination.name": base.get("topic", ""),
                      "messaging.destination.partition.id": str(base.get("partition", "")),
                      "messaging.kafka.offset": int(base.get("offset", -1))}
        group = base.get("group") or self.group
        if group:
            attributes["messaging.consumer.group.name"] = group
        if msg_id:
            attributes["messaging.message.id"] = msg_id
        return spans.message_span(traceparent, attributes)

    def update_lag(self, consumer, force: bool = False) -> None:
        """Set ``consumer_lag_messages`` for each assigned partition from the cached high watermarks."""
        now = time.monotonic()
        if not force and now - self._lag_checked < LAG_EVERY_SECONDS:
            return
        self._lag_checked = now
        try:
            assignment = consumer.assignment()
            positions = consumer.position(assignment) if assignment else []
        except Exception:
            return  # the consumer is closing; the next call will try again
        seen = set()
        for tp in positions:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high is None or high < 0 or tp.offset < 0:
                continue  # nothing fetched yet for this partition
            labels = (tp.topic, str(tp.partition))
            self.lag.labels(*labels).set(max(high - tp.offset, 0))
            seen.add(labels)
        for labels in self._lag_labels - seen:  # revoked partitions are another consumer's now
            self.lag.remove(*labels)
        self._lag_labels = seen

    # -- the per-consumer metrics over the window ---------------------------------------
    def _window(self) -> list[tuple[float, str | None, float | None, int | None]]:
        cutoff = time.monotonic() - self.window_seconds
        with self._lock:
            while self._recent and self._recent[0][0] < cutoff:
                self._recent.popleft()
            return list(self._recent)

    def hit_rate(self) -> float:
        """``dedup_check_hit_rate`` over the window."""
        return metrics.dedup_check_hit_rate([o for _, o, _, _ in self._window() if o is not None])

    def side_effect_p99(self) -> float:
        """``side_effect_duration_p99`` (seconds) over the window; NaN when no provider call fell in it."""
        durations = [d for _, _, d, _ in self._window() if d is not None]
        return metrics.side_effect_duration_p99(durations) if durations else math.nan

    def retry_p99(self) -> float:
        """``retry_count_p99`` over the window; NaN when no provider call fell in it."""
        retries = [r for _, _, _, r in self._window() if r is not None]
        return metrics.retry_count_p99(retries) if retries else math.nan

    # -- serving -------------------------------------------------------------------------
    def serve(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Serve ``/metrics`` on ``host:port`` (0 = a free port) in a daemon thread; return its URL."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        self.url = f"http://{host}:{server.server_port}/metrics"
        return self.url

    def close(self) -> None:
        """Stop serving and flush the spans."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        provider = spans.trace.get_tracer_provider()
        if hasattr(provider, "force_flush"):
            provider.force_flush()
