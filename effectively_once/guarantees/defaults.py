"""What a librdkafka client does when you leave a setting out, observed on the wire rather than read in a table.

- ``producer_defaults(stack)``: a producer built with nothing but ``bootstrap.servers``
  sends one record; a second one does the same with ``enable.idempotence=true``. Each
  logs the requests it sends (``debug=protocol``): only a producer that asks the broker
  for a producer id (``InitProducerId``) is idempotent.
- ``group_protocol_default(stack)``: a consumer with no setting beyond the group id joins
  a group; it reports which request it joined with and what kind of group the broker
  says it formed (``classic``, or ``consumer`` for KIP-848).
- ``share_consumer_status()``: what the installed confluent-kafka package says of its
  own ``ShareConsumer`` (KIP-932), from the package's metadata.

The Java client differs on the first point: it has enabled idempotence by default
since Apache Kafka 3.0 (KIP-679). That is why the course's producer sets
``enable.idempotence`` explicitly (``Stack.producer_config``).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from effectively_once import stack as stack_mod
from effectively_once.guarantees.clients import OPERATION_TIMEOUT
from effectively_once.kafka import client_settings


class RequestLog(logging.Handler):
    """The names and versions of the requests a librdkafka client sends (its ``debug=protocol`` lines)."""

    SENT = re.compile(r"Sent (\w+)Request \(v(\d+),")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.versions: dict[str, set[int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = self.SENT.search(record.getMessage())
        if match:
            self.versions.setdefault(match.group(1), set()).add(int(match.group(2)))


def _logged(name: str) -> tuple[logging.Logger, RequestLog]:
    """A private logger that feeds a fresh ``RequestLog`` and nothing else."""
    requests = RequestLog()
    logger = logging.getLogger(f"effectively_once.defaults.{name}.{stack_mod.new_run_id()}")
    logger.addHandler(requests)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, requests


@dataclass
class ProducerDefaults:
    """The requests a producer with no settings sent, beside one with ``enable.idempotence=true``."""

    default_requests: dict[str, set[int]]
    idempotent_requests: dict[str, set[int]]
    delivered: dict[str, bool] = field(default_factory=dict)

    @property
    def default_is_idempotent(self) -> bool:
        """True when the producer built with no settings asked for a producer id."""
        return "InitProducerId" in self.default_requests

    @property
    def explicit_is_idempotent(self) -> bool:
        """True when the producer with ``enable.idempotence=true`` asked for a producer id."""
        return "InitProducerId" in self.idempotent_requests

    def as_text(self) -> str:
        """One line per producer: its settings, whether it asked for a producer id, and whether its record landed."""
        return "\n".join(
            f"producer, {label:<26} asked for a producer id: {asked!s:<5}  record delivered: {self.delivered[name]}"
            for name, label, asked in (("default", "no settings:", self.default_is_idempotent),
                                       ("idempotent", "enable.idempotence=true:", self.explicit_is_idempotent)))


@dataclass
class GroupDefault:
    """How a consumer with no setting beyond ``group.id`` joined its group, and how the broker describes the group."""

    requests: dict[str, set[int]]
    group_type: str

    @property
    def join_request(self) -> str:
        """``JoinGroup`` (the classic protocol) or ``ConsumerGroupHeartbeat`` (KIP-848), as sent."""
        sent = [name for name in ("ConsumerGroupHeartbeat", "JoinGroup") if name in self.requests]
        return sent[0] if sent else "(none)"

    def as_text(self) -> str:
        """One line: the request the consumer joined with, and the group's type as the broker reports it."""
        return (f"consumer, only group.id: joined with {self.join_request}; "
                f"the broker describes the group as {self.group_type}")


def _send_one(stack: stack_mod.Stack, topic: str, name: str, **settings: Any) -> tuple[dict[str, set[int]], bool]:
    """Send one record with a producer that has only ``settings`` beyond the address; its requests, and success."""
    from confluent_kafka import Producer

    logger, requests = _logged(name)
    delivered: list[bool] = []
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, **client_settings(), **settings,
                         "debug": "protocol", "logger": logger})
    try:
        producer.produce(topic, value=name.encode(), partition=0,
                         on_delivery=lambda err, _msg: delivered.append(err is None))
        producer.flush(OPERATION_TIMEOUT)
    finally:
        logger.removeHandler(requests)
    return requests.versions, delivered == [True]


def producer_defaults(stack: stack_mod.Stack) -> ProducerDefaults:
    """One record from a producer with no settings, one from an idempotent producer (a topic of their own)."""
    topic = stack.create_topic(f"defaults.producer.{stack_mod.new_run_id()}", partitions=1)
    try:
        plain, plain_ok = _send_one(stack, topic, "default")
        idempotent, idempotent_ok = _send_one(stack, topic, "idempotent", **{"enable.idempotence": True})
    finally:
        stack.delete_topics(topic)
    return ProducerDefaults(plain, idempotent, {"default": plain_ok, "idempotent": idempotent_ok})


def _group_type(stack: stack_mod.Stack, group: str) -> str:
    """How the broker describes ``group``: ``classic``, ``consumer`` or ``unknown``."""
    admin = stack.admin()  # kept in a name: a collected AdminClient fails its pending futures
    description = admin.describe_consumer_groups([group])[group].result(timeout=OPERATION_TIMEOUT)
    return str(getattr(description.type, "name", description.type)).lower()


def group_protocol_default(stack: stack_mod.Stack, timeout: float = 30.0) -> GroupDefault:
    """A consumer with no setting beyond ``group.id`` joins a group of its own; how did it join, what did it form?"""
    from confluent_kafka import Consumer

    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"defaults.group.{run}", partitions=1)
    group = stack.group(f"defaults.{run}")
    logger, requests = _logged("consumer")
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, **client_settings(), "group.id": group,
                         "debug": "protocol", "logger": logger})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not consumer.assignment():
            consumer.poll(0.2)
        if not consumer.assignment():
            raise RuntimeError(f"the default consumer was given no partition within {timeout:.0f} s")
        group_type = _group_type(stack, group)
    finally:
        consumer.close()
        logger.removeHandler(requests)
        stack.delete_topics(topic)
    return GroupDefault(requests.versions, group_type)


def share_consumer_status() -> str:
    """The sentence of the installed confluent-kafka's own description that introduces its ``ShareConsumer``.

    It is read from the package's metadata (its PyPI description), so it is what the
    pinned version itself says, Preview or not.
    """
    description = metadata.metadata("confluent-kafka").get_payload() or ""  # type: ignore[attr-defined]
    for line in description.splitlines():
        if "ShareConsumer" in line and "KIP-932" in line:
            return re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", line).replace("**", "").strip(" -")
    raise LookupError("the installed confluent-kafka's description does not mention a KIP-932 ShareConsumer")
