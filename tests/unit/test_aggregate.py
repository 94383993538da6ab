"""Per-consumer p99 gauges do not add up; summed histograms do (observe/aggregate.py)."""

from __future__ import annotations

import math
import random

import pytest

from effectively_once.observe.aggregate import (
    bucket_counts,
    bucket_of,
    compare_quantiles,
    histogram_quantile,
    two_consumers,
)
from effectively_once.observe.metrics import percentile

BOUNDS = (0.1, 0.5, 1.0)


def test_bucket_counts_are_cumulative_with_an_inf_bucket():
    assert bucket_counts([0.05, 0.1, 0.2, 0.7, 3.0], BOUNDS) == [2, 3, 4, 5]


def test_histogram_quantile_interpolates_inside_the_bucket_as_prometheus_does():
    # 10 observations: 4 up to 0.1, 4 more up to 0.5, 2 more up to 1.0. The median's rank 5 falls in
    # (0.1, 0.5], one of its four: 0.1 + 0.4 * 1/4.
    assert histogram_quantile(0.5, BOUNDS, [4, 8, 10, 10]) == pytest.approx(0.2)
    assert histogram_quantile(0.99, BOUNDS, [0, 0, 0, 5]) == 1.0, "in the +Inf bucket: the highest bound"
    assert math.isnan(histogram_quantile(0.5, BOUNDS, [0, 0, 0, 0]))
    with pytest.raises(ValueError):
        histogram_quantile(1.0, BOUNDS, [1, 1, 1, 1])


def test_the_two_consumer_example_fools_the_gauges_not_the_histogram():
    fleet = compare_quantiles(two_consumers())
    assert fleet.true_p99 == 0.020
    assert fleet.per_consumer == {"A": 0.020, "B": 2.0}
    assert fleet.mean_of_p99s == pytest.approx(1.01) and fleet.max_of_p99s == 2.0
    assert fleet.histogram_bucket == bucket_of(fleet.true_p99) == (0.01, 0.025)


def test_the_summed_histogram_always_lands_in_the_true_quantiles_bucket():
    rng = random.Random(5)
    for _ in range(50):
        groups = {name: [rng.lognormvariate(-3, 1.2) for _ in range(rng.randint(5, 400))] for name in "ABC"}
        fleet = compare_quantiles(groups)
        pooled = [v for values in groups.values() for v in values]
        assert fleet.true_p99 == percentile(pooled, 99)
        if fleet.true_p99 <= max(fleet.bounds):
            assert fleet.histogram_bucket == bucket_of(fleet.true_p99), groups
        assert min(fleet.per_consumer.values()) <= fleet.true_p99 <= max(fleet.per_consumer.values())
