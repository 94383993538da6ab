"""Scrape the consumers' ``/metrics`` and the broker over time into ``Series``.

``parse_metrics`` reads Prometheus' text format with ``prometheus_client``'s
own parser; ``scrape(url)`` fetches and parses one endpoint.

``Recorder`` samples a running pipeline in a background thread, every
``interval`` seconds, the way a Prometheus server and a lag exporter would:

- from every live consumer's ``/metrics``: the dedup counters (the hit rate at
  a sample is the hits of the last ``rate_window`` seconds over the checks of
  the same seconds, what PromQL's ``rate(hits[w]) / rate(checks[w])`` gives) and the gauges
  ``side_effect_duration_p99`` and ``retry_count_p99`` (the worst consumer; NaN, a gap in a plot,
  when no live consumer called the provider within its window);
- from the broker, whatever the consumers' state: ``consumer_lag_messages`` per
  partition, as the records the producer had acknowledged that the group has
  not committed past yet, and for comparison the same from the end offsets the
  broker reports (``lag_from_watermarks``). That end offset is the high
  watermark, the offset below which every in-sync replica holds the log (it can
  trail the log-end offset, the one the next record will get); a
  ``read_committed`` group can only read up to the last stable offset (KIP-98),
  which stops before an open transaction. Tansu reports high watermarks short
  of the last record, so the second measure undercounts there;
- from the dead-letter topic, read from its start: ``dlq_depth`` by source
  topic and ``dlq_oldest_age_seconds`` (the maximum age) from each record's
  ``dlq.first_seen`` header.

Times are seconds since the recorder started. ``recorder.series(name, **labels)``
gives a ``Series`` the alert rules of ``observe.alerts`` evaluate.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from effectively_once.kafka import assign_topic, client_settings, committed_offsets, poll_records, quiet_logger
from effectively_once.observe import metrics
from effectively_once.observe.metrics import Series
from effectively_once.protocol import DLQ_FIRST_SEEN, DLQ_SOURCE_TOPIC

if TYPE_CHECKING:
    from effectively_once.stack import Stack

# Lag measured from the end offset the broker reports (its high watermark), not from acknowledged records.
LAG_FROM_WATERMARKS = "lag_from_watermarks"
CONSUMERS_UP = "consumers_up"

LabelSet = frozenset  # of (label, value) pairs
WEBHOOK_PREFIX = "webhook_"


@dataclass(frozen=True)
class Scrape:
    """One endpoint's samples: ``(name, labels) -> value`` (histogram and counter suffixes kept)."""

    url: str
    values: Mapping[tuple[str, LabelSet], float] = field(default_factory=dict)

    def get(self, name: str, default: float | None = None, **labels: str) -> float | None:
        """The value of sample ``name`` with exactly these ``labels``."""
        return self.values.get((name, frozenset(labels.items())), default)

    def total(self, name: str) -> float:
        """The sum of sample ``name`` over all its label sets (0 when absent)."""
        return sum(v for (n, _), v in self.values.items() if n == name)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Sample ``name`` keyed by the value of one of its labels."""
        return {dict(labels)[label]: v for (n, labels), v in self.values.items() if n == name and label in dict(labels)}

    def names(self) -> set[str]:
        """Every sample name in the scrape."""
        return {n for n, _ in self.values}


def parse_metrics(text: str, url: str = "") -> Scrape:
    """Parse Prometheus' text exposition format."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return Scrape(url, values)


def scrape(url: str, timeout: float = 2.0, client: httpx.Client | None = None) -> Scrape:
    """Fetch and parse one ``/metrics`` endpoint (raises ``httpx.HTTPError`` when it does not answer)."""
    response = (client or httpx).get(url, timeout=timeout)
    response.raise_for_status()
    return parse_metrics(response.text, url)


def lag_from_acknowledged(sent: Iterable[Any], committed: Mapping[int, int]) -> dict[int, int]:
    """Per partition: how many acknowledged records sit at or past the group's committed offset.

    ``sent`` holds what the producer's delivery reports said (``partition``,
    ``offset``); a partition without a commit lags by all its records.
    """
    lag: dict[int, int] = {}
    for record in sent:
        lag.setdefault(record.partition, 0)
        if record.offset >= committed.get(record.partition, -1):
            lag[record.partition] += 1
    return lag


def first_seen_seconds(value: str | None) -> float | None:
    """The ``dlq.first_seen`` header (ISO 8601 with a zone) as Unix seconds, or None."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class _Broker:
    """Committed offsets, high watermarks and the DLQ's records, read by one recorder thread."""

    def __init__(self, bootstrap: str, topic: str, group: str, dlq_topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic, self.dlq_topic = topic, dlq_topic
        # Same group id, never subscribed: it reads the group's commits without joining the group.
        self.offsets = Consumer({"bootstrap.servers": bootstrap, **client_settings(), "group.id": group,
                                 "enable.auto.commit": False, "logger": quiet_logger()})
        self.dlq = Consumer({"bootstrap.servers": bootstrap, **client_settings(), "group.id": f"{group}.dlq-watch",
                             "enable.auto.commit": False, "logger": quiet_logger()})
        self.dlq_assigned = False
        self.dlq_records: list[dict[str, str]] = []

    def committed(self, partitions: Sequence[int]) -> dict[int, int]:
        return committed_offsets(self.offsets, self.topic, partitions, timeout=5)

    def high_watermarks(self, partitions: Sequence[int]) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        return {p: self.offsets.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5, cached=False)[1]
                for p in partitions}

    def read_dlq(self, to_end: bool = False) -> list[dict[str, str]]:
        """Headers of every DLQ record so far (read incrementally, from the topic's start).

        A sample takes what one short fetch brings; ``to_end`` (the last sample) reads on until the
        reader's position reaches each partition's high watermark, so a record written just before
        the end is counted however slow the fetch is.
        """
        if not self.dlq_assigned:
            self.dlq_assigned = bool(assign_topic(self.dlq, self.dlq_topic, timeout=5))
            if not self.dlq_assigned:
                return self.dlq_records  # no consumer has created the topic yet
        self._take(poll_records(self.dlq, quiet=0, batch=500, wait=0.05))
        if to_end:
            deadline = time.monotonic() + 15
            while not self._dlq_at_end() and time.monotonic() < deadline:
                self._take(poll_records(self.dlq, quiet=0, batch=500, wait=0.2))
        return self.dlq_records

    def _take(self, records: Iterable[Any]) -> None:
        self.dlq_records += [{k: (v or b"").decode("utf-8", "replace") for k, v in (r.headers() or [])}
                             for r in records]

    def _dlq_at_end(self) -> bool:
        """True once the DLQ reader's position is at every assigned partition's high watermark."""
        for tp in self.dlq.position(self.dlq.assignment()):
            high = self.dlq.get_watermark_offsets(tp, timeout=5, cached=False)[1]
            if high > 0 and tp.offset < high:  # a position of -1001 (nothing fetched yet) is below any watermark
                return False
        return True

    def close(self) -> None:
        self.offsets.close()
        self.dlq.close()


class Recorder:
    """Samples consumers' ``/metrics``, the group's lag and the DLQ every ``interval`` s in a thread.

    ``targets()`` returns the ``/metrics`` URLs to scrape now; ``acknowledged()``
    the records the producer has had acknowledged (objects with ``partition``
    and ``offset``). ``provider()``, when given, returns the payment
    provider's ``/metrics`` URL (None while it is down): each sample then
    carries its webhook counters (``metrics.WEBHOOK_METRIC_NAMES``, by their
    exposed names, ``webhook_deliveries_total``...); ``receiver()`` likewise
    the webhook receiver's, with its inbox counters (``metrics.INBOX_METRIC_NAMES``). Use it as a context
    manager, or ``start()`` and ``stop()``.
    """

    def __init__(self, *, bootstrap: str, topic: str, group: str, dlq_topic: str,
                 targets: Callable[[], list[str]], acknowledged: Callable[[], list[Any]],
                 partitions: Sequence[int] = (0, 1, 2), interval: float = 0.25, rate_window: float = 2.0,
                 provider: Callable[[], str | None] | None = None,
                 receiver: Callable[[], str | None] | None = None) -> None:
        self.bootstrap, self.topic, self.group, self.dlq_topic = bootstrap, topic, group, dlq_topic
        self.targets, self.acknowledged, self.provider = targets, acknowledged, provider
        self.receiver = receiver
        self.partitions, self.interval, self.rate_window = tuple(partitions), interval, rate_window
        self.samples: list[dict[str, Any]] = []
        self.marks: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._previous: dict[str, tuple[float, float]] = {}   # url -> (checks, hits) at its last scrape
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker: _Broker | None = None
        self.t0 = time.time()

    @classmethod
    def for_lab(cls, lab, interval: float = 0.25, rate_window: float = 2.0, webhooks: bool = False) -> Recorder:
        """A recorder of a ``PaymentLab``: its consumers started with ``metrics_port``, its topic and DLQ; with
        ``webhooks``, its provider's webhook counters too."""
        def targets() -> list[str]:
            return [c.metrics_url for c in list(lab.consumers) if c.running and c.metrics_url]

        def provider() -> str | None:
            return f"{lab.provider.url}/metrics" if lab.provider is not None and lab.provider.running else None

        def receiver() -> str | None:
            found = getattr(lab, "receiver", None)
            return f"{found.base_url}/metrics" if found is not None and found.running else None

        partitions = range(_partition_count(lab.stack, lab.topic))
        return cls(bootstrap=lab.stack.kafka_bootstrap, topic=lab.topic, group=lab.group, dlq_topic=lab.dlq_topic,
                   targets=targets, acknowledged=lambda: list(lab.sent), partitions=partitions, interval=interval,
                   rate_window=rate_window, provider=provider if webhooks else None,
                   receiver=receiver if webhooks else None)

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> Recorder:
        """Start sampling (t = 0 is now)."""
        self._broker = _Broker(self.bootstrap, self.topic, self.group, self.dlq_topic)
        self.t0 = time.time()
        self._thread = threading.Thread(target=self._run, name="metrics-recorder", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Take one last sample, stop the thread and close the broker connections."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(30)
            self._thread = None
            self.sample(final=True)
        if self._broker is not None:
            self._broker.close()
            self._broker = None
        atexit.unregister(self.stop)

    def __enter__(self) -> Recorder:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception as exc:  # a broker hiccup must not end the recording
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def now(self) -> float:
        """Seconds since the recorder started."""
        return time.time() - self.t0

    def mark(self, label: str) -> float:
        """Note that something happened now (a kill, a deploy); returns its time."""
        t = self.now()
        self.marks.append((t, label))
        return t

    # -- one sample ----------------------------------------------------------------------
    def sample(self, final: bool = False) -> dict[str, Any]:
        """Scrape every target, the group's offsets and the DLQ once; append and return the sample.

        ``final`` (the sample ``stop`` takes) reads the DLQ to its end rather than one fetch of it.
        """
        wall = time.time()
        checks = hits = 0.0
        p99s: dict[str, list[float]] = {metrics.SIDE_EFFECT_DURATION_P99: [], metrics.RETRY_COUNT_P99: []}
        up = 0
        for url in self.targets():
            try:
                result = scrape(url, timeout=1.0)
            except httpx.HTTPError:
                continue  # it died between the listing and the scrape: its last counts are lost, as in Prometheus
            up += 1
            now_checks, now_hits = result.total("dedup_checks_total"), result.total("dedup_check_hits_total")
            before_checks, before_hits = self._previous.get(url, (0.0, 0.0))
            checks += now_checks - before_checks
            hits += now_hits - before_hits
            self._previous[url] = (now_checks, now_hits)
            for name in p99s:
                value = result.get(name)
                if value is not None and not math.isnan(value):  # NaN: no provider call in its window
                    p99s[name].append(value)
        t = wall - self.t0
        # Like PromQL's rate(hits[w]) / rate(checks[w]): the counts of the last rate_window seconds.
        recent = [s for s in self.samples if s["time"] > t - self.rate_window]
        window_checks = checks + sum(s["dedup_checks"] for s in recent)
        window_hits = hits + sum(s["dedup_hits"] for s in recent)
        sample: dict[str, Any] = {
            "time": t, CONSUMERS_UP: up, "dedup_checks": checks, "dedup_hits": hits,
            metrics.DEDUP_CHECK_HIT_RATE: window_hits / window_checks if window_checks else 0.0,
            **{name: max(values, default=math.nan) for name, values in p99s.items()},
        }
        sample.update(self._webhook_counts())
        broker = self._broker
        if broker is not None:
            committed = broker.committed(self.partitions)
            lag = lag_from_acknowledged(self.acknowledged(), committed)
            sample["lag_by_partition"] = {p: lag.get(p, 0) for p in self.partitions}
            sample[metrics.CONSUMER_LAG_MESSAGES] = sum(sample["lag_by_partition"].values())
            from_watermarks = metrics.consumer_lag_messages(broker.high_watermarks(self.partitions), committed)
            sample[LAG_FROM_WATERMARKS] = sum(from_watermarks.values())
            dlq = broker.read_dlq(to_end=final)
            depth = metrics.dlq_depth((h.get(DLQ_SOURCE_TOPIC, "?") for h in dlq), known_sources=[self.topic])
            sample["dlq_depth_by_source"] = depth
            sample[metrics.DLQ_DEPTH] = sum(depth.values())
            seen = [t for t in (first_seen_seconds(h.get(DLQ_FIRST_SEEN)) for h in dlq) if t is not None]
            sample[metrics.DLQ_OLDEST_AGE_SECONDS] = metrics.dlq_oldest_age_seconds(seen, wall)
        self.samples.append(sample)
        return sample

    def _webhook_counts(self) -> dict[str, float]:
        """The provider's webhook counters and the receiver's inbox counters by exposed name; none of a process
        while it is down (a gap, not a zero)."""
        counts: dict[str, float] = {}
        for source in (self.provider, self.receiver):
            url = source() if source is not None else None
            if url is None:
                continue
            try:
                result = scrape(url, timeout=1.0)
            except httpx.HTTPError:
                continue
            # Failures are summed over their reasons; ProviderProcess.metrics() has them one by one.
            counts.update({name: result.total(name) for name in result.names() if name.startswith(WEBHOOK_PREFIX)})
        return counts

    # -- reading the recording -----------------------------------------------------------
    def series(self, name: str, **labels: str) -> Series:
        """One metric over time; ``partition=`` for lag per partition, ``source=`` for DLQ depth per source."""
        points = []
        for s in list(self.samples):
            if name == metrics.CONSUMER_LAG_MESSAGES and "partition" in labels:
                value = s.get("lag_by_partition", {}).get(int(labels["partition"]))
            elif name == metrics.DLQ_DEPTH and "source" in labels:
                value = s.get("dlq_depth_by_source", {}).get(labels["source"])
            else:
                value = s.get(name)
            if value is not None:
                points.append((s["time"], value))
        deduped = dict(points)  # a final sample at the same instant as the last one replaces it
        return Series.from_points(name, deduped.items(), **labels)

    def window(self, start_label: str, end_label: str) -> tuple[float, float]:
        """``(start, end)`` between two marks, e.g. a deploy window for the alert rules."""
        times = dict((label, t) for t, label in self.marks)
        return times[start_label], times[end_label]


def high_watermarks(bootstrap: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """The high watermark the broker reports for each partition.

    It is the offset below which every in-sync replica holds the log, which can
    trail the log-end offset (the offset the leader gives the next record) while
    followers catch up; on one broker with every record acknowledged the two
    agree. A ``read_committed`` consumer reads only up to the last stable offset
    (LSO, KIP-98), before the first record of a transaction still open, so its
    lag is measured against the LSO, not against this.
    """
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": bootstrap, **client_settings(), "group.id": "eo-watermarks",
                      "logger": quiet_logger()})
    try:
        return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in partitions}
    finally:
        probe.close()


def _partition_count(stack: Stack, topic: str) -> int:
    admin = stack.admin()
    meta = admin.list_topics(topic, timeout=10).topics.get(topic)
    return len(meta.partitions) if meta is not None and meta.partitions else 1
