"""The strings processes speak: each announce line parses back to what was formatted."""

from __future__ import annotations

import pytest

from effectively_once import protocol


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://127.0.0.1:61234", "https://provider.example:443"])
def test_the_provider_line_parses_back(url):
    log = f"INFO: starting\n{protocol.provider_listening(url)}\nINFO: ready\n"
    assert protocol.parse_provider_listening(log) == url
    assert protocol.parse_provider_listening("INFO: starting\n") is None


def test_the_provider_announces_with_the_shared_prefix():
    from effectively_once.payments import provider

    assert provider.LISTENING is protocol.LISTENING


def test_the_metrics_line_parses_back():
    url = "http://127.0.0.1:9464/metrics"
    log = f"consumer starting\n{protocol.metrics_on(url)}\nconsumer started: topic t\n"
    assert protocol.parse_metrics_on(log) == url
    # The help text of --metrics-port says "metrics on this port": not an announcement.
    assert protocol.parse_metrics_on("serve Prometheus metrics on this port") is None


def test_dlq_headers_are_recognised_whatever_queue_wrote_them():
    names = [protocol.DLQ_ERROR_TYPE, protocol.DLQ_REASON, protocol.DLQ_SOURCE_TOPIC, protocol.DLQ_SOURCE_PARTITION,
             protocol.DLQ_SOURCE_OFFSET, protocol.DLQ_FIRST_SEEN, protocol.DLQ_CONSUMER_GROUP]
    assert all(n.startswith(protocol.DLQ_PREFIX) and protocol.is_dlq_header(n) for n in names)
    assert protocol.is_dlq_header("X-DLQ-Reason") and protocol.is_dlq_header("dlq-error")
    assert not protocol.is_dlq_header("msg_id") and not protocol.is_dlq_header("traceparent")


def test_the_consumer_marks_exactly_the_crash_points_the_protocol_names():
    """The step functions call ``ctx.crash_point(name)``: every name they use is one the lab knows."""
    import ast
    import inspect

    from effectively_once.payments import steps

    used = {node.args[0].value for node in ast.walk(ast.parse(inspect.getsource(steps)))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "crash_point"}
    assert used == set(protocol.ALL_CRASH_POINTS)


def test_ordinals_and_plurals_read_as_english():
    assert [protocol.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]
    assert [protocol.plural(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]


def test_the_provider_answers_parse_back():
    log = "\n".join([protocol.provider_answered("m1", "charge-m1", 200, None, "ch_1"),
                     "dead-lettered something",
                     protocol.provider_answered("m1", "charge-m1", 200, "true", "ch_1"),
                     protocol.provider_answered("m2", None, 200, None, "ch_2")])
    answers = protocol.parse_provider_answers(log)
    assert [(a["msg_id"], a["key"], a["replayed"]) for a in answers] == [
        ("m1", "charge-m1", "(absent)"), ("m1", "charge-m1", "true"), ("m2", "(none)", "(absent)")]
    assert answers[1]["status"] == "200" and answers[1]["charge_id"] == "ch_1"
