"""``effectively_once.kafka`` on the run's real broker: topics made once, topics read to an end."""

from __future__ import annotations

import itertools
import time

import pytest
from confluent_kafka import Consumer, Producer

from effectively_once.kafka import (
    ensure_topic,
    quiet_logger,
    read_topic,
)
from effectively_once.stack import new_run_id


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


def test_read_until_quiet_sees_every_record_from_the_start(stack, filled_topic):
    consumer = reader(stack)
    try:
        started = time.monotonic()
        values = [r.value() for r in read_topic(consumer, filled_topic, quiet=1.0, at_least=11, timeout=30)]
    finally:
        consumer.close()
    assert sorted(values) == sorted([f"v{i}".encode() for i in range(10)] + [b"end"])
    assert time.monotonic() - started < 30, "it stopped because the topic went quiet, not at the timeout"


def test_read_until_the_end_of_every_partition(stack, filled_topic):
    consumer = reader(stack, **{"enable.partition.eof": True})
    try:
        values = list(r.value() for r in read_topic(consumer, filled_topic, until_end=True, timeout=30))
    finally:
        consumer.close()
    assert len(values) == 11


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
