"""A steady stream of charges with a supervisor that restarts dead consumers, for watching metrics move.

``steady_load(lab, seconds, rate)`` publishes ``rate`` charges per second in
small batches for ``seconds``, keeps ``consumers`` consumer processes running
(a dead one is replaced ``restart_after`` seconds after it is seen dead, as a
process supervisor would), and runs ``actions`` at their times, e.g. a SIGKILL
from outside. Each event is marked on the recorder, so the plots can show it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

Action = tuple[float, str, Callable[[Any], Any]]


def kill_one(lab) -> int | None:
    """SIGKILL the oldest running consumer of ``lab`` from outside (an OOM kill, a lost node); its pid."""
    for consumer in lab.consumers:
        if consumer.running:
            pid = consumer.pid
            consumer.kill()
            return pid
    return None


def steady_load(lab, seconds: float, rate: float, *, seed: int = 0, consumers: int = 2,
                restart_after: float = 1.0, consumer_options: dict[str, Any] | None = None,
                actions: Iterable[Action] = (), recorder=None, tick: float = 0.5,
                poison: Callable[[int], list[bytes]] | None = None) -> dict[str, int]:
    """Produce ``rate`` msg/s for ``seconds`` while supervising ``consumers`` consumers; returns counts.

    ``actions`` are ``(at_seconds, label, function(lab))``. ``poison(tick_index)``
    may return malformed record values to publish at that tick. The counts say
    how many charges were produced, how many poison records, how many consumers
    died and how many were started.
    """
    options = dict(consumer_options or {})
    pending = sorted(actions, key=lambda a: a[0])
    replaced = {id(c) for c in lab.consumers if not c.running}  # dead before this load began
    seen_dead: dict[int, float] = {}
    counts = {"produced": 0, "poison": 0, "died": 0, "started": 0}
    for _ in range(consumers - sum(1 for c in lab.consumers if c.running)):  # top up first
        lab.start_consumer(exit_when_idle=None, **options)
        counts["started"] += 1
    start = time.monotonic()
    owed = 0.0
    index = 0
    while (elapsed := time.monotonic() - start) < seconds:
        while pending and pending[0][0] <= elapsed:
            _, label, action = pending.pop(0)
            action(lab)
            if recorder is not None:
                recorder.mark(label)
        now = time.monotonic()
        for consumer in list(lab.consumers):
            if not consumer.running and id(consumer) not in replaced and id(consumer) not in seen_dead:
                seen_dead[id(consumer)] = now
                counts["died"] += 1
                if recorder is not None:
                    recorder.mark("consumer died")
        running = sum(1 for c in lab.consumers if c.running)
        for key, died_at in list(seen_dead.items()):
            if running < consumers and now - died_at >= restart_after:
                lab.start_consumer(exit_when_idle=None, **options)
                replaced.add(key)
                del seen_dead[key]
                running += 1
                counts["started"] += 1
                if recorder is not None:
                    recorder.mark("consumer restarted")
        owed += rate * tick
        batch = int(owed)
        if batch:
            lab.produce(batch, seed=seed + index)
            owed -= batch
            counts["produced"] += batch
        if poison is not None:
            values = poison(index)
            if values:
                lab.produce_raw(values)
                counts["poison"] += len(values)
        index += 1
        time.sleep(max(0.0, start + index * tick - time.monotonic()))
    return counts


def wait_for_lag(lab, target: int = 0, timeout: float = 30.0) -> int:
    """Wait until the group's lag (records produced and not committed past) is at most ``target``."""
    deadline = time.monotonic() + timeout
    while True:
        lag = lab.lag()
        if lag <= target:
            return lag
        if time.monotonic() > deadline:
            raise TimeoutError(f"lag is still {lag} after {timeout} s; are the consumers running? {lab.consumers}")
        time.sleep(0.2)
