"""Six delivery-semantics metrics, as pure functions (no I/O), a small time series, and the provider's
webhook counters' names.

One name per metric, used by the dashboard, the alert rules and the notebooks alike:

per broker
    ``consumer_lag_messages``   readable end of the partition minus committed offset, per partition
    ``dlq_depth``               messages waiting in the dead-letter queue, by source queue
    ``dlq_oldest_age_seconds``  how long the oldest DLQ message has waited (the maximum age, not a
                                percentile: one forgotten message among many fresh ones must show)
per consumer
    ``dedup_check_hit_rate``    share of dedup INSERTs blocked by the UNIQUE constraint
    ``side_effect_duration_p99``  p99 of the side effect's duration, in seconds
    ``retry_count_p99``         p99 of the retries a message needed

per provider (its ``/metrics``: webhook deliveries, at least once)
    ``webhook_events_total``              events queued for the shop's webhook endpoint
    ``webhook_deliveries_total``          POSTs sent to it, duplicates included
    ``webhook_delivery_retries_total``    attempts after an event's first attempt failed
    ``webhook_delivery_failures_total{reason}``  attempts without a 2xx: refused, timed_out, dropped
    ``webhook_duplicate_deliveries_total``  events sent again after a 2xx (a fault knob)
    ``webhook_events_pending``            events not delivered yet (a gauge)
    ``webhook_events_delivered_total``, ``webhook_events_given_up_total``

per webhook receiver (the shop's inbox, ``payments.receiver``'s ``/metrics``)
    ``webhook_inbox_events_total``        events recorded in the inbox for the first time
    ``webhook_inbox_duplicates_total``    inbox duplicate hits: deliveries of an event it already held
    ``webhook_inbox_refused_total{reason}``  deliveries answered 400 (signature, payload)

Every percentile here is the nearest-rank percentile (see ``percentile``).
Collecting the inputs (offsets, DLQ contents, consumer events) is the caller's job.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TypeVar

CONSUMER_LAG_MESSAGES = "consumer_lag_messages"
DLQ_DEPTH = "dlq_depth"
DLQ_OLDEST_AGE_SECONDS = "dlq_oldest_age_seconds"
DEDUP_CHECK_HIT_RATE = "dedup_check_hit_rate"
SIDE_EFFECT_DURATION_P99 = "side_effect_duration_p99"
RETRY_COUNT_P99 = "retry_count_p99"
METRIC_NAMES = (CONSUMER_LAG_MESSAGES, DLQ_DEPTH, DLQ_OLDEST_AGE_SECONDS, DEDUP_CHECK_HIT_RATE,
                SIDE_EFFECT_DURATION_P99, RETRY_COUNT_P99)

# The provider's webhook counters (payments.webhooks serves them; Prometheus adds _total to counters).
WEBHOOK_EVENTS = "webhook_events"
WEBHOOK_DELIVERIES = "webhook_deliveries"
WEBHOOK_DELIVERY_RETRIES = "webhook_delivery_retries"
WEBHOOK_DELIVERY_FAILURES = "webhook_delivery_failures"
WEBHOOK_DUPLICATE_DELIVERIES = "webhook_duplicate_deliveries"
WEBHOOK_EVENTS_PENDING = "webhook_events_pending"
WEBHOOK_EVENTS_DELIVERED = "webhook_events_delivered"
WEBHOOK_EVENTS_GIVEN_UP = "webhook_events_given_up"
WEBHOOK_METRIC_NAMES = (WEBHOOK_EVENTS, WEBHOOK_DELIVERIES, WEBHOOK_DELIVERY_RETRIES, WEBHOOK_DELIVERY_FAILURES,
                        WEBHOOK_DUPLICATE_DELIVERIES, WEBHOOK_EVENTS_PENDING, WEBHOOK_EVENTS_DELIVERED,
                        WEBHOOK_EVENTS_GIVEN_UP)
# The shop's webhook receiver: its inbox's counters (payments.receiver serves them).
INBOX_EVENTS = "webhook_inbox_events"
INBOX_DUPLICATES = "webhook_inbox_duplicates"
INBOX_REFUSED = "webhook_inbox_refused"
INBOX_METRIC_NAMES = (INBOX_EVENTS, INBOX_DUPLICATES, INBOX_REFUSED)

# What the consumer's dedup INSERT can report. A "hit" is each time the UNIQUE
# constraint blocks the INSERT, whatever the existing row's state.
DEDUP_INSERTED = "inserted"   # no row yet: a first delivery (a miss)
DEDUP_DONE = "done"           # the row is 'done': skip, the charge already happened
DEDUP_PENDING = "pending"     # the row is 'pending': a crash mid-charge, recover with the same key
DEDUP_HITS = frozenset({DEDUP_DONE, DEDUP_PENDING})
DEDUP_OUTCOMES = frozenset({DEDUP_INSERTED}) | DEDUP_HITS

# Whatever names a partition: 0, or ("charges", 0).
Partition = TypeVar("Partition", bound=Hashable)


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``.

    Sort the n values and take the one at rank ``ceil(q / 100 * n)`` (1-based):
    the smallest observed value such that at least q % of the values are at or
    below it. It is always one of the observed values (no interpolation), so
    the p99 of 10 durations is the largest one, and of 1000 it is the 990th.
    Raises ``ValueError`` on no values: a percentile of nothing is undefined.
    """
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentile of no values is undefined")
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100], got {q}")
    # round() guards against float noise such as 0.99 * 100 == 98.99999999999999.
    rank = math.ceil(round(q / 100 * len(ordered), 9))
    return ordered[max(rank, 1) - 1]


def p99(values: Iterable[float]) -> float:
    """The nearest-rank 99th percentile of ``values`` (see ``percentile``)."""
    return percentile(values, 99)


def consumer_lag_messages(end_offsets: Mapping[Partition, int], committed_offsets: Mapping[Partition, int],
                          start_offsets: Mapping[Partition, int] | None = None) -> dict[Partition, int]:
    """Per partition: how many messages are past the group's committed offset.

    ``end_offsets`` are the last offsets the group's consumers may read up to:
    the high watermark (the offset below which every in-sync replica holds the
    log; it can trail the log-end offset, the one the leader gives the next
    record) for ``read_uncommitted`` consumers, and the last stable offset (LSO,
    which stops before the first record of a transaction still open; KIP-98)
    for ``read_committed`` ones. Keys are whatever names a partition (``0`` or
    ``("charges", 0)``).
    A partition with no commit (missing, or negative as librdkafka reports it)
    lags from its first offset: ``start_offsets[p]``, else 0. Lag is never negative.
    """
    start_offsets = start_offsets or {}
    lag: dict[Partition, int] = {}
    for partition, end in end_offsets.items():
        committed = committed_offsets.get(partition)
        if committed is None or committed < 0:
            committed = start_offsets.get(partition, 0)
        lag[partition] = max(int(end) - int(committed), 0)
    return lag


def dlq_depth(sources: Iterable[str], known_sources: Iterable[str] = ()) -> dict[str, int]:
    """Messages in the dead-letter queue by source queue.

    ``sources`` holds the source queue of each message now in the DLQ;
    ``known_sources`` adds a 0 for queues with nothing dead-lettered, so that a
    dashboard shows them as healthy rather than missing.
    """
    depth = {source: 0 for source in known_sources}
    depth.update(Counter(sources))
    return depth


def dlq_oldest_age_seconds(first_seen_times: Iterable[float], now: float) -> float:
    """How long the oldest message now in the DLQ has waited, in seconds (0.0 when it is empty).

    ``first_seen_times`` are when each message entered the DLQ (seconds, same
    clock as ``now``). The maximum, not a p99: with a thousand messages
    dead-lettered a minute ago and one forgotten for a day, a p99 says one
    minute, and the forgotten payment is exactly what the alert is for. An
    empty DLQ has nothing waiting, hence 0.0.
    """
    ages = [max(now - t, 0.0) for t in first_seen_times]
    return max(ages, default=0.0)


def _dedup_outcome(event: Any) -> str | None:
    outcome: object
    if isinstance(event, str):
        outcome = event
    elif isinstance(event, Mapping):
        outcome = event.get("dedup")
        if outcome is None:
            return None  # another kind of consumer event
    else:
        raise TypeError(f"a dedup event is an outcome string or a mapping with a 'dedup' key, got {event!r:.60}")
    if not isinstance(outcome, str) or outcome not in DEDUP_OUTCOMES:
        raise ValueError(f"unknown dedup outcome {outcome!r}: expected one of {sorted(DEDUP_OUTCOMES)}")
    return outcome


def dedup_check_hit_rate(events: Iterable[Any]) -> float:
    """Share of dedup checks where the INSERT was blocked by the UNIQUE constraint (0.0 to 1.0).

    Each event is a dedup outcome (``"inserted"``, ``"done"``, ``"pending"``) or
    a mapping whose ``"dedup"`` key holds one; mappings without that key are
    other consumer events and are skipped. No checks at all gives 0.0.
    """
    outcomes = [o for o in map(_dedup_outcome, events) if o is not None]
    if not outcomes:
        return 0.0
    return sum(o in DEDUP_HITS for o in outcomes) / len(outcomes)


def side_effect_duration_p99(durations: Iterable[float]) -> float:
    """p99 of the side effect's durations in seconds (0.0 when none was measured)."""
    values = list(durations)
    return p99(values) if values else 0.0


def retry_count_p99(retry_counts: Iterable[int]) -> float:
    """p99 of how many retries each message needed (0.0 when no message was handled).

    Sustained high values usually point downstream, not at the consumer: the
    provider answers 429s or 5xx, or times out, and every call needs retries.
    """
    values = list(retry_counts)
    return p99(values) if values else 0.0


@dataclass(frozen=True)
class Series:
    """One metric over time: timestamps (seconds, increasing) and a value at each.

    ``labels`` say which series it is, e.g. ``{"source": "payments.charges"}``
    for a ``dlq_depth`` series.
    """

    name: str
    timestamps: tuple[float, ...]
    values: tuple[float, ...]
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestamps", tuple(float(t) for t in self.timestamps))
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if len(self.timestamps) != len(self.values):
            raise ValueError(f"series {self.name}: {len(self.timestamps)} timestamps but {len(self.values)} values")
        if any(b <= a for a, b in pairwise(self.timestamps)):
            raise ValueError(f"series {self.name}: timestamps must be strictly increasing")

    @classmethod
    def from_points(cls, name: str, points: Iterable[tuple[float, float]], **labels: str) -> Series:
        """A series from ``(timestamp, value)`` pairs (sorted by time here)."""
        ordered = sorted(points)
        return cls(name, tuple(t for t, _ in ordered), tuple(v for _, v in ordered), dict(labels))

    def __len__(self) -> int:
        return len(self.timestamps)

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return iter(zip(self.timestamps, self.values, strict=True))

    def between(self, start: float, end: float) -> Series:
        """The points with ``start <= timestamp <= end``."""
        kept = [(t, v) for t, v in self if start <= t <= end]
        return Series(self.name, tuple(t for t, _ in kept), tuple(v for _, v in kept), dict(self.labels))

    def label_text(self) -> str:
        """``{source="x"}``-style labels, or an empty string."""
        if not self.labels:
            return ""
        return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items())) + "}"


def series_from_samples(samples: Sequence[Mapping[str, Any]], name: str, time_key: str = "time") -> Series:
    """A series of metric ``name`` from a list of scraped samples (dicts holding a time and metric values)."""
    return Series.from_points(name, ((s[time_key], s[name]) for s in samples if name in s))
