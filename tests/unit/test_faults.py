"""Faults without a broker: the consumer's idle clock, and a stack that revives only its dead processes."""

from __future__ import annotations

import os

from effectively_once.payments.clocks import IdleClock


# -- the idle clock, without a broker -------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_idle_clock_counts_only_time_with_an_assignment_and_no_records():
    now = FakeClock()
    clock = IdleClock(1.0, grace=3.0, clock=now)
    now.now += 60  # a minute waiting for the first assignment
    assert not clock.tick(assigned=False, records=0)
    clock.reset()  # assigned: the first fetch gets the grace
    now.now += 2.0
    assert not clock.tick(assigned=True, records=0)
    now.now += 1.0
    assert clock.tick(assigned=True, records=0), "3 s assigned and nothing fetched is idle"


def test_time_waiting_for_a_rebalance_is_not_idle():
    now = FakeClock()
    clock = IdleClock(1.0, grace=3.0, clock=now)
    clock.reset()
    assert not clock.tick(assigned=True, records=5)
    now.now += 0.9
    assert not clock.tick(assigned=True, records=0)
    # A rebalance takes the partitions away for 10 s: not idle, however long it lasts.
    for _ in range(10):
        now.now += 1.0
        assert not clock.tick(assigned=False, records=0)
    clock.reset()  # partitions back: a fresh grace for the first fetch
    now.now += 2.9
    assert not clock.tick(assigned=True, records=0)
    assert clock.tick(assigned=True, records=0) is False
    now.now += 0.2
    assert clock.tick(assigned=True, records=0)
    now.now += 5
    assert not clock.tick(assigned=True, records=1), "a record resets the clock"
    now.now += 1.0
    assert clock.tick(assigned=True, records=0), "after a record the limit is exit_when_idle itself"


def test_without_a_limit_the_clock_never_fires():
    now = FakeClock()
    clock = IdleClock(None, clock=now)
    clock.reset()
    now.now += 1e6
    assert not clock.tick(assigned=True, records=0)


def test_a_stack_revives_only_its_dead_processes():
    import subprocess
    import sys

    from effectively_once.stack import Stack

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stack = Stack(backend="embedded", kafka_bootstrap="127.0.0.1:9", base_dsn="postgresql://x@127.0.0.1:9/x",
                  pids={"broker": gone.pid, "postgres": os.getpid()})
    calls: list[str] = []
    stack._revivers.update(broker=lambda: calls.append("broker") or 4242,
                           postgres=lambda: calls.append("postgres") or 4343)
    assert stack.revive() == ["broker"] and calls == ["broker"]
    assert stack.pids == {"broker": 4242, "postgres": os.getpid()}
