"""A lease on a dedup row, and the fencing token that makes it safe: two workers, one message, one stall.

    claim:  INSERT the row with a token of 1, or take over a 'pending' row whose lease
            (locked_at + lease) has expired; either way the token grows by one
    write:  lease only   UPDATE dedup SET status = 'done', result = ... WHERE msg_id = ...
            fenced       ... AND token = :mine   (the storage refuses a token that moved on)

Worker A claims the message, checks that the lease is still its own, and
stalls past the expiry; worker B takes the lease over and completes; A wakes
up and writes. With the lease only, A's late write lands on top of B's result.
With the fencing token, the database refuses it: zero rows updated. Each
worker is a PostgreSQL connection of its own; both run in one thread, one
step after the other, so the story is the same on every run.

    with LeaseLab(stack) as lab:
        story = lab.run_story(fenced=True)
        story.timeline          # who did what, with which token, and how many rows it wrote
        story.row               # the dedup row at the end
"""

from __future__ import annotations

import atexit
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg

from effectively_once.db import columns
from effectively_once.payments.lab_reports import Table

if TYPE_CHECKING:
    from effectively_once.stack import Stack

SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    msg_id    text PRIMARY KEY,
    status    text        NOT NULL DEFAULT 'pending',
    owner     text        NOT NULL,
    locked_at timestamptz NOT NULL,
    token     bigint      NOT NULL,
    result    text
)
"""

LEASE_SECONDS = 1.0
STALL_MARGIN = 0.3  # how far past the expiry the stalled worker sleeps


def migrate(conn: psycopg.Connection) -> None:
    """Create the dedup table with its lease columns (``owner``, ``locked_at``, ``token``) if missing."""
    conn.execute(SCHEMA)


def claim(conn: psycopg.Connection, msg_id: str, worker: str, lease_seconds: float = LEASE_SECONDS) -> int | None:
    """Claim ``msg_id`` for ``worker`` and return its fencing token, or None while someone else's lease runs.

    A new message gets its row with token 1. A 'pending' row whose lease
    (``locked_at`` + ``lease_seconds``) has expired is taken over: new owner,
    new ``locked_at``, token + 1. A live lease, or a row already 'done', is
    left alone. ``clock_timestamp()`` is the database's clock, so every
    worker measures the lease on the same clock.
    """
    row = conn.execute(
        "INSERT INTO dedup (msg_id, owner, locked_at, token) VALUES (%s, %s, clock_timestamp(), 1)"
        " ON CONFLICT (msg_id) DO UPDATE SET owner = EXCLUDED.owner, locked_at = clock_timestamp(),"
        "                                    token = dedup.token + 1"
        " WHERE dedup.status = 'pending'"
        "   AND dedup.locked_at < clock_timestamp() - make_interval(secs => %s)"
        " RETURNING token",
        (msg_id, worker, lease_seconds)).fetchone()
    return None if row is None else row[0]


def holds_lease(conn: psycopg.Connection, msg_id: str, worker: str, lease_seconds: float = LEASE_SECONDS) -> bool:
    """True when ``worker`` owns the row and its lease has not expired (a check the worker makes, not the storage)."""
    row = conn.execute("SELECT owner = %s AND locked_at >= clock_timestamp() - make_interval(secs => %s)"
                       " FROM dedup WHERE msg_id = %s", (worker, lease_seconds, msg_id)).fetchone()
    return bool(row and row[0])


def write_with_lease(conn: psycopg.Connection, msg_id: str, worker: str, result: str) -> int:
    """Record ``result`` as a worker that trusts its lease: the storage checks nothing. Return the rows updated."""
    return conn.execute("UPDATE dedup SET status = 'done', owner = %s, result = %s WHERE msg_id = %s",
                        (worker, result, msg_id)).rowcount


def write_fenced(conn: psycopg.Connection, msg_id: str, worker: str, result: str, token: int) -> int:
    """Record ``result`` only if the row still carries ``token``; return the rows updated (0: fenced off).

    The check and the write are one statement, so no takeover can slip in
    between them: a worker whose lease moved on to a larger token writes nothing.
    """
    return conn.execute("UPDATE dedup SET status = 'done', owner = %s, result = %s WHERE msg_id = %s AND token = %s",
                        (worker, result, msg_id, token)).rowcount


@dataclass
class LeaseStory:
    """One run of the story: the steps in order and the dedup row they left behind."""

    fenced: bool
    steps: list[tuple] = field(default_factory=list)
    row: Table | None = None

    def step(self, worker: str, action: str, token: int | None = None, rows: int | None = None,
             outcome: str = "") -> None:
        """Append one step to the timeline."""
        self.steps.append((len(self.steps) + 1, worker, action, token, rows, outcome))

    @property
    def timeline(self) -> Table:
        """The steps as a table: who, what, with which token, how many rows it wrote, what came of it."""
        title = "fenced by token" if self.fenced else "lease only"
        return Table(f"timeline, {title}", ["step", "worker", "action", "token", "rows updated", "outcome"],
                     self.steps)

    def rows_written_by(self, worker: str) -> list[int]:
        """The rows-updated count of each write ``worker`` made, in order."""
        return [s[4] for s in self.steps if s[1] == worker and s[4] is not None]

    def tokens_of(self, worker: str) -> list[int]:
        """The tokens ``worker`` obtained by claiming, in order."""
        return [s[3] for s in self.steps if s[1] == worker and s[2] == "claim" and s[3] is not None]


class LeaseLab:
    """A private database with the lease-carrying dedup table; ``stop()`` drops it."""

    def __init__(self, stack: Stack, lease_seconds: float = LEASE_SECONDS) -> None:
        self.stack = stack
        self.lease_seconds = lease_seconds
        self._token = uuid.uuid4().hex[:8]
        self._database = f"leases_{self._token}"
        self.dsn = stack.create_database(self._database)
        self._stopped = False
        atexit.register(self.stop)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)

    def run_story(self, *, fenced: bool, msg_id: str | None = None) -> LeaseStory:
        """Play the stalled worker's story once; ``fenced`` makes both workers write through ``write_fenced``.

        A claims, B is refused while A's lease runs, A checks its lease and
        stalls past the expiry (a real sleep of ``lease_seconds`` plus a
        margin), B takes over and writes, A wakes up and writes.
        """
        msg_id = msg_id or f"msg-{'fenced' if fenced else 'lease'}"
        story = LeaseStory(fenced)

        def write(conn: psycopg.Connection, worker: str, result: str, token: int) -> int:
            if fenced:
                return write_fenced(conn, msg_id, worker, result, token)
            return write_with_lease(conn, msg_id, worker, result)

        with psycopg.connect(self.dsn, autocommit=True) as a, psycopg.connect(self.dsn, autocommit=True) as b:
            token_a = claim(a, msg_id, "A", self.lease_seconds)
            if token_a is None:
                raise RuntimeError(f"{msg_id} was claimed already: run each story with a new msg_id")
            story.step("A", "claim", token_a, outcome="lease granted")
            early = claim(b, msg_id, "B", self.lease_seconds)
            story.step("B", "claim", early, outcome="refused: A's lease runs" if early is None else "lease granted")
            mine = holds_lease(a, msg_id, "A", self.lease_seconds)
            story.step("A", "check lease, then stall", token_a,
                       outcome="still mine; sleeps past the expiry" if mine else "lost already")
            time.sleep(self.lease_seconds + STALL_MARGIN)
            token_b = claim(b, msg_id, "B", self.lease_seconds)
            story.step("B", "claim", token_b, outcome="took over the expired lease" if token_b else "refused")
            if token_b is not None:
                rows = write(b, "B", "charged by B", token_b)
                story.step("B", "write result", token_b, rows, "written" if rows else "refused")
            rows = write(a, "A", "charged by A", token_a)
            story.step("A", "wake up, write result", token_a, rows,
                       "written over B's result" if rows else "refused: the token moved on")
            cur = a.execute("SELECT msg_id, status, owner, token, result FROM dedup WHERE msg_id = %s", (msg_id,))
            story.row = Table("the dedup row at the end", columns(cur), cur.fetchall())
        return story

    def stop(self) -> None:
        """Drop the database."""
        if self._stopped:
            return
        self._stopped = True
        self.stack.drop_database(self._database)
        atexit.unregister(self.stop)

    def __enter__(self) -> LeaseLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
