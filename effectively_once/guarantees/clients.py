"""The confluent-kafka clients the checks (and the incident replays) share, and how long they wait."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from effectively_once import stack as stack_mod
from effectively_once.kafka import quiet_logger, read_topic

# How long a check waits for the broker before it calls the outcome. Short on
# purpose: a broker that does not fence a zombie makes the zombie's commit hang
# for the whole timeout.
OPERATION_TIMEOUT = 10.0
ZOMBIE_COMMIT_TIMEOUT = 2.0
READ_TIMEOUT = 8.0


def kafka_error(exc: BaseException) -> str:
    """The Kafka error code name of an exception from confluent-kafka, else its text."""
    arg = exc.args[0] if getattr(exc, "args", None) else None
    name = getattr(arg, "name", None)  # a KafkaError, whose name() is the code's name
    if callable(name):
        return str(name())
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_values(stack: stack_mod.Stack, topic: str, partitions: Iterable[int], *,
                stop_when: Callable[[list[str]], bool], timeout: float = READ_TIMEOUT,
                field: str = "value") -> list[str]:
    """Values (or with ``field="key"`` keys) a fresh ``read_committed`` consumer sees from the start of ``partitions``.

    Reads until ``stop_when(values)`` or ``timeout``. The consumer is assigned
    partitions directly (no group join, no offset commit), so it leaves no group behind.
    """
    from confluent_kafka import Consumer

    if field not in ("value", "key"):
        raise ValueError(f"field must be 'value' or 'key', not {field!r}")
    consumer = Consumer(stack.consumer_config(**{
        "group.id": stack.group(f"probe-reader-{stack_mod.new_run_id()}"),
        "isolation.level": "read_committed",
        "logger": quiet_logger(),
    }))
    values: list[str] = []
    try:
        if not stop_when(values):
            for record in read_topic(consumer, topic, partitions, timeout=timeout):
                values.append(getattr(record, field)().decode())
                if stop_when(values):
                    break
    finally:
        consumer.close()
    return values


def transactional_producer(stack: stack_mod.Stack, transactional_id: str, **overrides: Any):
    """A confluent-kafka producer with ``transactional_id``, its transactions initialised."""
    from confluent_kafka import Producer

    producer = Producer(stack.producer_config(**{
        "transactional.id": transactional_id,
        "logger": quiet_logger(),
        **overrides,
    }))
    producer.init_transactions(OPERATION_TIMEOUT)
    return producer


def delete_groups(stack: stack_mod.Stack, *groups: str) -> None:
    """Delete consumer groups (best effort).

    Tansu advertises DeleteGroups but never answers it (a request waits out any
    timeout), so on Tansu the groups are left; they hold only a committed offset.
    """
    if stack.broker_flavor == "tansu":
        return
    try:
        # The admin client must outlive its futures: collected, it never completes them, and each
        # result() below would wait out its whole timeout with the group left in place.
        admin = stack.admin()
        futures = admin.delete_consumer_groups(list(groups), request_timeout=5)
        for future in futures.values():
            try:
                future.result(timeout=5)
            except Exception:
                pass
    except Exception:
        pass
