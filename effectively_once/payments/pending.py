"""The 'pending' dedup row: who may work on it (a row lock, an advisory lock), and when it is stuck.

A lease (``leases.py``) lets a second worker take a row over after a time, and so
needs a fencing token. PostgreSQL's own locks take the other side of the trade: a
lock is held by a database session, no one else gets it while that session lives,
and the server releases it the moment the session ends, however it ends.

    worker A:  BEGIN; SELECT ... FROM charges WHERE msg_id = :m AND status = 'pending' FOR UPDATE
               ... the provider call ...
               UPDATE charges SET status = 'done' ...; COMMIT
    worker B:  SELECT ... FOR UPDATE NOWAIT  -> refused while A's transaction is open
               SELECT ... FOR UPDATE SKIP LOCKED -> no row: someone is on it

``RowLockLab.run_story()`` plays that with two connections, one step after the
other; ``RowLockLab.holder_killed()`` SIGKILLs a child process that holds the lock
and shows B getting the row at once; ``RowLockLab.advisory()`` does the same with
``pg_try_advisory_lock`` on a number derived from the msg_id.

``stuck_pending(conn, older_than_seconds)`` is the sweeper's query: 'pending' rows
that no one has touched for longer than the provider keeps an Idempotency-Key. Such
a row must not be charged again blindly: the key that would make a second call
harmless is gone, so the charge must be looked up at the provider first.
"""

from __future__ import annotations

import atexit
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from psycopg import errors

from effectively_once import runs
from effectively_once.db import columns
from effectively_once.lifetime import kill_now
from effectively_once.payments.lab import Table

if TYPE_CHECKING:
    from effectively_once.stack import Stack

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    msg_id     text PRIMARY KEY,
    status     text        NOT NULL CHECK (status IN ('pending', 'done')),
    charge_id  text,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

# Stripe (API v1) may prune an Idempotency-Key once it is at least 24 hours old: the
# shortest lifetime a caller can count on, so the sweeper's default age.
KEY_MIN_LIFETIME_SECONDS = 24 * 60 * 60

LOCK_PENDING = "SELECT msg_id, status FROM charges WHERE msg_id = %s AND status = 'pending' FOR UPDATE"

_HOLDER = """
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1])
conn.execute("SELECT msg_id FROM charges WHERE msg_id = %s FOR UPDATE", (sys.argv[2],))
print("locked", flush=True)
time.sleep(120)
"""


def stuck_pending(conn: psycopg.Connection, older_than_seconds: float = KEY_MIN_LIFETIME_SECONDS) -> Table:
    """The 'pending' rows untouched for longer than ``older_than_seconds``, oldest first, with their age."""
    cur = conn.execute("SELECT msg_id, status, round(extract(epoch FROM clock_timestamp() - updated_at)) AS age_seconds"
                       " FROM charges WHERE status = 'pending'"
                       " AND updated_at < clock_timestamp() - make_interval(secs => %s) ORDER BY updated_at",
                       (older_than_seconds,))
    return Table(f"'pending' rows older than {older_than_seconds:g} s", columns(cur), cur.fetchall())


# The 64-bit advisory-lock number of a msg_id: every worker computes the same one from the same text.
ADVISORY_KEY = "hashtextextended(%s, 0)"


@dataclass
class LockStory:
    """The steps of one story, in order, and the row at the end."""

    steps: list[tuple] = field(default_factory=list)
    row: Table | None = None

    def step(self, worker: str, action: str, outcome: str) -> None:
        """Append one step."""
        self.steps.append((len(self.steps) + 1, worker, action, outcome))

    @property
    def timeline(self) -> Table:
        """The steps as a table."""
        return Table("timeline", ["step", "worker", "action", "outcome"], self.steps)

    def outcomes_of(self, worker: str) -> list[str]:
        """The outcomes of ``worker``'s steps, in order."""
        return [s[3] for s in self.steps if s[1] == worker]


class RowLockLab:
    """A private database with a small ``charges`` table; ``stop()`` drops it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._database = f"pending_{uuid.uuid4().hex[:8]}"
        self.dsn = stack.create_database(self._database)
        self._stopped = False
        atexit.register(self.stop)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)

    def add_pending(self, msg_id: str, age_seconds: float = 0.0) -> None:
        """Insert a 'pending' row last touched ``age_seconds`` ago (as if its worker had died then)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO charges (msg_id, status, updated_at)"
                         " VALUES (%s, 'pending', clock_timestamp() - make_interval(secs => %s))",
                         (msg_id, age_seconds))

    def _row(self, msg_id: str) -> Table:
        with psycopg.connect(self.dsn) as conn:
            cur = conn.execute("SELECT msg_id, status, charge_id FROM charges WHERE msg_id = %s", (msg_id,))
            return Table("the dedup row at the end", columns(cur), cur.fetchall())

    def run_story(self, msg_id: str = "msg-locked") -> LockStory:
        """A locks the pending row and holds it across its provider call; B is refused, skips, then finds it done."""
        self.add_pending(msg_id)
        story = LockStory()
        with psycopg.connect(self.dsn) as a, psycopg.connect(self.dsn) as b:
            got = a.execute(LOCK_PENDING, (msg_id,)).fetchone()
            story.step("A", "SELECT ... FOR UPDATE", "locked the pending row" if got else "no pending row")
            try:
                b.execute(LOCK_PENDING.replace("FOR UPDATE", "FOR UPDATE NOWAIT"), (msg_id,))
                story.step("B", "SELECT ... FOR UPDATE NOWAIT", "locked it too")
            except errors.LockNotAvailable:
                story.step("B", "SELECT ... FOR UPDATE NOWAIT", "refused: could not obtain lock")
            b.rollback()
            skipped = b.execute(LOCK_PENDING.replace("FOR UPDATE", "FOR UPDATE SKIP LOCKED"), (msg_id,)).fetchone()
            story.step("B", "SELECT ... FOR UPDATE SKIP LOCKED", "no row: someone is on it" if skipped is None
                       else "got the row")
            b.rollback()
            a.execute("UPDATE charges SET status = 'done', charge_id = 'ch_A', updated_at = clock_timestamp()"
                      " WHERE msg_id = %s", (msg_id,))
            a.commit()
            story.step("A", "provider call, UPDATE to 'done', COMMIT", "charged once; lock released")
            again = b.execute(LOCK_PENDING, (msg_id,)).fetchone()
            story.step("B", "SELECT ... FOR UPDATE", "no pending row: it is done, skip" if again is None
                       else "locked a pending row")
            b.rollback()
        story.row = self._row(msg_id)
        return story

    def holder_killed(self, msg_id: str = "msg-killed", timeout: float = 30.0) -> LockStory:
        """A child process locks the row and is SIGKILLed mid-call; B's NOWAIT lock succeeds right after."""
        self.add_pending(msg_id)
        story = LockStory()
        holder = runs.start_process("lock holder", [sys.executable, "-c", _HOLDER, self.dsn, msg_id],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "locked":
                raise RuntimeError("the lock holder did not report its lock")
            story.step("A", "SELECT ... FOR UPDATE (a process of its own)", "locked the pending row")
            with psycopg.connect(self.dsn) as b:
                try:
                    b.execute(LOCK_PENDING.replace("FOR UPDATE", "FOR UPDATE NOWAIT"), (msg_id,))
                    story.step("B", "SELECT ... FOR UPDATE NOWAIT", "locked it too")
                except errors.LockNotAvailable:
                    story.step("B", "SELECT ... FOR UPDATE NOWAIT", "refused: A holds it")
                b.rollback()
                kill_now(holder.pid)
                holder.wait(timeout)
                story.step("A", "killed with SIGKILL", f"exit status {holder.returncode}")
                deadline = time.monotonic() + timeout
                while True:  # the server notices the closed connection at once; allow it a moment all the same
                    try:
                        got = b.execute(LOCK_PENDING.replace("FOR UPDATE", "FOR UPDATE NOWAIT"), (msg_id,)).fetchone()
                        break
                    except errors.LockNotAvailable:
                        b.rollback()
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                story.step("B", "SELECT ... FOR UPDATE NOWAIT", "locked the pending row: A's session is gone"
                           if got else "no pending row")
                b.rollback()
        finally:
            if holder.poll() is None:
                holder.kill()
            holder.wait()
            runs.process_ended("lock holder", holder)
            if holder.stdout is not None:
                holder.stdout.close()
        story.row = self._row(msg_id)
        return story

    def advisory(self, msg_id: str = "msg-advisory") -> LockStory:
        """The same exclusion without touching the row: a session-level advisory lock keyed by the msg_id."""
        story = LockStory()
        key = ADVISORY_KEY
        with psycopg.connect(self.dsn, autocommit=True) as a, psycopg.connect(self.dsn, autocommit=True) as b:
            for worker, conn in (("A", a), ("B", b)):
                row = conn.execute(f"SELECT pg_try_advisory_lock({key})", (msg_id,)).fetchone()
                story.step(worker, "pg_try_advisory_lock(hash of msg_id)",
                           "granted" if row and row[0] else "refused: A holds it")
            a.execute(f"SELECT pg_advisory_unlock({key})", (msg_id,))
            story.step("A", "pg_advisory_unlock", "released")
            row = b.execute(f"SELECT pg_try_advisory_lock({key})", (msg_id,)).fetchone()
            story.step("B", "pg_try_advisory_lock(hash of msg_id)", "granted" if row and row[0] else "refused")
            b.execute(f"SELECT pg_advisory_unlock({key})", (msg_id,))
        return story

    def stuck(self, older_than_seconds: float = KEY_MIN_LIFETIME_SECONDS) -> Table:
        """``stuck_pending`` on this lab's table."""
        with psycopg.connect(self.dsn) as conn:
            return stuck_pending(conn, older_than_seconds)

    def stop(self) -> None:
        """Drop the database."""
        if self._stopped:
            return
        self._stopped = True
        self.stack.drop_database(self._database)
        atexit.unregister(self.stop)

    def __enter__(self) -> RowLockLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def one_charge_per_order(stack: Stack) -> Table:
    """Two messages with different msg_ids for one order, against a charges table with ``UNIQUE (order_id)``.

    Both are inserted with ``ON CONFLICT DO NOTHING``: the dedup table keyed by msg_id would
    take both, the constraint on the business key takes the first only. Returns each insert's
    outcome; the database is private and dropped after.
    """
    database = f"orders_{uuid.uuid4().hex[:8]}"
    dsn = stack.create_database(database)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE charges (msg_id text PRIMARY KEY, order_id text NOT NULL UNIQUE,"
                         " status text NOT NULL DEFAULT 'pending')")
            rows = []
            for msg_id, sender in (("msg-from-checkout", "checkout service"), ("msg-from-retry-job", "retry job")):
                inserted = conn.execute("INSERT INTO charges (msg_id, order_id) VALUES (%s, 'order-7')"
                                        " ON CONFLICT DO NOTHING", (msg_id,)).rowcount
                rows.append((sender, msg_id, "order-7", "inserted: charge it" if inserted else
                             "nothing inserted: this order is already being charged"))
    finally:
        stack.drop_database(database)
    return Table("two messages, one order", ["sent by", "msg_id", "order_id", "outcome"], rows)
