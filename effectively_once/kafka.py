"""The Kafka client helpers the package needs, written once.

- ``client_settings()``: the librdkafka settings every client adds to its own
  (``$EO_KAFKA_CONFIG``: SASL or TLS for a managed or secured cluster);
- ``quiet_logger()``: a logger that keeps librdkafka's connection chatter out of notebooks;
- ``ensure_topic(bootstrap, name)``: create a topic unless it exists;
- ``assign_topic`` / ``poll_records`` / ``read_topic``: read a topic from the start (or from
  given offsets) until it goes quiet, until every partition's end, or until the caller has its marker;
- ``refused_by_rebalance``, ``is_partition_eof``, ``topic_already_exists``: what a Kafka error means.

The consumer process imports this module, not ``effectively_once.stack``: a
child that is killed and restarted many times should not load the code that
starts brokers. confluent_kafka is imported inside the functions, as elsewhere
in the package, so that importing this module costs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

# The settings of a consumer that reads a topic to the end of every partition (``read_topic(...,
# until_end=True)``): it needs the end-of-partition events, and a fetch at a partition's end is held
# by the broker for fetch.wait.max.ms waiting for new records (500 ms by default), so every such read
# would end half a second after the data did.
END_READER_SETTINGS: dict[str, Any] = {"enable.partition.eof": True, "fetch.wait.max.ms": 10}

# The coordinator refuses an offset commit with one of the first three when the group moved on
# between poll and commit; librdkafka refuses it itself (_ASSIGNMENT_LOST) when this member was
# already removed, for one because it overran max.poll.interval.ms. Either way the partitions'
# new owner redelivers from the last committed offset.
REBALANCE_ERRORS = ("ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS", "_ASSIGNMENT_LOST")
# A group's coordinator that moved, or is still loading the group's offsets (a broker that has just
# started, or restarted), answers an offset fetch with one of these; asked again a moment later, it
# answers. librdkafka does not ask again for Consumer.committed().
COORDINATOR_BUSY = ("NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE")
COORDINATOR_PATIENCE_SECONDS = 15.0


def quiet_logger() -> logging.Logger:
    """A logger for librdkafka clients that keeps connection chatter out of notebooks.

    Retries against a broker that is down are expected (health checks do
    exactly that); errors still reach the caller as exceptions.
    """
    logger = logging.getLogger("effectively_once.kafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return logger


CLIENT_CONFIG_ENV = "EO_KAFKA_CONFIG"


def client_settings(raw: str | None = None) -> dict[str, str]:
    """The librdkafka settings every Kafka client of the package adds: ``$EO_KAFKA_CONFIG`` (or ``raw``).

    Two spellings, so the variable fits in any ``.env`` file:
    ``key=value`` pairs separated by commas (no quotes needed), or a JSON object
    when a value holds a comma. Empty or unset: no settings (a plaintext broker).
    Child processes inherit the variable, so they log in as their parent does.

        EO_KAFKA_CONFIG=security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=u,sasl.password=p
    """
    text = (os.environ.get(CLIENT_CONFIG_ENV, "") if raw is None else raw).strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{CLIENT_CONFIG_ENV}: not a JSON object ({exc}); write it as "
                             "key=value,key=value or as a JSON object") from None
        if not isinstance(value, dict):
            raise ValueError(f"{CLIENT_CONFIG_ENV}: must be a JSON object of librdkafka settings")
        return {str(k): str(v) for k, v in value.items()}
    settings = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{CLIENT_CONFIG_ENV}: {pair.strip()!r} is not key=value; write it as "
                             "key=value,key=value (or as a JSON object when a value holds a comma)")
        settings[key.strip()] = value.strip()
    return settings


def admin_client(bootstrap: str, config: dict[str, Any] | None = None):
    """A quiet confluent-kafka AdminClient for ``bootstrap``, with ``client_settings()``;
    ``config`` adds client settings (e.g. SASL)."""
    from confluent_kafka.admin import AdminClient

    # A logger object is a valid value here, though the client's type stubs allow only str, int and float.
    settings: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": quiet_logger(), **client_settings(),
                                **(config or {})}
    return AdminClient(settings)


# -- what an error means ----------------------------------------------------------------------------
def error_code(error: Any) -> int | None:
    """The librdkafka code of a ``KafkaError``, or of the ``KafkaError`` a ``KafkaException`` carries."""
    if hasattr(error, "code") and callable(error.code):
        return error.code()
    args = getattr(error, "args", ())
    if args and hasattr(args[0], "code"):
        return args[0].code()
    return None


def refused_by_rebalance(error: Any) -> bool:
    """True when a commit was refused because the group rebalanced (see ``REBALANCE_ERRORS``)."""
    from confluent_kafka import KafkaError

    return error_code(error) in {getattr(KafkaError, name) for name in REBALANCE_ERRORS}


def committed_offsets(consumer, topic: str, partitions: Iterable[int], *, timeout: float = 10.0,
                      patience: float = COORDINATOR_PATIENCE_SECONDS) -> dict[int, int]:
    """The offset ``consumer``'s group committed for each partition of ``topic`` (a negative one for none).

    A fetch refused because the group's coordinator is busy (``COORDINATOR_BUSY``)
    is asked again for up to ``patience`` seconds; any other error is raised at once.
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    busy = {getattr(KafkaError, name) for name in COORDINATOR_BUSY}
    wanted = [TopicPartition(topic, p) for p in partitions]
    deadline = time.monotonic() + patience
    while True:
        try:
            return {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=timeout)}
        except KafkaException as exc:
            if error_code(exc) not in busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def is_partition_eof(error: Any) -> bool:
    """True for the end-of-partition event a consumer with ``enable.partition.eof`` sends (not an error)."""
    from confluent_kafka import KafkaError

    return error_code(error) == KafkaError._PARTITION_EOF


def topic_already_exists(error: Any) -> bool:
    """True when a topic could not be created because it exists already.

    Some Kafka-protocol brokers answer with the code, others only say so in the message.
    """
    from confluent_kafka import KafkaError

    return error_code(error) == KafkaError.TOPIC_ALREADY_EXISTS or "already exists" in str(error).lower()


# -- topics -----------------------------------------------------------------------------------------
def ensure_topic(bootstrap: str, name: str, partitions: int = 1, *, config: dict[str, Any] | None = None) -> str:
    """Create topic ``name`` (its full name) with ``partitions`` partitions unless it exists; return the name.

    ``config`` adds client settings (e.g. SASL) to the admin client's.
    """
    from confluent_kafka.admin import NewTopic

    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions!r}")
    admin = admin_client(bootstrap, config)
    # The admin client must outlive its futures.
    for future in admin.create_topics([NewTopic(name, partitions, 1)], request_timeout=15).values():
        try:
            future.result(timeout=20)
        except Exception as exc:
            if not topic_already_exists(exc):
                raise
    return name


# -- reading a topic ----------------------------------------------------------------------------------
def assign_topic(consumer, topic: str, partitions: Iterable[int] | None = None,
                 offsets: dict[int, int] | None = None, timeout: float = 10.0) -> list[int]:
    """Assign ``consumer`` to ``topic``'s partitions (all of them by default) and return them.

    Each partition starts at ``offsets[p]`` when given (and not negative), else
    at its beginning. ``assign`` rather than ``subscribe``: one reader, no
    group join, no rebalance to wait for. Returns ``[]`` (and assigns nothing)
    when the topic does not exist yet.
    """
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    if partitions is None:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return []
        partitions = metadata.partitions
    chosen = sorted(partitions)
    starts = offsets or {}
    consumer.assign([TopicPartition(topic, p, starts[p] if starts.get(p, -1) >= 0 else OFFSET_BEGINNING)
                     for p in chosen])
    return chosen


def poll_records(consumer, *, quiet: float | None = None, at_least: int = 0, timeout: float | None = None,
                 until_end: Iterable[int] | None = None, skip_errors: bool = True, batch: int = 100,
                 wait: float = 0.1) -> Iterator:
    """Yield the records an assigned (or subscribed) consumer fetches, until one of the stops below.

    - ``quiet``: no record (nor end-of-partition event) for this many seconds,
      once at least ``at_least`` records were yielded (0 s: the first empty fetch);
    - ``timeout``: this many seconds in all;
    - ``until_end``: every one of these partitions has reached its end (the
      consumer needs ``enable.partition.eof``), once at least ``at_least``
      records were yielded;
    - the caller stops iterating (it found its marker, or has enough).

    An error other than end-of-partition is skipped when ``skip_errors``,
    else raised as a ``KafkaException``.
    """
    from confluent_kafka import KafkaException

    deadline = None if timeout is None else time.monotonic() + timeout
    pending_ends = set(until_end) if until_end is not None else None
    yielded = 0
    last_activity = time.monotonic()
    while deadline is None or time.monotonic() < deadline:
        if pending_ends is not None and not pending_ends and yielded >= at_least:
            return
        fetched = consumer.consume(batch, timeout=wait)
        if fetched:
            last_activity = time.monotonic()
        for record in fetched:
            error = record.error()
            if error is not None:
                if is_partition_eof(error):
                    if pending_ends is not None:
                        pending_ends.discard(record.partition())
                    continue
                if skip_errors:
                    continue
                raise KafkaException(error)
            if pending_ends is not None:
                pending_ends.add(record.partition())  # more may follow this one
            yielded += 1
            yield record
        if not fetched and quiet is not None and yielded >= at_least and time.monotonic() - last_activity >= quiet:
            return


def read_topic(consumer, topic: str, partitions: Iterable[int] | None = None,
               offsets: dict[int, int] | None = None, **stops: Any) -> Iterator:
    """Assign ``consumer`` to ``topic`` from the start (or ``offsets``) and yield its records.

    ``stops`` are those of ``poll_records`` (``quiet``, ``at_least``,
    ``timeout``, ``skip_errors``); ``until_end=True`` stops at the end of every
    assigned partition (a consumer made with ``END_READER_SETTINGS``). Yields
    nothing when the topic does not exist.
    """
    chosen = assign_topic(consumer, topic, partitions, offsets)
    if not chosen:
        return
    if stops.get("until_end") is True:
        stops["until_end"] = chosen
    yield from poll_records(consumer, **stops)
