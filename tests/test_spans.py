"""Spans: the JSON-lines file, duplicate detection, and a real crash after the provider call."""

from __future__ import annotations

import json

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from effectively_once.observe.spans import (
    CONSUMER_SPAN,
    JsonLinesSpanExporter,
    SpanStartRecorder,
    find_duplicate_traces,
    load_spans,
    message_span,
    outgoing_traceparent,
)
from effectively_once.observe.tracing import parse_traceparent
from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.producer import charge_records

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


@pytest.mark.integration
def test_a_crash_after_the_provider_call_shows_as_two_spans_in_one_trace(stack, tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    with PaymentLab(stack, "both") as lab:
        lab.start_provider()
        ids = lab.produce(4, seed=8)
        first = lab.start_consumer(crash_at="after_provider_call", crash_on=2, spans_file=spans_file)
        first.wait(60)
        assert first.crashed_at_point
        lab.run_until_settled(60, spans_file=spans_file)
        report = lab.report()
        with psycopg.connect(lab.provider_dsn) as conn:
            ledger = dict(conn.execute("SELECT msg_id, trace_id FROM ledger WHERE msg_id = ANY(%s)", (ids,)))
    assert report.ok and report.charges == 4, report

    spans = load_spans(spans_file)
    sent = {json.loads(value)["msg_id"]: parse_traceparent(dict(headers)["traceparent"].decode())
            for _, value, headers in charge_records(4, seed=8, prefix=lab.run_id)}
    assert {s.trace_id for s in spans} == {trace for trace, _ in sent.values()}, "one trace per message"
    assert all(s.parent_span_id == sent[s.msg_id][1] for s in spans), "each span is a child of the producer's"
    assert ledger == {m: trace for m, (trace, _) in sent.items()}, "the provider saw the same trace ids"

    duplicates = find_duplicate_traces(spans)
    crashed = [d for d in duplicates if not d.spans[0].finished]
    assert len(crashed) == 1, "exactly one attempt was cut short by the SIGKILL"
    [d] = crashed
    assert len(d.spans) == 2 and d.spans[1].finished and d.spans[1].attributes["eo.result"] == "replayed"
    assert d.pids[0] != d.pids[1], "two consumer processes"
    assert len(d.msg_ids) == 1 and report.duplicate_charges == 0, "two spans, one charge"
    # Anything else processed twice is a message the first consumer charged but never committed.
    for other in duplicates:
        if other is not d:
            assert [s.attributes["eo.result"] for s in other.spans] == ["charged", "skipped"]
