"""The consumer loop's two clocks: how long it has been idle, and how long an offset commit has been owed.

Both take the time from a ``clock`` function (``time.monotonic`` unless a
test passes a fake one), so that what they decide can be checked without a
broker and without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# After an assignment the first fetch can take a while (offset look-ups, a busy machine):
# silence that short is not yet "idle".
FIRST_FETCH_GRACE = 3.0
# How long a consumer that holds partitions waits for the broker to report their end before
# silence counts as idle anyway (a broker that never sends the end of a partition).
END_WAIT = 60.0
# How long an offset commit the broker cannot take (it is down, or restarting) stays owed, retried
# each second while the consumer polls, before the consumer exits with EXIT_RESTART.
COMMIT_OWED_SECONDS = 120.0
# How often an owed commit is tried again while the consumer polls.
COMMIT_RETRY_SECONDS = 1.0


class IdleClock:
    """How long the consumer has held partitions and received no record: what ``--exit-when-idle`` counts.

    Time without an assignment (before the first one, or between a rebalance
    taking partitions away and handing some back) is not idle: the records
    may be waiting for this very consumer. Each new assignment also gets
    ``grace`` seconds before its first record, since the first fetch has to
    look its offsets up.
    """

    def __init__(self, limit: float | None, grace: float = FIRST_FETCH_GRACE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.grace, self.clock = limit, grace, clock
        self.since = self.assigned_at = clock()
        self.fetched = False  # a record arrived since the last assignment

    def reset(self) -> None:
        """A new assignment: the clock starts again, with the first-fetch grace."""
        self.since, self.fetched = self.clock(), False
        self.assigned_at = self.since

    def tick(self, *, assigned: bool, records: int, at_end: bool | None = None) -> bool:
        """Account for one poll; True when the consumer has been idle for ``limit`` seconds.

        ``at_end`` (when the consumer knows it) says whether the broker has
        reported the end of every assigned partition: until it has, silence is
        a slow fetch (a busy machine, a room of thirty), not idleness, for up
        to ``END_WAIT`` seconds after the assignment.
        """
        now = self.clock()
        if records:
            self.since, self.fetched = now, True
            return False
        if not assigned:
            self.since = self.assigned_at = now  # waiting for a rebalance: not idle
            return False
        if at_end is False and now - self.assigned_at < END_WAIT:
            self.since = now
            return False
        if self.limit is None:
            return False
        return now - self.since >= (self.limit if self.fetched or at_end else max(self.limit, self.grace))


@dataclass(frozen=True)
class CommitTry:
    """What one commit attempt changed: ``owed_now`` when it made a commit owed, ``paid_after`` (the
    seconds it had been owed) when it paid an owed one; neither when nothing changed."""

    committed: bool
    owed_now: bool = False
    paid_after: float | None = None


class OwedCommit:
    """An offset commit the broker could not take: owed, tried again, and given up on after ``limit`` s.

    Every record up to the consumer's position was recorded, so a commit the
    broker refused is owed, not lost: the next one covers it. The loop commits
    after each batch (``due``), and while a commit is owed also every
    ``retry_every`` seconds without one. There are three ways out: a commit
    goes through (``CommitTry.paid_after``), the group took the partitions
    back meanwhile (the loop tells that apart by its assignment), or the debt
    is ``overdue`` and the consumer asks for a restart.
    """

    def __init__(self, limit: float = COMMIT_OWED_SECONDS, retry_every: float = COMMIT_RETRY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.retry_every, self.clock = limit, retry_every, clock
        self.since: float | None = None  # when the commit the broker could not take became owed
        self.last_try = 0.0

    @property
    def owed(self) -> bool:
        """True while a commit the broker refused has not gone through."""
        return self.since is not None

    def due(self, *, records: int) -> bool:
        """True when the loop should commit now: after a batch, or every ``retry_every`` s while one is owed."""
        return bool(records) or (self.since is not None and self.clock() - self.last_try >= self.retry_every)

    def attempt(self, commit: Callable[[], bool]) -> CommitTry:
        """Run ``commit`` (True when the broker took it) and account for what it changed.

        The debt dates from the start of the first failed attempt, since a
        synchronous commit to a broker that is away can itself take a while.
        """
        self.last_try = self.clock()
        committed = commit()
        if committed and self.since is not None:
            waited, self.since = self.last_try - self.since, None
            return CommitTry(committed, paid_after=waited)
        if not committed and self.since is None:
            self.since = self.last_try
            return CommitTry(committed, owed_now=True)
        return CommitTry(committed)

    def overdue(self) -> bool:
        """True when a commit has been owed for more than ``limit`` seconds: time to ask for a restart."""
        return self.since is not None and self.clock() - self.since > self.limit
