"""``effectively_once.kafka`` on the session's real broker: topics made once, topics read to an end."""

from __future__ import annotations

import itertools
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from effectively_once.kafka import (
    REBALANCE_ERRORS,
    ensure_topic,
    is_partition_eof,
    quiet_logger,
    read_topic,
    refused_by_rebalance,
    topic_already_exists,
)
from effectively_once.stack import new_run_id


def test_errors_are_classified_by_code():
    for name in REBALANCE_ERRORS:
        error = KafkaError(getattr(KafkaError, name))
        assert refused_by_rebalance(error) and refused_by_rebalance(KafkaException(error))
    assert not refused_by_rebalance(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert is_partition_eof(KafkaError(KafkaError._PARTITION_EOF))
    assert not is_partition_eof(KafkaError(KafkaError._TRANSPORT))
    assert topic_already_exists(KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS)))
    assert not topic_already_exists(KafkaException(KafkaError(KafkaError.INVALID_PARTITIONS)))


def test_ensure_topic_refuses_zero_partitions():
    with pytest.raises(ValueError, match="partitions must be at least 1"):
        ensure_topic("127.0.0.1:1", "t", 0)


@pytest.fixture
def filled_topic(stack):
    """A two-partition topic holding ``v0``..``v9``, then ``end`` on partition 0."""
    topic = stack.topic(f"helpers.{new_run_id()}")
    assert ensure_topic(stack.kafka_bootstrap, topic, 2) == topic
    assert ensure_topic(stack.kafka_bootstrap, topic, 2) == topic  # a second time is not an error
    producer = Producer(stack.producer_config(logger=quiet_logger()))
    for i in range(10):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % 2)
    producer.produce(topic, value=b"end", partition=0)
    assert producer.flush(15) == 0
    yield topic
    stack.delete_topics(topic)


def reader(stack, **extra):
    return Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": stack.group(f"r.{new_run_id()}"),
                     "enable.auto.commit": False, "logger": quiet_logger(), **extra})


@pytest.mark.integration
def test_read_until_quiet_sees_every_record_from_the_start(stack, filled_topic):
    consumer = reader(stack)
    try:
        started = time.monotonic()
        values = [r.value() for r in read_topic(consumer, filled_topic, quiet=1.0, at_least=11, timeout=30)]
    finally:
        consumer.close()
    assert sorted(values) == sorted([f"v{i}".encode() for i in range(10)] + [b"end"])
    assert time.monotonic() - started < 30, "it stopped because the topic went quiet, not at the timeout"


@pytest.mark.integration
def test_read_until_the_end_of_every_partition(stack, filled_topic):
    consumer = reader(stack, **{"enable.partition.eof": True})
    try:
        values = list(r.value() for r in read_topic(consumer, filled_topic, until_end=True, timeout=30))
    finally:
        consumer.close()
    assert len(values) == 11


@pytest.mark.integration
def test_read_until_a_marker_and_from_given_offsets(stack, filled_topic):
    consumer = reader(stack)
    try:
        before_marker = list(itertools.takewhile(lambda r: r.value() != b"end",
                                                 read_topic(consumer, filled_topic, [0], offsets={0: 2}, timeout=30)))
    finally:
        consumer.close()
    assert [r.value() for r in before_marker] == [b"v4", b"v6", b"v8"]


def test_a_missing_topic_reads_as_empty(stack):
    consumer = reader(stack)
    try:
        assert list(read_topic(consumer, stack.topic(f"missing.{new_run_id()}"), quiet=0.2, timeout=5)) == []
    finally:
        consumer.close()
