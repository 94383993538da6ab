"""The Kafka helpers without a broker: error classes, and the refusals that come before any connection."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from effectively_once.kafka import (
    COORDINATOR_BUSY,
    REBALANCE_ERRORS,
    committed_offsets,
    ensure_topic,
    is_partition_eof,
    refused_by_rebalance,
    topic_already_exists,
)


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


class _Coordinator:
    """What ``Consumer.committed`` answers: ``refusals`` errors first (raised), then the offsets."""

    def __init__(self, *refusals: int):
        self.refusals = list(refusals)
        self.asked = 0

    def committed(self, partitions, timeout):
        from confluent_kafka import TopicPartition

        self.asked += 1
        if self.refusals:
            raise KafkaException(KafkaError(self.refusals.pop(0)))
        return [TopicPartition(tp.topic, tp.partition, 10 * tp.partition + 1) for tp in partitions]


def test_committed_offsets_asks_again_while_the_coordinator_is_busy():
    busy = [getattr(KafkaError, name) for name in COORDINATOR_BUSY]
    coordinator = _Coordinator(*busy)
    assert committed_offsets(coordinator, "t", [0, 2]) == {0: 1, 2: 21}
    assert coordinator.asked == len(busy) + 1


def test_committed_offsets_raises_any_other_error_at_once_and_a_busy_one_after_its_patience():
    other = _Coordinator(KafkaError.GROUP_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        committed_offsets(other, "t", [0])
    assert other.asked == 1
    stuck = _Coordinator(*[KafkaError.NOT_COORDINATOR] * 100)
    with pytest.raises(KafkaException):
        committed_offsets(stuck, "t", [0], patience=0.5)
    assert 1 < stuck.asked < 100
