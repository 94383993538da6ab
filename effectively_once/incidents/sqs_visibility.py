"""A model of SQS's visibility timeout: a side effect that outlasts it runs twice.

Notebook 06 tells this as "AWS SQS 2019", a story told in the field with no
public post-mortem: consumers that called ChangeMessageVisibility while a
DeleteMessage was in flight saw the message delivered again although the
delete had completed. This module does not reconstruct that bug. It models
behaviour AWS documents: a received message is only *hidden* for the
visibility timeout, and if the consumer has not deleted it by then the queue
hands it to someone else; every receive issues a new receipt handle, and a
DeleteMessage with a stale handle succeeds yet does not delete; a standard
queue can deliver a message again even after it was deleted. On top of that it
models the race between a visibility change and a delete.

The queue is a small SQS on PostgreSQL, so the mechanism can be watched row by
row:

- ``SqsQueue``: a table ``sqs_messages(id, body, visible_at, receive_count,
  receipt_handle)``. ``receive`` picks visible rows with ``FOR UPDATE SKIP
  LOCKED``, pushes ``visible_at`` forward by the timeout and issues a fresh
  receipt handle; ``delete`` and ``change_visibility`` act only through the
  current handle, so a stale handle deletes nothing. SQS answers such a
  delete with success; the model returns False so that the replay can count
  what SQS would not report.
- ``replay(stack, fix=...)``: worker threads run a side effect (a row in
  ``side_effects`` with the worker, the message id and start/end times) whose
  duration is written in the message. A few messages take longer than the
  timeout: they reappear while their first worker still runs, a second worker
  runs the side effect again, and the first worker's delete finds a stale
  handle. ``fix="extend_visibility"`` keeps the message hidden with a
  heartbeat (``change_visibility`` every third of the timeout);
  ``fix="dedup"`` records the message id with ``INSERT ... ON CONFLICT DO
  NOTHING`` in the same transaction as the side effect, so a second delivery
  finds it done. The dedup fix only covers side effects stored in the same
  database; a call to another system needs an idempotency key instead.
- ``replay_delete_race(stack, atomic=...)``: the race between a visibility
  change and a delete, in a fixed interleaving. A heartbeat
  reads the message to extend its visibility, the worker's delete completes,
  and the heartbeat writes the message back with a later ``visible_at``: the
  message reappears although its worker finished and deleted it, and a second
  worker runs the side effect again. With ``atomic=True`` the change is one
  conditional ``UPDATE ... WHERE receipt_handle = ...``, which finds nothing
  to update once the delete has committed, and the message stays gone. The
  heartbeat in ``replay`` is also stopped before the delete, so the two never
  overlap.

Every replay uses its own fresh database (``stack.create_database``) and drops it.
"""

from __future__ import annotations

import html
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from effectively_once.db import one
from effectively_once.protocol import plural
from effectively_once.schemas import load

if TYPE_CHECKING:
    import psycopg

    from effectively_once.stack import Stack

FIXES = (None, "extend_visibility", "dedup")
POLL_SECONDS = 0.01  # an idle worker asks again this often; far below any timeout used here

SCHEMA = load("sqs_visibility.sql")


@dataclass(frozen=True)
class ReceivedMessage:
    """One delivery of a message: its id, body, how often it was received, and this delivery's handle."""

    id: int
    body: str
    receive_count: int
    receipt_handle: str


class SqsQueue:
    """An SQS-like queue in one PostgreSQL table, over one connection (use one per thread).

    ``max_receives`` plays SQS's ``maxReceiveCount``: a message received that
    many times is no longer handed out (SQS would move it to a dead-letter queue).
    """

    def __init__(self, dsn: str, *, max_receives: int | None = None):
        import psycopg

        self.dsn = dsn
        self.max_receives = max_receives
        self.conn = psycopg.connect(dsn, autocommit=True)

    def create_schema(self) -> None:
        """Create the queue, side-effect and dedup tables if they are missing."""
        self.conn.execute(SCHEMA)

    def send(self, body: str) -> int:
        """Enqueue ``body``, visible at once; return the message id."""
        cur = self.conn.execute("INSERT INTO sqs_messages (body) VALUES (%s) RETURNING id", (body,))
        return int(one(cur, "the id of the message just sent")[0])

    def receive(self, visibility_timeout: float, max_messages: int = 1) -> list[ReceivedMessage]:
        """Take up to ``max_messages`` visible messages and hide them for ``visibility_timeout`` s.

        ``SKIP LOCKED`` lets concurrent receivers pass over rows another
        receiver is taking right now instead of waiting for it; each delivery
        gets a new receipt handle, which makes every earlier handle stale.
        """
        limit = "" if self.max_receives is None else "AND receive_count < %(max_receives)s"
        rows = self.conn.execute(
            f"""
            WITH next AS (
                SELECT id FROM sqs_messages
                WHERE visible_at <= clock_timestamp() {limit}
                ORDER BY id LIMIT %(n)s
                FOR UPDATE SKIP LOCKED
            )
            UPDATE sqs_messages m
               SET visible_at = clock_timestamp() + make_interval(secs => %(timeout)s),
                   receive_count = m.receive_count + 1,
                   receipt_handle = gen_random_uuid()
              FROM next WHERE m.id = next.id
            RETURNING m.id, m.body, m.receive_count, m.receipt_handle
            """,
            {"n": max_messages, "timeout": visibility_timeout, "max_receives": self.max_receives},
        ).fetchall()
        return [ReceivedMessage(int(i), b, int(c), str(h)) for i, b, c, h in rows]

    def delete(self, receipt_handle: str) -> bool:
        """Delete the message this handle was issued for; a stale handle deletes nothing (False)."""
        cur = self.conn.execute("DELETE FROM sqs_messages WHERE receipt_handle = %s", (receipt_handle,))
        return cur.rowcount == 1

    def change_visibility(self, receipt_handle: str, seconds: float) -> bool:
        """Hide the message for ``seconds`` from now, if ``receipt_handle`` is still current.

        One conditional UPDATE: once the message is deleted (or handed to
        someone else) there is no row with this handle and nothing changes.
        """
        cur = self.conn.execute(
            "UPDATE sqs_messages SET visible_at = clock_timestamp() + make_interval(secs => %s) "
            "WHERE receipt_handle = %s", (seconds, receipt_handle))
        return cur.rowcount == 1

    def change_visibility_read_then_write(self, receipt_handle: str, seconds: float,
                                          between: Callable[[], None] = lambda: None) -> bool:
        """The racy way to change visibility: read the message, then write it back whole.

        ``between`` runs after the read and before the write (the moment a
        concurrent delete can land). The write is an upsert keyed by id, so a
        message deleted in between is written back: it reappears. Kept to
        replay the race with a delete; use ``change_visibility``.
        """
        row = self.conn.execute(
            "SELECT id, body, receive_count FROM sqs_messages WHERE receipt_handle = %s",
            (receipt_handle,)).fetchone()
        between()
        if row is None:
            return False
        self.conn.execute(
            """
            INSERT INTO sqs_messages (id, body, visible_at, receive_count, receipt_handle)
            VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s), %s, %s)
            ON CONFLICT (id) DO UPDATE SET visible_at = EXCLUDED.visible_at
            """, (row[0], row[1], seconds, row[2], receipt_handle))
        return True

    def depth(self) -> int:
        """How many messages are in the queue (visible or in flight)."""
        return int(one(self.conn.execute("SELECT count(*) FROM sqs_messages"), "the queue depth")[0])

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> SqsQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VisibilityHeartbeat:
    """Keep one message hidden while its side effect runs: ``change_visibility`` every ``interval`` s.

    ``stop()`` returns only when no change is in flight, so a delete issued
    after it can never overlap a visibility change (the race ``replay_delete_race`` shows).
    """

    def __init__(self, queue: SqsQueue, receipt_handle: str, visibility_timeout: float,
                 interval: float | None = None):
        self.queue = queue
        self.receipt_handle = receipt_handle
        self.visibility_timeout = visibility_timeout
        self.interval = interval if interval is not None else visibility_timeout / 3
        self.extensions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="visibility-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.queue.change_visibility(self.receipt_handle, self.visibility_timeout):
                return  # the handle is stale: someone else owns the message now
            self.extensions += 1

    def __enter__(self) -> VisibilityHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop extending and wait for a change in flight to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the replay ---------------------------------------------------------------------------------
RAN_TWICE, RAN_ONCE, LOST = "a side effect ran twice", "each side effect ran once", "a message was lost"
CAME_BACK, STAYED_DELETED = "the deleted message came back", "the deleted message stayed deleted"
# What each replay must show, by ``replay(fix=...)`` and ``replay_delete_race(atomic=...)``:
# notebook 06 and the tests assert against these.
EXPECTED_OUTCOME = {None: RAN_TWICE, "extend_visibility": RAN_ONCE, "dedup": RAN_ONCE}
EXPECTED_RACE_OUTCOME = {False: CAME_BACK, True: STAYED_DELETED}


@dataclass
class SqsReplay:
    """What happened in one replay: each side-effect execution, and the counts that matter."""

    fix: str | None
    visibility_timeout: float
    messages: int
    workers: int
    max_receives: int
    seed: int
    durations: dict[int, float]          # message id -> planned side-effect seconds
    side_effects: list[dict[str, Any]]   # one row per execution: message_id, worker, start, end, duration
    deliveries: int                      # receives, first ones included
    deletes_ok: int
    stale_deletes: int
    absorbed_by_dedup: int
    visibility_extensions: int
    left_in_queue: int
    elapsed_seconds: float = field(default=0.0, repr=False)

    @property
    def executions(self) -> dict[int, int]:
        """Message id -> how many times its side effect ran."""
        counts = {mid: 0 for mid in self.durations}
        for row in self.side_effects:
            counts[row["message_id"]] = counts.get(row["message_id"], 0) + 1
        return counts

    @property
    def duplicates(self) -> int:
        """Side-effect executions beyond the first per message."""
        return sum(max(0, n - 1) for n in self.executions.values())

    @property
    def duplicated_messages(self) -> list[int]:
        """Ids of the messages whose side effect ran more than once."""
        return sorted(mid for mid, n in self.executions.items() if n > 1)

    @property
    def redeliveries(self) -> int:
        """Deliveries beyond the first per message."""
        return self.deliveries - self.messages

    @property
    def lost(self) -> list[int]:
        """Ids of messages whose side effect never ran (should be empty)."""
        return sorted(mid for mid, n in self.executions.items() if n == 0)

    @property
    def outcome(self) -> str:
        """``RAN_TWICE``, ``LOST`` or ``RAN_ONCE``: what happened to the side effects."""
        return LOST if self.lost else RAN_TWICE if self.duplicates else RAN_ONCE

    @property
    def expected_outcome(self) -> str:
        """The outcome this fix (or no fix) must have: ``EXPECTED_OUTCOME[fix]``."""
        return EXPECTED_OUTCOME[self.fix]

    @property
    def side_effect_duration_p99(self) -> float:
        """``side_effect_duration_p99`` (the metric of notebook 05) over the measured durations, in seconds."""
        from effectively_once.observe.metrics import side_effect_duration_p99

        return side_effect_duration_p99(row["duration"] for row in self.side_effects)

    def summary(self) -> dict[str, Any]:
        """The counts as plain data (what the HTML table shows)."""
        return {
            "fix": self.fix or "none",
            "messages": self.messages,
            "visibility timeout (s)": self.visibility_timeout,
            "side_effect_duration_p99 (s)": round(self.side_effect_duration_p99, 3),
            "deliveries": self.deliveries,
            "redeliveries": self.redeliveries,
            "side-effect executions": len(self.side_effects),
            "duplicates": self.duplicates,
            "absorbed by dedup": self.absorbed_by_dedup,
            "stale deletes": self.stale_deletes,
            "visibility extensions": self.visibility_extensions,
            "lost": len(self.lost),
        }

    def verdict(self) -> str:
        """One sentence on the outcome."""
        if self.duplicates:
            return (f"{plural(len(self.duplicated_messages), 'message')} outlasted the {self.visibility_timeout:g} s "
                    f"timeout and their side effect ran {plural(self.duplicates, 'extra time')}.")
        return (f"No side effect ran twice although p99 duration is {self.side_effect_duration_p99:.2f} s "
                f"against a {self.visibility_timeout:g} s timeout ({self.fix or 'no fix'}).")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.summary().items())
        return f"<p>{html.escape(self.verdict())}</p><table>{rows}</table>"

    def plot(self, ax=None):
        """Each execution's side-effect duration against the visibility timeout; duplicates in red.

        A message's second and third executions sit just right of its first,
        so a message that ran three times shows three marks side by side.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3.5))
        nth: dict[int, int] = {}
        first_x: list[float] = []
        first_y: list[float] = []
        again_x: list[float] = []
        again_y: list[float] = []
        for row in sorted(self.side_effects, key=lambda r: r["start"]):
            k = nth.get(row["message_id"], 0)
            nth[row["message_id"]] = k + 1
            xs, ys = (first_x, first_y) if k == 0 else (again_x, again_y)
            xs.append(row["message_id"] + 0.35 * k)
            ys.append(row["duration"])
        ax.scatter(first_x, first_y, s=18, color="tab:blue", label="first execution")
        if again_x:
            ax.scatter(again_x, again_y, s=40, marker="x", color="tab:red", label="duplicate execution")
        ax.axhline(self.visibility_timeout, color="black", linestyle="--",
                   label=f"visibility timeout {self.visibility_timeout:g} s")
        ax.axhline(self.side_effect_duration_p99, color="tab:orange", linestyle=":",
                   label=f"side_effect_duration_p99 {self.side_effect_duration_p99:.2f} s")
        ax.set_ylim(0, max(self.visibility_timeout, self.side_effect_duration_p99) * 1.3)
        ax.set_xlabel("message id")
        ax.set_ylabel("side-effect duration (s)")
        ax.set_title(f"SQS replay, fix: {self.fix or 'none'}: {plural(self.duplicates, 'duplicate execution')}")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
        ax.figure.tight_layout()
        return ax.figure

    def timeline(self, ax=None, only_duplicated: bool = True):
        """Executions on a time axis, one row per message: overlapping bars are the same work done twice."""
        import matplotlib.pyplot as plt

        ids = self.duplicated_messages if only_duplicated and self.duplicated_messages else sorted(self.durations)
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 0.45 * len(ids) + 1.2))
        workers = sorted({row["worker"] for row in self.side_effects})
        colours = plt.get_cmap("tab10")
        for y, mid in enumerate(ids):
            runs = sorted((r for r in self.side_effects if r["message_id"] == mid), key=lambda r: r["start"])
            lane = 0.8 / max(1, len(runs))  # each execution gets its own lane inside the message's row
            for k, row in enumerate(runs):
                centre = y - 0.4 + lane * (k + 0.5)
                colour = colours(workers.index(row["worker"]) % 10)
                ax.barh(centre, row["duration"], left=row["start"], height=lane * 0.9, color=colour, alpha=0.85)
                ax.text(row["start"] + 0.005, centre, row["worker"], va="center", fontsize="x-small")
                ax.plot([row["start"] + self.visibility_timeout] * 2, [centre - lane / 2, centre + lane / 2],
                        color="black", lw=1.5)
        ax.set_xlim(left=0)
        ax.set_yticks(range(len(ids)), [f"message {mid}" for mid in ids])
        ax.set_xlabel("seconds since the replay started (black tick: visibility timeout after each start)")
        ax.set_title("side-effect executions per message")
        ax.figure.tight_layout()
        return ax.figure


def plan_durations(messages: int, visibility_timeout: float, seed: int, slow_fraction: float = 0.1) -> list[float]:
    """Seeded side-effect durations: most well under the timeout, a few well over it.

    Fast ones take 5-30 % of the timeout, slow ones 150-180 %: far enough from
    the timeout that thread scheduling cannot move one across it, and under
    twice the timeout so each slow message overlaps itself at most once at a time.
    """
    rng = random.Random(seed)
    slow = max(1, round(messages * slow_fraction)) if messages else 0
    kinds = [True] * slow + [False] * (messages - slow)
    rng.shuffle(kinds)
    return [round(visibility_timeout * (rng.uniform(1.5, 1.8) if is_slow else rng.uniform(0.05, 0.3)), 4)
            for is_slow in kinds]


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries = self.deletes_ok = self.stale_deletes = self.absorbed = self.extensions = 0
        self.errors: list[BaseException] = []

    def add(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)


def _run_side_effect(conn: psycopg.Connection, message: ReceivedMessage, worker: str, fix: str | None,
                     counters: _Counters) -> None:
    seconds = float(json.loads(message.body)["work_seconds"])
    if fix == "dedup":
        # The dedup row and the side effect commit together: a second delivery
        # waits on the first one's uncommitted row, then finds it and skips.
        with conn.transaction():
            claimed = conn.execute("INSERT INTO processed_messages (message_id) VALUES (%s) "
                                   "ON CONFLICT DO NOTHING RETURNING message_id", (message.id,)).fetchone()
            if claimed is None:
                counters.add(absorbed=1)
                return
            effect = _start_side_effect(conn, message, worker)
            time.sleep(seconds)
            conn.execute("UPDATE side_effects SET ended_at = clock_timestamp() WHERE id = %s", (effect,))
        return
    effect = _start_side_effect(conn, message, worker)
    time.sleep(seconds)
    conn.execute("UPDATE side_effects SET ended_at = clock_timestamp() WHERE id = %s", (effect,))


def _start_side_effect(conn: psycopg.Connection, message: ReceivedMessage, worker: str) -> int:
    """Record that ``worker`` starts the side effect of ``message``; return the record's id."""
    cur = conn.execute("INSERT INTO side_effects (message_id, worker, started_at) "
                       "VALUES (%s, %s, clock_timestamp()) RETURNING id", (message.id, worker))
    return int(one(cur, f"the side effect {worker} started for message {message.id}")[0])


def _worker(name: str, dsn: str, fix: str | None, visibility_timeout: float, max_receives: int,
            stop: threading.Event, counters: _Counters) -> None:
    try:
        with SqsQueue(dsn, max_receives=max_receives) as queue, SqsQueue(dsn) as heartbeat_queue:
            while not stop.is_set():
                received = queue.receive(visibility_timeout)
                if not received:
                    stop.wait(POLL_SECONDS)
                    continue
                message = received[0]
                counters.add(deliveries=1)
                if fix == "extend_visibility":
                    with VisibilityHeartbeat(heartbeat_queue, message.receipt_handle, visibility_timeout) as beat:
                        _run_side_effect(queue.conn, message, name, fix, counters)
                    counters.add(extensions=beat.extensions)
                else:
                    _run_side_effect(queue.conn, message, name, fix, counters)
                if queue.delete(message.receipt_handle):
                    counters.add(deletes_ok=1)
                else:
                    counters.add(stale_deletes=1)
    except BaseException as exc:  # reported by replay(), which must not hang on a dead worker
        counters.errors.append(exc)
        stop.set()


def replay(stack: Stack, fix: str | None = None, *, messages: int = 40, visibility_timeout: float = 0.3,
           seed: int = 7, workers: int = 10, max_receives: int = 3, slow_fraction: float = 0.1,
           timeout: float = 60.0) -> SqsReplay:
    """Run the SQS visibility-timeout replay on a fresh database and return what happened.

    ``fix`` is None (no fix: slow side effects run again), ``"extend_visibility"`` (a heartbeat keeps
    each message hidden while its side effect runs) or ``"dedup"`` (the side
    effect is recorded once per message id). The durations are seeded, so the
    same arguments give the same slow messages; with enough ``workers`` each
    slow message runs ``max_receives`` times without a fix.
    """
    if fix not in FIXES:
        raise ValueError(f"fix must be one of {FIXES}, got {fix!r}")
    if visibility_timeout <= 0 or messages < 1 or workers < 1 or max_receives < 1:
        raise ValueError("visibility_timeout must be > 0 and messages, workers, max_receives >= 1")
    from effectively_once.stack import new_run_id

    name = f"sqs_{new_run_id()}"
    dsn = stack.create_database(name)
    try:
        with SqsQueue(dsn) as queue:
            queue.create_schema()
            planned = plan_durations(messages, visibility_timeout, seed, slow_fraction)
            durations = {queue.send(json.dumps({"n": n, "work_seconds": d})): d for n, d in enumerate(planned)}
            run_start = one(queue.conn.execute("SELECT clock_timestamp()"), "the database clock")[0]
            counters, stop = _Counters(), threading.Event()
            threads = [threading.Thread(target=_worker, name=f"worker-{i}", daemon=True,
                                        args=(f"worker-{i}", dsn, fix, visibility_timeout, max_receives,
                                              stop, counters)) for i in range(workers)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            try:
                # Done when nothing is in flight and nothing can still be received.
                while not stop.is_set():
                    live = one(queue.conn.execute(
                        "SELECT count(*) FROM sqs_messages WHERE receive_count < %s "
                        "OR visible_at > clock_timestamp()", (max_receives,)), "the messages still live")[0]
                    if live == 0:
                        break
                    if time.monotonic() - started > timeout:
                        raise TimeoutError(f"the SQS replay did not drain its {messages} messages in {timeout:.0f} s")
                    time.sleep(0.02)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=visibility_timeout * 4 + 5)
            elapsed = time.monotonic() - started
            if counters.errors:
                raise RuntimeError(f"a replay worker failed: {counters.errors[0]!r}") from counters.errors[0]
            rows = queue.conn.execute(
                "SELECT message_id, worker, extract(epoch FROM started_at - %s), "
                "extract(epoch FROM ended_at - started_at) FROM side_effects ORDER BY started_at",
                (run_start,)).fetchall()
            left = queue.depth()
        side_effects = [{"message_id": int(m), "worker": w, "start": float(s),
                         "end": float(s) + float(d) if d is not None else None,
                         "duration": float(d) if d is not None else float("nan")} for m, w, s, d in rows]
        return SqsReplay(fix=fix, visibility_timeout=visibility_timeout, messages=messages, workers=workers,
                         max_receives=max_receives, seed=seed, durations=durations, side_effects=side_effects,
                         deliveries=counters.deliveries, deletes_ok=counters.deletes_ok,
                         stale_deletes=counters.stale_deletes, absorbed_by_dedup=counters.absorbed,
                         visibility_extensions=counters.extensions, left_in_queue=left, elapsed_seconds=elapsed)
    finally:
        stack.drop_database(name)


# -- the race: a visibility change in flight while the delete completes --------------------------
@dataclass
class DeleteRaceReplay:
    """One message, one worker's delete, and a visibility change that overlapped it."""

    atomic: bool
    delete_returned: bool       # the worker's delete removed the row
    reappeared: bool            # a later receive got the message again
    side_effect_runs: int       # how many times the side effect ran for the one message

    @property
    def duplicates(self) -> int:
        """Side-effect runs beyond the first."""
        return max(0, self.side_effect_runs - 1)

    @property
    def outcome(self) -> str:
        """``CAME_BACK`` or ``STAYED_DELETED``."""
        return CAME_BACK if self.reappeared else STAYED_DELETED

    @property
    def expected_outcome(self) -> str:
        """The outcome this way of changing the visibility must have: ``EXPECTED_RACE_OUTCOME[atomic]``."""
        return EXPECTED_RACE_OUTCOME[self.atomic]

    def verdict(self) -> str:
        """One sentence on the outcome."""
        how = "one conditional UPDATE" if self.atomic else "read, then write back"
        if self.reappeared:
            return (f"Visibility change as {how}: the delete completed, yet the message came back and its "
                    f"side effect ran {self.side_effect_runs} times.")
        return f"Visibility change as {how}: the delete completed and the message stayed deleted."

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in (
            ("visibility change", "atomic UPDATE" if self.atomic else "read then write back"),
            ("delete returned", self.delete_returned), ("message reappeared", self.reappeared),
            ("side-effect runs", self.side_effect_runs), ("duplicates", self.duplicates)))
        return f"<p>{html.escape(self.verdict())}</p><table>{rows}</table>"


def replay_delete_race(stack: Stack, atomic: bool = False, *, visibility_timeout: float = 0.3,
                       reappear_after: float = 0.1) -> DeleteRaceReplay:
    """Replay a ChangeMessageVisibility that overlaps a DeleteMessage, in a fixed interleaving.

    Worker A receives the message and runs its side effect. Its heartbeat
    starts a visibility change; while that change is in flight, A's delete
    completes; then the change lands. With ``atomic=False`` the change was
    computed from a read taken before the delete and is written back whole, so
    the deleted message returns, visible ``reappear_after`` s later, and worker
    B runs the side effect again. With ``atomic=True`` the change is a
    conditional UPDATE that finds no row, and B finds nothing.
    """
    from effectively_once.stack import new_run_id

    name = f"sqs_race_{new_run_id()}"
    dsn = stack.create_database(name)
    try:
        with SqsQueue(dsn) as worker_a, SqsQueue(dsn) as heartbeat, SqsQueue(dsn) as worker_b:
            worker_a.create_schema()
            worker_a.send(json.dumps({"n": 0, "work_seconds": 0.0}))
            (message,) = worker_a.receive(visibility_timeout)
            _run_side_effect(worker_a.conn, message, "worker-a", None, _Counters())

            deleted: list[bool] = []
            if atomic:
                # The change is in flight while the delete lands; it then applies to whatever row holds the handle.
                deleted.append(worker_a.delete(message.receipt_handle))
                heartbeat.change_visibility(message.receipt_handle, reappear_after)
            else:
                heartbeat.change_visibility_read_then_write(
                    message.receipt_handle, reappear_after,
                    between=lambda: deleted.append(worker_a.delete(message.receipt_handle)))

            deadline = time.monotonic() + reappear_after + visibility_timeout + 0.5
            again: list[ReceivedMessage] = []
            while time.monotonic() < deadline and not again:
                again = worker_b.receive(visibility_timeout)
                if not again:
                    time.sleep(POLL_SECONDS)
            if again:
                _run_side_effect(worker_b.conn, again[0], "worker-b", None, _Counters())
                worker_b.delete(again[0].receipt_handle)
            runs = int(one(worker_a.conn.execute("SELECT count(*) FROM side_effects"), "the side-effect runs")[0])
        return DeleteRaceReplay(atomic=atomic, delete_returned=bool(deleted and deleted[0]),
                                reappeared=bool(again), side_effect_runs=runs)
    finally:
        stack.drop_database(name)
