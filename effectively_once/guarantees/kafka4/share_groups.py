"""KIP-932 (share groups), live: a released record comes back with a higher delivery count."""

from __future__ import annotations

import time
from dataclasses import dataclass

from effectively_once import stack as stack_mod
from effectively_once.guarantees.clients import OPERATION_TIMEOUT
from effectively_once.guarantees.kafka4.broker import wire_client
from effectively_once.kafka import client_settings, quiet_logger


@dataclass
class ShareDelivery:
    """One record as a share consumer received it, and what the consumer answered."""

    value: str
    offset: int
    delivery_count: int | None
    answer: str


@dataclass
class ShareOutcome:
    """What a share group delivered, or why the broker would not serve one."""

    deliveries: list[ShareDelivery]
    share_version: int
    error: str | None = None

    def counts(self, value: str) -> list[int | None]:
        """The delivery counts with which ``value`` arrived, in order."""
        return [d.delivery_count for d in self.deliveries if d.value == value]

    def as_text(self) -> str:
        """One line per delivery."""
        if self.error:
            return f"no share group: {self.error}"
        return "\n".join(f"offset {d.offset}  {d.value:<10} delivery {d.delivery_count}  -> {d.answer}"
                         for d in self.deliveries)


def share_group_redelivery(stack: stack_mod.Stack, records: int = 3, release: int = 1,
                           timeout: float = 20.0) -> ShareOutcome:
    """Produce ``records`` values, consume them in a share group, RELEASE value number ``release`` once.

    The consumer acknowledges explicitly: every record is accepted except the released
    one's first delivery, which the broker must hand out again with delivery count 2.
    The group reads from the start (group config ``share.auto.offset.reset=earliest``).
    """
    from confluent_kafka import AcknowledgeType, Producer, ShareConsumer
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    wire = wire_client(stack)
    try:
        share_version = wire.finalized_features().get("share.version", 0)
    finally:
        wire.close()
    topic = stack.create_topic(f"kafka4.share.{stack_mod.new_run_id()}", partitions=1)
    group = stack.group(f"kafka4.share.{stack_mod.new_run_id()}")
    values = [f"job-{n}" for n in range(records)]
    released = values[release]
    deliveries: list[ShareDelivery] = []
    consumer = None
    try:
        producer = Producer(stack.producer_config(logger=quiet_logger()))
        for value in values:
            producer.produce(topic, value=value.encode(), partition=0)
        producer.flush(OPERATION_TIMEOUT)
        resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[
            ConfigEntry("share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET)])
        admin = stack.admin()  # kept in a name: a collected AdminClient fails its pending futures
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=OPERATION_TIMEOUT)
        consumer = ShareConsumer({"bootstrap.servers": stack.kafka_bootstrap, **client_settings(), "group.id": group,
                                  "share.acknowledgement.mode": "explicit", "logger": quiet_logger()})
        consumer.subscribe([topic])
        accepted: set[str] = set()
        deadline = time.monotonic() + timeout
        while len(accepted) < records and time.monotonic() < deadline:
            for message in consumer.poll(0.5) or []:
                if message.error():
                    raise RuntimeError(str(message.error()))
                value = (message.value() or b"").decode()
                first_time = not any(d.value == value for d in deliveries)
                answer = "RELEASE" if value == released and first_time else "ACCEPT"
                consumer.acknowledge(message, AcknowledgeType.RELEASE if answer == "RELEASE"
                                     else AcknowledgeType.ACCEPT)
                deliveries.append(ShareDelivery(value, message.offset() or 0, message.delivery_count(), answer))
                if answer == "ACCEPT":
                    accepted.add(value)
            consumer.commit_sync(OPERATION_TIMEOUT)
        if len(accepted) < records:
            return ShareOutcome(deliveries, share_version,
                                f"only {sorted(accepted)} of {values} accepted within {timeout:.0f} s")
    except Exception as exc:  # the broker refuses share groups: say so, with its words
        return ShareOutcome(deliveries, share_version, f"{type(exc).__name__}: {exc}")
    finally:
        if consumer is not None:
            try:
                consumer.close()
            except Exception:
                pass
        stack.delete_topics(topic)
    return ShareOutcome(deliveries, share_version)
