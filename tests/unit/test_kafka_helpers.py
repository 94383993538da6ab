"""The Kafka helpers without a broker: error classes, and the refusals that come before any connection."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from effectively_once.kafka import (
    REBALANCE_ERRORS,
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
