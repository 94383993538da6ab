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

``sweep(conn, provider, older_than_seconds)`` is the sweeper itself, for the
PaymentIntent path, whose rows store their PaymentIntent's id before it is
confirmed (the recovery point). For each stuck row it retrieves the
PaymentIntent by id, which is strongly consistent, and outlives every key:

- ``succeeded``: the money moved; the row is marked 'done' with its charge;
- ``requires_confirmation``: no money moved; the sweeper finishes the work
  from the recovery point, confirming under the message's derived key
  (``steps.confirm_or_recover``: a confirm that meets a PaymentIntent someone
  else just confirmed is refused, and recovered as succeeded);
- ``requires_payment_method`` (the card was declined): no money moved, and the
  row is left for the business to decide (another card, or give up);
- no id stored: the consumer died before storing it, and a PaymentIntent is
  confirmed only after its id is stored, so no money moved through this row:
  it is left for its message's redelivery (or redrive), which charges it.

Webhooks settle most rows sooner (``payments.inbox``); the sweeper is the
backstop for the events that never arrive.
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
from effectively_once.payments.lab_reports import Table

if TYPE_CHECKING:
    from effectively_once.payments.client import ProviderClient
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


SETTLED, COMPLETED, DECLINED, NO_INTENT = ("settled: it had succeeded", "completed: confirmed now",
                                           "left: declined, no money moved",
                                           "left: no PaymentIntent stored, no money moved")


class _Sweeping:
    """A step's ``ctx`` for the sweeper: the provider client, the key layer, no crash points."""

    def __init__(self, shop: psycopg.Connection, provider: ProviderClient) -> None:
        self.shop, self.provider = shop, provider

    def uses(self, layer: str) -> bool:
        return layer == "idempotency_key"

    def crash_point(self, name: str) -> None:
        pass


def sweep(conn: psycopg.Connection, provider: ProviderClient,
          older_than_seconds: float = KEY_MIN_LIFETIME_SECONDS, *, complete: bool = True) -> Table:
    """Settle every 'pending' row older than ``older_than_seconds`` from its PaymentIntent; a table of what each got.

    ``conn`` is a connection to the shop database (autocommit), ``provider`` a
    ``ProviderClient``. Each row is locked (``FOR UPDATE SKIP LOCKED``) while it
    is settled, so two sweepers never work on one row; a row some other
    sweeper holds is skipped. ``complete=False`` only marks succeeded ones.
    """
    from effectively_once.payments.client import ChargeFailed
    from effectively_once.payments.messages import idempotency_key_for
    from effectively_once.payments.steps import MOVED, confirm_or_recover

    cur = conn.execute("SELECT msg_id FROM charges WHERE status = 'pending'"
                       " AND updated_at < clock_timestamp() - make_interval(secs => %s) ORDER BY updated_at",
                       (older_than_seconds,))
    rows = []
    for (msg_id,) in cur.fetchall():
        with conn.transaction():
            row = conn.execute("SELECT payment_intent, round(extract(epoch FROM clock_timestamp() - updated_at))"
                               " FROM charges WHERE msg_id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED",
                               (msg_id,)).fetchone()
            if row is None:
                continue  # settled meanwhile, or another sweeper holds it
            intent_id, age = row
            if intent_id is None:
                rows.append((msg_id, None, age, "no PaymentIntent", NO_INTENT))
                continue
            intent = provider.retrieve_intent(intent_id)
            charge_id, action = None, DECLINED
            if intent.status == MOVED:
                charge_id, action = intent.latest_charge, SETTLED
            elif intent.status == "requires_confirmation" and complete:
                try:
                    result = confirm_or_recover(_Sweeping(conn, provider), intent.message(), intent_id,
                                                idempotency_key_for(msg_id))
                    charge_id, action = result.charge_id, SETTLED if result.recovered else COMPLETED
                except ChargeFailed as exc:
                    action = f"left: {exc.kind}"
            elif intent.status == "requires_confirmation":
                action = "left: not confirmed yet"
            if charge_id is not None:
                conn.execute("UPDATE charges SET status = 'done', charge_id = %s, updated_at = now()"
                             " WHERE msg_id = %s", (charge_id, msg_id))
            rows.append((msg_id, intent_id, age, intent.status, action))
    return Table(f"the sweeper: 'pending' rows older than {older_than_seconds:g} s",
                 ["msg_id", "payment_intent", "age_seconds", "found", "action"], rows)


AGREES, SHOP_BEHIND, NOT_CHARGED, DIFFERENT, TWICE = (
    "agrees", "shop 'pending', provider charged: settle it", "no charge at the provider",
    "the shop holds another charge", "charged more than once at the provider")


def reconcile(shop_dsn: str, provider_url: str, msg_ids: list[str], api_key: str | None = None) -> Table:
    """The shop's rows for ``msg_ids`` next to what the provider's ``payment_intent.succeeded`` events say.

    The events are read through the SDK (``GET /v1/events``, every page); each
    row gets a verdict: ``AGREES``, ``SHOP_BEHIND`` (the row is 'pending', the
    provider charged: the sweeper's case), ``NOT_CHARGED``, ``DIFFERENT`` or
    ``TWICE`` (two PaymentIntents of one message succeeded).
    """
    from effectively_once.payments.client import ProviderClient
    from effectively_once.payments.messages import DEFAULT_API_KEY

    client = ProviderClient(provider_url, api_key or DEFAULT_API_KEY)
    charged: dict[str, list[str]] = {}
    try:
        events = client.stripe.v1.events.list(params={"type": "payment_intent.succeeded", "limit": 100})
        for event in events.auto_paging_iter():
            intent = event.data.object.to_dict()
            msg_id = (intent.get("metadata") or {}).get("msg_id")
            if msg_id in msg_ids:
                charged.setdefault(msg_id, []).append(intent["latest_charge"])
    finally:
        client.close()
    with psycopg.connect(shop_dsn) as conn:
        shop = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT msg_id, status, charge_id FROM charges WHERE msg_id = ANY(%s)", (msg_ids,))}
    rows = []
    for msg_id in msg_ids:
        status, charge = shop.get(msg_id, (None, None))
        at_provider = charged.get(msg_id, [])
        if len(at_provider) > 1:
            verdict = TWICE
        elif not at_provider:
            verdict = AGREES if status is None else NOT_CHARGED
        elif status == "pending":
            verdict = SHOP_BEHIND
        else:
            verdict = AGREES if charge == at_provider[0] else DIFFERENT
        rows.append((msg_id, status, charge, ", ".join(at_provider) or None, verdict))
    return Table("the shop against the provider", ["msg_id", "shop_status", "shop_charge", "provider_charge",
                                                   "verdict"], rows)


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
