"""A zombie consumer, live: one stuck provider call outlasts ``max.poll.interval.ms``.

Consumer A takes the only partition and calls the provider for the one
message; the provider holds that call (its ``stall_next_ms`` fault) for
several seconds. A does not poll meanwhile, so after ``max.poll.interval.ms``
its client leaves the group. Consumer B joins and gets the partition, reads
the message from the last committed offset, and finds the dedup row
'pending': the rule is "an earlier attempt died half way; call the provider
again". A is not dead, only stuck. When its call returns it marks the row done
and tries to commit, and the group refuses the commit.

    run = run_zombie(stack, "dedup,idempotency_key")
    run.charges              # ledger rows for the message: 1 with the key, 2 without
    no_key, with_key = run_side_by_side(stack, "dedup", "dedup,idempotency_key")
    run.events               # what each consumer recorded, A's row and B's
    run.zombie_log           # A's own account: the poll interval, the refused commit
    run.zombie_did(EventKind.COMMIT_REFUSED)  # the same, read from A's event lines

Both consumers are real processes on the real broker; nothing is simulated
but the stuck call's length.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from effectively_once import protocol
from effectively_once.db import one
from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.lab_reports import Table
from effectively_once.protocol import EventKind, ProcessEvent
from effectively_once.stack.processes import wait_until

if TYPE_CHECKING:
    from effectively_once.stack import Stack

MAX_POLL_INTERVAL_MS = 2000
STALL_SECONDS = 8.0
# B meets A's key in flight and the SDK retries on the 409 until A's call ends: enough retries to outlast
# the stall (the SDK's backoff starts at 0.5 s and doubles up to 5 s).
B_MAX_RETRIES = 40


@dataclass
class ZombieRun:
    """What one run left behind: the tables, and each consumer's own words."""

    layers: str
    msg_id: str
    zombie_pid: int
    successor_pid: int
    shop: Table
    events: Table
    ledger: Table
    keys: Table
    zombie_log: list[str]
    successor_log: list[str]
    zombie_events: list[ProcessEvent]     # A's event lines: what the code reads, where a person reads the log
    successor_events: list[ProcessEvent]
    running_at_end: tuple[bool, bool]     # (A, B) still running when the story ended: neither crashed

    @property
    def charges(self) -> int:
        """How many times money moved for the message."""
        return len(self.ledger)

    def events_of(self, who: str) -> list[dict]:
        """The ``consumer_events`` rows of ``'A'`` (the stuck one) or ``'B'`` (its successor), in order."""
        return [r for r in self.events.records() if r["consumer"].startswith(who)]

    def zombie_said(self, fragment: str) -> bool:
        """True when one of A's log lines contains ``fragment`` (librdkafka's ``_MAX_POLL_EXCEEDED``, say)."""
        return any(fragment in line for line in self.zombie_log)

    def zombie_did(self, kind: EventKind | str) -> bool:
        """True when A wrote an event of ``kind`` (``poll_interval_exceeded``, ``commit_refused``, ...)."""
        return any(e.kind == kind for e in self.zombie_events)


def _lines_of_interest(log: str) -> list[str]:
    """A's or B's sentences about the group and the commits: the account a person reads (event lines left out)."""
    keep = ("max", "poll", "commit", "assigned", "consumer error", "dead-lettered", "Traceback", "Error")
    return [line for line in log.splitlines()
            if any(word in line for word in keep) and not line.startswith(protocol.EVENT_PREFIX)]


def run_zombie(stack: Stack, layers: str = "dedup,idempotency_key", *, stall_seconds: float = STALL_SECONDS,
               max_poll_interval_ms: int = MAX_POLL_INTERVAL_MS, timeout: float = 60.0) -> ZombieRun:
    """Play the story once with ``layers`` on a fresh topic of one partition; return what it left.

    ``stall_seconds`` must outlast ``max_poll_interval_ms`` by enough for B to
    start, join and reach the provider while A's call is still held.
    """
    if stall_seconds * 1000 <= 2 * max_poll_interval_ms:
        raise ValueError(f"stall_seconds: {stall_seconds} s leaves B no time to take over from a consumer "
                         f"that is removed after {max_poll_interval_ms} ms; make it at least twice that")
    timing = {k: v for k, v in stack.consumer_config().items() if k in ("session.timeout.ms", "heartbeat.interval.ms")}
    # librdkafka refuses a max.poll.interval.ms below session.timeout.ms.
    session = int(timing.get("session.timeout.ms", max_poll_interval_ms))
    config = {**timing, "max.poll.interval.ms": max(max_poll_interval_ms, session), "group.protocol": "classic"}
    # The one-shot Charges path: the story is a second call that moves money, which a PaymentIntent would refuse.
    with PaymentLab(stack, layers, partitions=1, api="charges") as lab:
        lab.start_provider()
        msg_id = lab.produce(1)[0]
        lab.set_faults(stall_next_ms=stall_seconds * 1000)
        # A's call must not time out before the provider answers: a retry would be a second story.
        common: dict[str, Any] = {"consumer_config": config, "provider_timeout": stall_seconds + 10}
        zombie = lab.start_consumer(exit_when_idle=None, max_retries=0, **common)

        def zombie_in_the_call() -> bool:
            with psycopg.connect(lab.shop_dsn) as conn:
                return conn.execute("SELECT 1 FROM charges WHERE msg_id = %s", (msg_id,)).fetchone() is not None

        wait_until(zombie_in_the_call, 30, "consumer A's dedup row (A has the message and is calling the provider)",
                   proc=zombie.proc, log=zombie.log_path)
        successor = lab.start_consumer(exit_when_idle=None, max_retries=B_MAX_RETRIES, **common)

        def recorded_by_both() -> bool:
            with psycopg.connect(lab.shop_dsn) as conn:
                cur = conn.execute("SELECT count(DISTINCT consumer_pid) FROM consumer_events WHERE msg_id = %s",
                                   (msg_id,))
                return one(cur, "the message's consumer events")[0] >= 2

        deadline = time.monotonic() + timeout
        # Both have handled the message, and one of them has committed past it: the tables are final.
        while not (recorded_by_both() and lab.lag() == 0):
            for who, proc in (("A", zombie), ("B", successor)):
                if not proc.running:
                    raise RuntimeError(f"consumer {who} exited (code {proc.returncode}) before the story ended:\n"
                                       f"{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout:.0f} s the two consumers had not both handled {msg_id} "
                                   f"and committed past it.\nA:\n{zombie.log_tail()}\nB:\n{successor.log_tail()}")
            time.sleep(0.2)
        # A learns it was removed at its next poll after the refused commit; wait for it to say so.
        try:
            wait_until(lambda: bool(zombie.log_events(EventKind.POLL_INTERVAL_EXCEEDED)), 15,
                       "consumer A's poll to report the exceeded max.poll.interval.ms")
        except TimeoutError:
            pass  # the tables are final; the caller sees A's log as it is
        zombie_pid, successor_pid = zombie.pid or 0, successor.pid or 0
        names = {zombie_pid: "A (stuck)", successor_pid: "B (took over)"}
        with psycopg.connect(lab.shop_dsn) as conn:
            cur = conn.execute("SELECT consumer_pid, result, dedup_hit, retries, round(side_effect_ms::numeric)"
                               " AS call_ms FROM consumer_events WHERE msg_id = %s ORDER BY id", (msg_id,))
            rows = [(names.get(pid, str(pid)), *rest) for pid, *rest in cur.fetchall()]
        events = Table("shop: consumer_events", ["consumer", "result", "dedup_hit", "retries", "call_ms"], rows)
        run = ZombieRun(layers=layers, msg_id=msg_id, zombie_pid=zombie_pid, successor_pid=successor_pid,
                        shop=lab.shop_rows(), events=events, ledger=lab.ledger_rows(), keys=lab.key_rows(),
                        zombie_log=_lines_of_interest(zombie.log_tail(20000)),
                        successor_log=_lines_of_interest(successor.log_tail(20000)),
                        zombie_events=zombie.log_events(), successor_events=successor.log_events(),
                        running_at_end=(zombie.running, successor.running))
    return run


def run_side_by_side(stack: Stack, *layer_sets: str, **options: Any) -> list[ZombieRun]:
    """``run_zombie`` once per layer set, all at the same time; the runs in the order of ``layer_sets``.

    Each run has a lab of its own (topic, group, shop, provider), so they share nothing but the
    machine. Most of a run is the stuck call's ``stall_seconds``, so two runs side by side take
    about as long as one.
    """
    with ThreadPoolExecutor(max_workers=max(1, len(layer_sets))) as pool:
        futures = [pool.submit(run_zombie, stack, layers, **options) for layers in layer_sets]
        return [future.result() for future in futures]
