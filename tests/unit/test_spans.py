"""Spans without a broker: the JSON-lines file, links, and duplicate detection."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from effectively_once.observe.spans import (
    CONSUMER_SPAN,
    JsonLinesSpanExporter,
    SendSpans,
    SpanStartRecorder,
    find_duplicate_traces,
    is_process_span,
    is_send_span,
    load_spans,
    message_span,
    outgoing_traceparent,
    wait_for_processed_trace,
)
from effectively_once.observe.tracing import parse_traceparent
from effectively_once.payments.producer import charge_records, send_records

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _tracer(path):
    provider = TracerProvider()
    exporter = JsonLinesSpanExporter(path)
    provider.add_span_processor(SpanStartRecorder(exporter))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, provider.get_tracer("test")


def test_a_message_span_is_a_child_of_the_producers_traceparent(tmp_path):
    provider, tracer = _tracer(tmp_path / "spans.jsonl")
    attributes = {"messaging.message.id": "m-1", "messaging.destination.name": "charges"}
    with message_span(PARENT, attributes, tracer=tracer) as span:
        outgoing = outgoing_traceparent(PARENT)
    provider.shutdown()
    [record] = load_spans(tmp_path / "spans.jsonl")
    assert record.trace_id == "0af7651916cd43dd8448eb211c80319c" and record.parent_span_id == "b7ad6b7169203331"
    assert record.finished and record.msg_id == "m-1" and record.name == "process charges" and record.kind == "consumer"
    # The messaging conventions: the process span links to the message's creation context.
    assert record.links == ("b7ad6b7169203331",)
    assert record.attributes["messaging.operation.name"] == record.attributes["messaging.operation.type"] == "process"
    # The provider call's parent is the consumer span itself.
    assert parse_traceparent(outgoing) == (record.trace_id, f"{span.get_span_context().span_id:016x}")


def test_without_a_current_span_an_outgoing_call_starts_a_child_of_the_message():
    trace_id, span_id = parse_traceparent(outgoing_traceparent(PARENT))
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and span_id != "b7ad6b7169203331"


def test_a_span_whose_process_died_loads_as_unfinished(tmp_path):
    path = tmp_path / "spans.jsonl"
    provider, tracer = _tracer(path)
    with message_span(PARENT, {"messaging.message.id": "m-1"}, tracer=tracer):
        pass
    span = tracer.start_span(CONSUMER_SPAN, attributes={"messaging.message.id": "m-1"})  # never ended: a SIGKILL
    provider.shutdown()
    with open(path, "a") as f:
        f.write('{"event": "end", "name": "torn')  # a writer killed mid-line
    spans = load_spans(path)
    assert [s.finished for s in spans] == [True, False]
    assert spans[1].span_id == f"{span.get_span_context().span_id:016x}"
    assert load_spans(tmp_path / "missing.jsonl") == []


def test_find_duplicate_traces_groups_consumer_spans_by_trace(tmp_path):
    path = tmp_path / "spans.jsonl"
    lines = []
    for i, (trace, msg) in enumerate([("a" * 32, "m-1"), ("b" * 32, "m-2"), ("a" * 32, "m-1"), ("c" * 32, "m-1")]):
        lines.append({"event": "end", "name": "process charges", "kind": "consumer", "trace_id": trace,
                      "span_id": f"{i + 1:016x}", "parent_span_id": None, "start": float(i), "end": i + 0.5,
                      "status": "unset", "attributes": {"messaging.message.id": msg}, "pid": 1})
    lines.append(dict(lines[1], name="POST /v1/charges", kind="client", span_id=f"{9:016x}"))  # not a consumer span
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    [duplicate] = find_duplicate_traces(load_spans(path))
    assert duplicate.trace_id == "a" * 32 and duplicate.msg_ids == {"m-1"} and len(duplicate.spans) == 2
    # Same msg_id under another trace ("c"...) is another message as far as tracing knows: not grouped.


def test_two_consumer_groups_in_one_trace_are_not_a_duplicate(tmp_path):
    path = tmp_path / "spans.jsonl"
    lines = [{"event": "end", "name": "process charges", "kind": "consumer", "trace_id": "a" * 32,
              "span_id": f"{i + 1:016x}", "parent_span_id": None, "start": float(i), "end": i + 0.5,
              "status": "unset", "pid": 1,
              "attributes": {"messaging.message.id": "m-1", "messaging.consumer.group.name": group}}
             for i, group in enumerate(["shop", "audit", "shop"])]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    [duplicate] = find_duplicate_traces(load_spans(path))
    assert [s.attributes["messaging.consumer.group.name"] for s in duplicate.spans] == ["shop", "shop"], \
        "each group processes every message once: only a second span in the same group is a duplicate"


def test_a_send_span_takes_the_ids_of_the_records_traceparent_and_the_process_span_links_to_it(tmp_path):
    path = tmp_path / "spans.jsonl"
    spans = SendSpans(path)
    headers = [("msg_id", b"m-1"), ("traceparent", PARENT.encode())]
    span, sent_headers = spans.start("charges.x", b"cus_001", headers, "m-1")
    assert sent_headers == headers, "a traceparent already there is the span's context, left as it is"
    SendSpans.delivered(span, 2, 41)
    spans.close()
    provider, tracer = _tracer(path)
    with message_span(PARENT, {"messaging.destination.name": "charges.x", "messaging.message.id": "m-1"},
                      tracer=tracer):
        pass
    provider.shutdown()
    send, process = load_spans(path)
    assert send.name == "send charges.x" and send.kind == "producer" and is_send_span(send)
    assert (send.trace_id, send.span_id) == parse_traceparent(PARENT) and send.parent_span_id is None
    assert send.attributes == {
        "messaging.system": "kafka", "messaging.operation.name": "send", "messaging.operation.type": "send",
        "messaging.destination.name": "charges.x", "messaging.message.id": "m-1",
        "messaging.kafka.message.key": "cus_001",
        "messaging.destination.partition.id": "2", "messaging.kafka.offset": 41}
    assert send.finished and send.status == "unset"
    assert is_process_span(process) and process.trace_id == send.trace_id
    assert process.links == (send.span_id,) and process.parent_span_id == send.span_id


def test_a_record_without_a_traceparent_gets_its_send_spans_context(tmp_path):
    path = tmp_path / "spans.jsonl"
    spans = SendSpans(path)
    first, first_headers = spans.start("charges", None, [("msg_id", b"m-1")])
    second, second_headers = spans.start("charges", None, [("traceparent", b"not a traceparent")])
    SendSpans.delivered(first, 0, 0)
    SendSpans.failed(second, "_MSG_TIMED_OUT", "Local: Message timed out")
    spans.close()
    loaded = {s.span_id: s for s in load_spans(path)}
    trace_ids = set()
    for headers in (first_headers, second_headers):
        [traceparent] = [v for k, v in headers if k == "traceparent"]
        trace_id, span_id = parse_traceparent(traceparent)
        assert loaded[span_id].trace_id == trace_id
        trace_ids.add(trace_id)
    assert len(trace_ids) == 2, "each record starts its own trace"
    failed = loaded[parse_traceparent(second_headers[0][1])[1]]
    assert failed.status == "error" and failed.attributes["error.type"] == "_MSG_TIMED_OUT"
    assert "messaging.kafka.offset" not in failed.attributes


def test_a_producer_span_does_not_make_a_trace_look_duplicated(tmp_path):
    path = tmp_path / "spans.jsonl"
    base = {"event": "end", "trace_id": "a" * 32, "parent_span_id": None, "status": "unset", "pid": 1,
            "attributes": {"messaging.message.id": "m-1"}}
    send = dict(base, name="send charges", kind="producer", span_id=f"{1:016x}", start=0.0, end=0.1)
    process = dict(base, name="process charges", kind="consumer", span_id=f"{2:016x}", start=1.0, end=1.5,
                   parent_span_id=send["span_id"], links=[{"trace_id": "a" * 32, "span_id": send["span_id"]}])
    path.write_text(json.dumps(send) + "\n" + json.dumps(process) + "\n")
    assert find_duplicate_traces(load_spans(path)) == [], "one send span and one process span: processed once"
    again = dict(process, span_id=f"{3:016x}", start=2.0, end=2.5)
    with open(path, "a") as f:
        f.write(json.dumps(again) + "\n")
    [duplicate] = find_duplicate_traces(load_spans(path))
    assert [s.kind for s in duplicate.spans] == ["consumer", "consumer"], "only the process spans count"


def test_waiting_for_a_trace_returns_once_a_process_span_finished_and_names_the_trace_on_timeout(tmp_path):
    path = tmp_path / "spans.jsonl"
    base = {"event": "end", "trace_id": "a" * 32, "parent_span_id": None, "status": "unset", "pid": 1,
            "attributes": {}}
    send = dict(base, name="send charges", kind="producer", span_id=f"{1:016x}", start=0.0, end=0.1)
    path.write_text(json.dumps(send) + "\n")
    with pytest.raises(TimeoutError, match="a" * 32):
        wait_for_processed_trace(path, "a" * 32, timeout=0.3)   # only the send span: nobody processed it
    process = dict(base, name="process charges", kind="consumer", span_id=f"{2:016x}", start=1.0, end=1.5)
    other = dict(process, trace_id="b" * 32, span_id=f"{3:016x}")
    with open(path, "a") as f:
        f.write(json.dumps(other) + "\n" + json.dumps(process) + "\n")
    spans = wait_for_processed_trace(path, "a" * 32, timeout=5)
    assert [s.kind for s in spans] == ["producer", "consumer"], "the trace's own spans, and only those"


class _FakeRecord:
    def __init__(self, partition, offset):
        self._partition, self._offset = partition, offset

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset


class _FakeProducer:
    """Acknowledges every record on flush, at partition 0, offsets 0, 1, ..."""

    def __init__(self, config):
        self.pending = []

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
        self.pending.append((headers, on_delivery))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        for offset, (_, callback) in enumerate(self.pending):
            callback(None, _FakeRecord(0, offset))
        return 0


def test_send_records_writes_one_send_span_per_record_with_the_header_as_its_context(tmp_path, monkeypatch):
    import confluent_kafka

    monkeypatch.setattr(confluent_kafka, "Producer", _FakeProducer)
    records = charge_records(3, seed=1, prefix="p")
    sent = send_records("localhost:1", "charges.x", records, spans_file=tmp_path / "spans.jsonl")
    spans = load_spans(tmp_path / "spans.jsonl")
    assert [s.name for s in spans] == ["send charges.x"] * 3 and [s.offset for s in sent] == [0, 1, 2]
    by_msg = {s.msg_id: s for s in spans}
    for (_, _, headers), landed in zip(records, sent, strict=True):
        span = by_msg[landed.msg_id]
        assert (span.trace_id, span.span_id) == parse_traceparent(dict(headers)["traceparent"])
        assert span.attributes["messaging.kafka.offset"] == landed.offset
    assert len({s.trace_id for s in spans}) == 3, "a new trace per message, not a batch span's children"
    assert charge_records(3, seed=1, prefix="p") == records, "the seeded ids stay the same"


