"""What librdkafka does when a setting is left out, checked on the wire against the real broker."""

from __future__ import annotations

import pytest

from effectively_once.guarantees.defaults import (
    group_protocol_default,
    producer_defaults,
)


def test_librdkafkas_default_producer_is_not_idempotent(stack):
    found = producer_defaults(stack)
    assert found.delivered == {"default": True, "idempotent": True}
    assert found.explicit_is_idempotent, "enable.idempotence=true must ask for a producer id"
    assert not found.default_is_idempotent, "librdkafka 2.x leaves idempotence off by default"
    assert "Produce" in found.default_requests


def test_librdkafkas_default_consumer_joins_a_classic_group(stack):
    if stack.broker_flavor != "apache-kafka":
        pytest.skip("the group type is read with DescribeGroups as Apache Kafka answers it")
    found = group_protocol_default(stack)
    assert found.join_request == "JoinGroup", found.requests
    assert found.group_type == "classic"
