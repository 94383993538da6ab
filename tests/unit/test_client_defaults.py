"""What librdkafka does when a setting is left out: reading its protocol log and its own notes, without a broker.

The same defaults on the wire, against the real broker, are tests/integration/test_client_defaults.py's.
"""

from __future__ import annotations

from effectively_once.guarantees.defaults import (
    RequestLog,
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
