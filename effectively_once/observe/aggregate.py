"""Why a p99 computed inside each consumer cannot be added up across consumers, and what can.

Each consumer of the course serves ``side_effect_duration_p99``, a gauge it computes from
its own calls. A fleet has many consumers, and no arithmetic on their p99s gives the
fleet's p99: not the mean, not the maximum. What adds up is a histogram: each consumer
counts its calls per bucket (``side_effect_duration_seconds_bucket``), the counts of all
consumers are summed bucket by bucket, and the quantile is estimated from the sum, the
way Prometheus' ``histogram_quantile`` does in an alert rule.

``compare_quantiles(groups)`` puts the candidates side by side for any set of per-consumer
durations; ``two_consumers()`` is the example the notebook uses.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from effectively_once.observe.exporter import DURATION_BUCKETS
from effectively_once.observe.metrics import percentile


def bucket_counts(values: Sequence[float], bounds: Sequence[float] = DURATION_BUCKETS) -> list[int]:
    """Cumulative counts of ``values`` at or below each bound, then the total (the ``+Inf`` bucket)."""
    ordered = sorted(values)
    return [bisect.bisect_right(ordered, bound) for bound in bounds] + [len(ordered)]


def histogram_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[int]) -> float:
    """The ``q``-quantile (0 < q < 1) estimated from cumulative bucket counts, as Prometheus estimates it.

    Find the first bucket whose cumulative count reaches ``q`` times the total and
    interpolate linearly inside it, from the bucket below's upper bound (0 for the
    first) to its own. A quantile that falls in the ``+Inf`` bucket is the highest
    finite bound.
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    total = cumulative[-1]
    if total == 0:
        return math.nan
    rank = q * total
    index = next(i for i, count in enumerate(cumulative) if count >= rank)
    if index == len(bounds):
        return float(bounds[-1])
    lower = 0.0 if index == 0 else float(bounds[index - 1])
    below = 0 if index == 0 else cumulative[index - 1]
    in_bucket = cumulative[index] - below
    return lower + (float(bounds[index]) - lower) * (rank - below) / in_bucket


def bucket_of(value: float, bounds: Sequence[float] = DURATION_BUCKETS) -> tuple[float, float]:
    """The ``(lower, upper]`` bounds of the bucket that holds ``value``."""
    index = bisect.bisect_left(list(bounds), value)
    lower = 0.0 if index == 0 else float(bounds[index - 1])
    return (lower, float(bounds[index]) if index < len(bounds) else math.inf)


@dataclass(frozen=True)
class QuantileComparison:
    """Each consumer's own p99, what people do with them, the true fleet p99, and the histogram's estimate."""

    per_consumer: dict[str, float]
    calls: dict[str, int]
    true_p99: float
    histogram_p99: float
    bounds: tuple[float, ...]

    @property
    def mean_of_p99s(self) -> float:
        """The average of the consumers' p99 gauges: what a dashboard that averages them shows."""
        return sum(self.per_consumer.values()) / len(self.per_consumer)

    @property
    def max_of_p99s(self) -> float:
        """The largest of the consumers' p99 gauges."""
        return max(self.per_consumer.values())

    @property
    def histogram_bucket(self) -> tuple[float, float]:
        """The bucket the histogram's estimate lies in."""
        return bucket_of(self.histogram_p99, self.bounds)

    def rows(self) -> list[tuple[str, str]]:
        """(what, seconds) for a table."""
        rows = [(f"consumer {name}: its own p99 gauge ({self.calls[name]} calls)", f"{p99:.3f}")
                for name, p99 in self.per_consumer.items()]
        return rows + [("mean of the gauges", f"{self.mean_of_p99s:.3f}"),
                       ("max of the gauges", f"{self.max_of_p99s:.3f}"),
                       ("the fleet's true p99 (every call pooled)", f"{self.true_p99:.3f}"),
                       ("histogram_quantile(0.99) of the summed buckets", f"{self.histogram_p99:.3f}")]


def compare_quantiles(groups: Mapping[str, Sequence[float]],
                      bounds: Sequence[float] = DURATION_BUCKETS) -> QuantileComparison:
    """Per-consumer p99s, the pooled p99, and the p99 estimated from the consumers' summed histograms."""
    pooled = [value for values in groups.values() for value in values]
    summed = [sum(column) for column in zip(*(bucket_counts(v, bounds) for v in groups.values()), strict=True)]
    return QuantileComparison({name: percentile(values, 99) for name, values in groups.items()},
                              {name: len(values) for name, values in groups.items()},
                              percentile(pooled, 99), histogram_quantile(0.99, bounds, summed), tuple(bounds))


def two_consumers() -> dict[str, list[float]]:
    """Consumer A made 990 calls of 20 ms; consumer B, behind one slow connection, 10 calls of 2 s."""
    return {"A": [0.020] * 990, "B": [2.0] * 10}
