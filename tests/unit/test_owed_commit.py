"""The owed offset commit, without a broker: when the loop commits, when a debt starts, ends, and is overdue."""

from __future__ import annotations

from effectively_once.payments.clocks import COMMIT_OWED_SECONDS, OwedCommit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Broker:
    """Takes a commit or refuses it, as told; a refused commit can take ``delay`` seconds of the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.up, self.delay, self.commits = clock, True, 0.0, 0

    def commit(self) -> bool:
        self.commits += 1
        if not self.up:
            self.clock.now += self.delay
        return self.up


def test_the_loop_commits_after_each_batch_and_not_while_idle_with_nothing_owed():
    now = FakeClock()
    owed = OwedCommit(clock=now)
    assert owed.due(records=3)
    now.now += 3600
    assert not owed.due(records=0), "no batch and nothing owed: nothing to commit"
    tried = owed.attempt(Broker(now).commit)
    assert (tried.committed, tried.owed_now, tried.paid_after) == (True, False, None)
    assert not owed.owed and not owed.overdue()


def test_a_refused_commit_is_owed_once_and_tried_again_each_second():
    now = FakeClock()
    owed, broker = OwedCommit(clock=now), Broker(now)
    broker.up = False
    first = owed.attempt(broker.commit)
    assert first.owed_now and not first.committed and owed.owed
    assert owed.since == 100.0
    now.now += 0.5
    assert not owed.due(records=0), "tried half a second ago"
    now.now += 0.5
    assert owed.due(records=0), "owed and tried a second ago: try again"
    again = owed.attempt(broker.commit)
    assert not again.owed_now, "still owed, not owed anew: the debt keeps its first date"
    assert owed.since == 100.0
    assert owed.due(records=1), "a batch commits at once, owed or not"


def test_an_owed_commit_that_goes_through_says_how_long_it_was_owed():
    now = FakeClock()
    owed, broker = OwedCommit(clock=now), Broker(now)
    broker.up, broker.delay = False, 2.0  # a synchronous commit to a broker that is away takes a while
    owed.attempt(broker.commit)
    assert owed.since == 100.0, "the debt dates from the start of the failed attempt, not its end"
    now.now = 130.0
    broker.up = True
    tried = owed.attempt(broker.commit)
    assert tried.committed and tried.paid_after == 30.0 and not tried.owed_now
    assert not owed.owed and not owed.due(records=0) and not owed.overdue()
    assert broker.commits == 2


def test_a_debt_older_than_the_limit_is_overdue_and_only_then():
    now = FakeClock()
    owed, broker = OwedCommit(limit=10.0, clock=now), Broker(now)
    broker.up = False
    owed.attempt(broker.commit)
    now.now += 10.0
    assert not owed.overdue(), "owed for exactly the limit: not yet"
    now.now += 0.1
    assert owed.overdue()
    assert OwedCommit().limit == COMMIT_OWED_SECONDS
