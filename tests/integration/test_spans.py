"""Spans of a real run: the consumer process links to the producer's send span; a crash shows as two spans."""

from __future__ import annotations

import json

import psycopg

from effectively_once.observe.spans import (
    find_duplicate_traces,
    is_process_span,
    is_send_span,
    load_spans,
)
from effectively_once.observe.tracing import parse_traceparent
from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.producer import charge_records


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


def test_the_consumers_process_span_links_to_the_producers_send_span(stack, tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    with PaymentLab(stack, "both") as lab:
        lab.start_provider()
        lab.produce(2, seed=9, spans_file=spans_file)
        lab.run_until_settled(60, spans_file=spans_file)
        assert lab.report().ok
    spans = load_spans(spans_file)
    sends = {s.span_id: s for s in spans if is_send_span(s)}
    processes = [s for s in spans if is_process_span(s)]
    assert len(sends) == 2 and len(processes) == 2 and find_duplicate_traces(spans) == []
    for process in processes:
        [linked] = process.links
        send = sends[linked]
        assert send.trace_id == process.trace_id and send.name == f"send {lab.topic}"
        assert send.attributes["messaging.destination.partition.id"] == process.attributes[
            "messaging.destination.partition.id"]
        assert send.attributes["messaging.kafka.offset"] == process.attributes["messaging.kafka.offset"]
