"""One customer's authorize, capture, refund through a dead-letter topic and a redrive: the order they apply in.

    topic (1 partition, keyed by customer):  authorize  capture  refund
    handler:   capture fails once -> dead-letter topic; refund passes
    redrive:   read the dead-letter topic from the start, hand each record to the handler again

Without parking, the handler applies authorize, refund, then (at the redrive)
capture: every message applied once, in the wrong order. Parking the key:
once a key has a message in the dead-letter topic, its later messages are
sent there behind it instead of being handled, and the redrive replays them
all in their order: authorize, capture, refund.

``OrderedConsumer`` is the loop's logic and needs no broker; ``OrderingLab``
runs it against real topics.

    with OrderingLab(stack) as lab:
        lab.publish_story()
        run = lab.run(park_keys=True)
        run.applied        # ['authorize', 'capture', 'refund']
"""

from __future__ import annotations

import atexit
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from effectively_once.payments.lab_reports import Table
from effectively_once.protocol import DLQ_REASON

if TYPE_CHECKING:
    from effectively_once.stack import Stack

STORY = ("authorize", "capture", "refund")
CUSTOMER = "cus_042"
APPLIED = "applied"
DEAD_LETTERED = "dead-lettered"
PARKED = "parked"


@dataclass(frozen=True)
class Event:
    """One payment message: its msg_id, its key (the customer) and what it asks for."""

    msg_id: str
    key: str
    kind: str

    def to_json(self) -> bytes:
        """The record value."""
        return json.dumps({"msg_id": self.msg_id, "customer": self.key, "kind": self.kind}).encode()

    @classmethod
    def from_json(cls, value: bytes) -> Event:
        """The event a record value holds."""
        data = json.loads(value)
        return cls(data["msg_id"], data["customer"], data["kind"])


def story(customer: str = CUSTOMER, kinds: Iterable[str] = STORY) -> list[Event]:
    """One customer's messages, in the order the shop sends them."""
    return [Event(f"{customer}-{i}-{kind}", customer, kind) for i, kind in enumerate(kinds, start=1)]


class HandlerFailed(RuntimeError):
    """The handler could not apply an event this time (a timeout downstream, say)."""


class FlakyHandler:
    """A payment handler that applies events in the order it is given them and fails each kind in ``fail_once`` once."""

    def __init__(self, fail_once: Iterable[str] = ("capture",)) -> None:
        self._to_fail = set(fail_once)
        self.applied: list[Event] = []

    def __call__(self, event: Event) -> None:
        """Apply ``event``, or raise ``HandlerFailed`` the first time its kind is one to fail."""
        if event.kind in self._to_fail:
            self._to_fail.discard(event.kind)
            raise HandlerFailed(f"{event.kind} failed: the provider timed out")
        self.applied.append(event)


@dataclass
class OrderedConsumer:
    """The consumer loop's logic: hand each event to ``handler``; dead-letter it when the handler fails.

    With ``park_keys``, a key that has a message in the dead-letter topic is
    parked: its later messages are dead-lettered behind it without being
    handled, so that a redrive replays them in their order.
    """

    handler: Callable[[Event], None]
    dead_letter: Callable[[Event, str], None]
    park_keys: bool = False
    parked: set[str] = field(default_factory=set)
    outcomes: list[tuple[str, str, str, str]] = field(default_factory=list)

    def process(self, event: Event, phase: str = "first pass") -> str:
        """Handle one event; return ``APPLIED``, ``DEAD_LETTERED`` or ``PARKED``."""
        if self.park_keys and event.key in self.parked:
            self.dead_letter(event, f"parked behind an earlier message of {event.key}")
            return self._record(phase, event, PARKED)
        try:
            self.handler(event)
        except HandlerFailed as exc:
            self.dead_letter(event, str(exc))
            self.parked.add(event.key)
            return self._record(phase, event, DEAD_LETTERED)
        return self._record(phase, event, APPLIED)

    def redrive(self, events: Iterable[Event]) -> list[str]:
        """Replay dead-lettered events in their order, their keys unparked first; return each outcome."""
        events = list(events)
        self.parked -= {e.key for e in events}
        return [self.process(event, "redrive") for event in events]

    def _record(self, phase: str, event: Event, outcome: str) -> str:
        self.outcomes.append((phase, event.msg_id, event.kind, outcome))
        return outcome

    @property
    def table(self) -> Table:
        """Every event handed to the loop, with what became of it."""
        return Table("what the consumer did", ["phase", "msg_id", "kind", "outcome"], list(self.outcomes))


@dataclass
class OrderingRun:
    """One run through the topic and its redrive: what the handler applied, in order, and what went where."""

    park_keys: bool
    read: list[str]
    dead_letter_topic: list[str]
    applied: list[str]
    table: Table


class OrderingLab:
    """A one-partition topic holding one customer's story, and a dead-letter topic per run; ``stop()`` deletes them."""

    def __init__(self, stack: Stack, customer: str = CUSTOMER) -> None:
        self.stack = stack
        self.customer = customer
        self._token = uuid.uuid4().hex[:8]
        self.topic = stack.create_topic(f"payments.ordering.{self._token}", partitions=1)
        self.topics = [self.topic]
        self._stopped = False
        atexit.register(self.stop)

    def publish_story(self, kinds: Iterable[str] = STORY) -> list[Event]:
        """Produce the customer's messages, keyed by the customer, and wait for the broker's acks."""
        events = story(self.customer, kinds)
        self._produce(self.topic, [(e, None) for e in events])
        return events

    def _produce(self, topic: str, items: list[tuple[Event, str | None]]) -> None:
        from confluent_kafka import Producer

        from effectively_once.kafka import quiet_logger

        failed: list = []
        producer = Producer(self.stack.producer_config(logger=quiet_logger()))
        for event, reason in items:
            headers: list[tuple[str, str | bytes | None]] = [("msg_id", event.msg_id.encode())]
            if reason:
                headers.append((DLQ_REASON, reason.encode()))
            producer.produce(topic, key=event.key.encode(), value=event.to_json(), headers=headers,
                             on_delivery=lambda err, msg: failed.append(err) if err else None)
        if producer.flush(30) or failed:
            raise RuntimeError(f"the broker did not acknowledge every record for {topic} ({failed[:1]}): "
                               "`python -m effectively_once status` says whether the broker is up")

    def read(self, topic: str, timeout: float = 20.0) -> list[Event]:
        """Every event in ``topic``, read from the start (``assign``, no group) to the end."""
        from confluent_kafka import Consumer

        from effectively_once.kafka import END_READER_SETTINGS, quiet_logger, read_topic

        consumer = Consumer(self.stack.consumer_config(**{"group.id": f"ordering-{self._token}",
                                                          **END_READER_SETTINGS,
                                                          "logger": quiet_logger()}))
        try:
            return [Event.from_json(r.value()) for r in read_topic(consumer, topic, until_end=True, timeout=timeout)]
        finally:
            consumer.close()

    def run(self, *, park_keys: bool, fail_once: Iterable[str] = ("capture",)) -> OrderingRun:
        """Consume the topic with a handler that fails ``fail_once`` once, then redrive the dead-letter topic.

        Dead-lettered events are produced to a new one-partition topic (keyed
        by customer, the reason in a header) as the loop meets them, and
        acknowledged before it goes on; the redrive reads that topic from the start.
        """
        dlq = self.stack.create_topic(f"payments.ordering.{self._token}.dlq.{len(self.topics)}", partitions=1)
        self.topics.append(dlq)
        handler = FlakyHandler(fail_once)
        loop = OrderedConsumer(handler, lambda event, reason: self._produce(dlq, [(event, reason)]),
                               park_keys=park_keys)
        read = self.read(self.topic)
        for event in read:
            loop.process(event)
        dead = self.read(dlq)
        loop.redrive(dead)
        return OrderingRun(park_keys, [e.kind for e in read], [e.kind for e in dead],
                           [e.kind for e in handler.applied], loop.table)

    def stop(self) -> None:
        """Delete the topics."""
        if self._stopped:
            return
        self._stopped = True
        self.stack.delete_topics(*self.topics)
        atexit.unregister(self.stop)

    def __enter__(self) -> OrderingLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
