"""What librdkafka does when a setting is left out, checked on the wire against the real broker."""

from __future__ import annotations

import pytest

from effectively_once.guarantees.defaults import (
    RequestLog,
    group_protocol_default,
    producer_defaults,
    share_consumer_status,
)


def test_the_request_log_reads_librdkafka_protocol_lines():
    import logging

    log = RequestLog()
    for line in ("[thrd:x]: Sent InitProducerIdRequest (v4, 40 bytes @ 0, CorrId 2)",
                 "Sent ProduceRequest (v10, 120 bytes @ 0, CorrId 5)", "Received ProduceResponse (v10)"):
        log.emit(logging.LogRecord("t", logging.DEBUG, __file__, 1, line, None, None))
    assert log.versions == {"InitProducerId": {4}, "Produce": {10}}


def test_the_installed_client_says_what_it_says_of_its_share_consumer():
    status = share_consumer_status()
    assert "ShareConsumer" in status and "KIP-932" in status
    assert "](" not in status and "**" not in status, "links and emphasis are stripped"


@pytest.mark.integration
def test_librdkafkas_default_producer_is_not_idempotent(stack):
    found = producer_defaults(stack)
    assert found.delivered == {"default": True, "idempotent": True}
    assert found.explicit_is_idempotent, "enable.idempotence=true must ask for a producer id"
    assert not found.default_is_idempotent, "librdkafka 2.x leaves idempotence off by default"
    assert "Produce" in found.default_requests


@pytest.mark.integration
def test_librdkafkas_default_consumer_joins_a_classic_group(stack):
    if stack.broker_flavor != "apache-kafka":
        pytest.skip("the group type is read with DescribeGroups as Apache Kafka answers it")
    found = group_protocol_default(stack)
    assert found.join_request == "JoinGroup", found.requests
    assert found.group_type == "classic"
