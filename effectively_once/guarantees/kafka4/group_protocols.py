"""KIP-848 (the consumer group protocol): how long each group protocol takes to hand on a killed consumer's work.

``measure_reassignment(stack)`` times, for the classic protocol and the KIP-848 consumer
protocol side by side, how long the group takes to hand a SIGKILLed consumer's
partitions to the survivor (``reassign_once`` is one such round).
``benchmarks/reassign.py`` runs the same measurement for longer.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from effectively_once import runs
from effectively_once import stack as stack_mod
from effectively_once.kafka import client_settings, quiet_logger
from effectively_once.lifetime import kill_now

CLASSIC, CONSUMER = "classic", "consumer"
PROTOCOLS = (CLASSIC, CONSUMER)


# The victim imports its client first, then waits for its settings on stdin: started ahead of its
# round, it is ready to join the moment the round begins. It ends with its parent, however the
# parent ends: by the parent-death signal ``runs.start_process`` arranges, and, where there is
# none, when it is reparented (or at EOF on stdin, before its settings came).
_VICTIM = """
import json, os, sys
from confluent_kafka import Consumer
parent = os.getppid()
config, topic = json.loads(sys.stdin.readline())
consumer = Consumer(config)
consumer.subscribe([topic])
held = 0
while os.getppid() == parent:
    consumer.poll(0.1)
    now = len(consumer.assignment())
    if now != held:
        print(f"assigned {now}", flush=True)
        held = now
"""


class _VictimSays:
    """The victim's "assigned N" lines, read from its pipe without blocking: how many partitions it holds."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = b""
        self.held: int | None = None

    def read(self, wait: float = 0.0) -> int | None:
        """Read what the victim printed (waiting up to ``wait`` s for something); the partitions it holds now."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            try:
                self.buffer += os.read(self.fd, 65536)
            except BlockingIOError:
                pass
            *lines, self.buffer = self.buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"assigned "):
                    self.held = int(line.split()[1])
        return self.held


def start_victim() -> subprocess.Popen:
    """A victim process for ``reassign_once``, started ahead: it waits for its settings on stdin.

    It dies with this process (``runs.start_process``); ``end_victim`` stops it and records that.
    """
    return runs.start_process("victim", [sys.executable, "-c", _VICTIM],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def end_victim(victim: subprocess.Popen) -> None:
    """Stop a victim from ``start_victim`` if it still runs, record that it is gone, and close its pipes."""
    if victim.poll() is None:
        victim.kill()
    victim.wait()
    runs.process_ended("victim", victim)
    for pipe in (victim.stdin, victim.stdout):
        if pipe is not None:
            pipe.close()


def reassign_once(stack: stack_mod.Stack, protocol: str, topic: str, partitions: int = 3,
                  victim: subprocess.Popen | None = None) -> float:
    """Seconds from a SIGKILL of one of two consumers until the survivor owns all ``partitions`` of ``topic``.

    The victim is a child process (``victim``, from ``start_victim``, or a new one) that
    says how many partitions it holds each time that changes; the survivor runs here. The
    kill comes once the group has split the partitions and both sides hold their share (a
    stable group). Raises ``RuntimeError`` if a step takes over 60 s.
    """
    from confluent_kafka import Consumer

    from effectively_once.stack.kafka_settings import consumer_group_settings

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    group = stack.group(f"reassign.{protocol}.{stack_mod.new_run_id()}")
    config: dict[str, Any] = {"bootstrap.servers": stack.kafka_bootstrap, **client_settings(), "group.id": group,
                              "auto.offset.reset": "earliest", "enable.auto.commit": False,
                              **consumer_group_settings(protocol)}
    victim = victim or start_victim()
    survivor = None
    try:
        assert victim.stdin is not None
        victim.stdin.write(json.dumps([config, topic]).encode() + b"\n")
        victim.stdin.flush()
        says = _VictimSays(victim)
        deadline = time.monotonic() + 60
        while not says.read(wait=0.5):
            if victim.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{protocol}: the victim got no partition within 60 s")
        # Only now the survivor: had it joined first, unpolled while we waited, it would hold every partition.
        survivor = Consumer({**config, "logger": quiet_logger()})
        survivor.subscribe([topic])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            survivor.poll(0.05)
            mine = len(survivor.assignment())
            # Split, and settled on both sides: the victim gave up what the survivor now holds.
            if 0 < mine < partitions and says.read() == partitions - mine:
                break
        else:
            raise RuntimeError(f"{protocol}: the group never split its partitions")
        kill_now(victim.pid)
        killed = time.monotonic()
        while time.monotonic() < killed + 60:
            survivor.poll(0.02)
            if len(survivor.assignment()) == partitions:
                return time.monotonic() - killed
        raise RuntimeError(f"{protocol}: the survivor did not get all partitions within 60 s")
    finally:
        if survivor is not None:
            survivor.close()
        end_victim(victim)


@dataclass
class Reassignment:
    """Seconds from SIGKILL to all partitions reassigned, per group protocol, round by round."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PROTOCOLS})
    rounds: int = 0

    def median(self, protocol: str) -> float:
        """The median time of one protocol."""
        return statistics.median(self.seconds[protocol])

    def as_text(self) -> str:
        """Each protocol's median and range, and their ratio."""
        lines = [f"SIGKILL to all partitions reassigned, {self.rounds} rounds per protocol:"]
        for protocol in PROTOCOLS:
            times = self.seconds[protocol]
            lines.append(f"  {protocol:<8} protocol: median {self.median(protocol):.2f} s "
                         f"(range {min(times):.2f}-{max(times):.2f})")
        lines.append(f"  ratio consumer/classic: {self.median(CONSUMER) / self.median(CLASSIC):.2f}x")
        return "\n".join(lines)


def measure_reassignment(stack: stack_mod.Stack, rounds: int = 3,
                         progress: Callable[[str], None] | None = None) -> Reassignment:
    """``rounds`` of ``reassign_once`` per protocol on one 3-partition topic, both protocols side by side.

    In each round one group of each protocol runs at the same time (each its own group, so
    neither sees the other): both see the same machine at the same moment, and a round takes
    as long as the slower of the two. Most of a round is waiting for the broker's session
    timeout, not work; the next round's victims start their interpreters meanwhile.
    """
    topic = stack.create_topic(f"reassign.{stack_mod.new_run_id()}", partitions=3)
    result = Reassignment(rounds=rounds)
    victims = {protocol: start_victim() for protocol in PROTOCOLS}
    try:
        with ThreadPoolExecutor(max_workers=len(PROTOCOLS)) as pool:
            for round_no in range(rounds):
                now, victims = victims, ({protocol: start_victim() for protocol in PROTOCOLS}
                                         if round_no + 1 < rounds else {})
                futures = {protocol: pool.submit(reassign_once, stack, protocol, topic, victim=now[protocol])
                           for protocol in PROTOCOLS}
                for protocol, future in futures.items():
                    seconds = future.result()
                    result.seconds[protocol].append(seconds)
                    if progress:
                        progress(f"round {round_no + 1} {protocol:<8} {seconds:.2f} s")
    finally:
        for spare in victims.values():  # started for a round that an error cancelled
            end_victim(spare)
        stack.delete_topics(topic)
    return result
