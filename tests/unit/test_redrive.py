"""The redrive's token bucket and DLQ headers, without a broker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effectively_once.incidents import redrive as rd


class FakeClock:
    """A clock that moves only when told to (or when someone sleeps on it)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# -- token bucket ---------------------------------------------------------------------------------
def test_a_full_bucket_grants_its_burst_then_waits():
    clock = FakeClock()
    bucket = rd.TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert bucket.delay() == pytest.approx(0.1)
    clock.sleep(0.05)
    assert not bucket.try_acquire()
    clock.sleep(0.05)
    assert bucket.try_acquire()


def test_an_idle_bucket_saves_no_more_than_its_burst():
    clock = FakeClock()
    bucket = rd.TokenBucket(rate=5, burst=2, clock=clock)
    clock.sleep(3600)
    assert sum(bucket.try_acquire() for _ in range(10)) == 2


def test_acquire_drains_at_the_rate():
    clock = FakeClock()
    bucket = rd.TokenBucket(rate=50, burst=5, clock=clock)
    start = clock()
    waited = sum(bucket.acquire(sleep=clock.sleep) for _ in range(505))
    # the first 5 come from the full bucket, the other 500 at 50 per second
    assert clock() - start == pytest.approx(10.0)
    assert waited == pytest.approx(10.0)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 1000), burst=st.integers(1, 20),
       steps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300))
def test_never_more_than_rate_times_t_plus_burst(rate, burst, steps):
    clock = FakeClock()
    bucket = rd.TokenBucket(rate=rate, burst=burst, clock=clock)
    start = clock()
    granted = 0
    for step in steps:
        clock.sleep(step)
        while bucket.try_acquire():
            granted += 1
            assert granted <= rate * (clock() - start) + burst + 1e-6


def test_bad_bucket_settings_are_refused():
    with pytest.raises(ValueError, match="rate must be"):
        rd.TokenBucket(rate=0)
    with pytest.raises(ValueError, match="burst must be"):
        rd.TokenBucket(rate=1, burst=0.5)
    with pytest.raises(ValueError, match="at most"):
        rd.TokenBucket(rate=1, burst=2).delay(3)


def test_dlq_headers_are_recognised():
    assert rd.is_dlq_header("dlq-error") and rd.is_dlq_header("DLQ-Source-Offset") and rd.is_dlq_header("x-dlq-reason")
    assert not rd.is_dlq_header("msg_id") and not rd.is_dlq_header("traceparent")
