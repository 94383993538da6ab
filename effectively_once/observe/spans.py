"""Spans of the producer and the consumer, written where a notebook can read them, and duplicates found in them.

The consumer (a separate process) uses the OpenTelemetry SDK: one span per
message it processes, shaped after the messaging semantic conventions
(https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/): kind
CONSUMER, named ``process {topic}``, with ``messaging.operation.name`` and
``messaging.operation.type`` set to ``process``, and a *link* to the message's
creation context, the W3C ``traceparent`` the producer put in the Kafka headers.
For a single message the span is also that context's child, so it stays in the
message's trace. It is current while the step runs, so the HTTP call to the
provider carries the consumer span as its parent (``outgoing_traceparent``).

A notebook cannot hold an in-memory exporter inside another process, so
``--spans-file PATH`` makes the consumer append its spans to a JSON-lines file:

- ``{"event": "end", ...}`` when a span ends (``JsonLinesSpanExporter``, a
  ``SpanExporter`` behind a ``SimpleSpanProcessor``, so nothing waits in a buffer);
- ``{"event": "start", ...}`` when it starts (``SpanStartRecorder``). A standard
  exporter ships a span only when it ends, so a process killed with SIGKILL in
  the middle of a message leaves no trace of that attempt at all. Recording the
  start keeps the crashed attempt visible: it loads as an *unfinished* span.

The producer writes its spans to the same kind of file (``SendSpans``, used by
``payments.producer.send_records(..., spans_file=...)``): one span per record,
kind PRODUCER, named ``send {topic}``, with ``messaging.operation.name`` and
``messaging.operation.type`` set to ``send``, and, once the broker has
acknowledged the record, its partition and offset. Its context is the record's
creation context, the ``traceparent`` in the headers, so the consumer's process
span links to it. Each record's send span starts its own trace: no batch span
is its parent.

``load_spans(path)`` reads the file back; ``find_duplicate_traces(spans)``
returns the traces holding two or more consumer ``process`` spans (a
producer's ``send`` span in the same trace does not count). That reads as "one
message processed twice" only under three conditions, all true in this course:
one trace per message (the producer starts a new trace for each record, rather
than sending a batch from inside one request's trace), one consumer group
reading the topic (two groups each process every message, once each, and
their spans share the trace), and no sampling (a sampler that drops one
attempt's span hides the duplicate).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from effectively_once.observe.tracing import child_traceparent, parse_traceparent

SERVICE_NAME = "payments-consumer"
PROCESS = "process"        # messaging.operation.name and messaging.operation.type of a consumer's span
CONSUMER_SPAN = PROCESS    # the span name's first word; the full name is "process {topic}"
TRACER_NAME = "effectively_once.payments.consumer"
PRODUCER_SERVICE_NAME = "payments-producer"
SEND = "send"              # messaging.operation.name and messaging.operation.type of a producer's span
PRODUCER_TRACER_NAME = "effectively_once.payments.producer"
_PROPAGATOR = TraceContextTextMapPropagator()


def _span_line(span: ReadableSpan, event: str) -> dict[str, Any]:
    context = span.get_span_context()
    if context is None:
        raise ValueError(f"span {span.name!r} has no span context, so it has no trace id to write")
    parent = span.parent
    return {
        "event": event,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "links": [{"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
                  for link in span.links],
        "start": span.start_time / 1e9 if span.start_time else None,
        "end": span.end_time / 1e9 if event == "end" and span.end_time else None,
        "status": span.status.status_code.name.lower() if event == "end" else "unset",
        "attributes": dict(span.attributes or {}),
        "pid": os.getpid(),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to ``path`` as one JSON line (safe for several processes at once)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: several consumer processes may share one file; each line is one write().
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def write(self, line: Mapping[str, Any]) -> None:
        """Append one record; it reaches the kernel at once, so a SIGKILL right after cannot lose it."""
        data = (json.dumps(line, default=str, sort_keys=True) + "\n").encode()
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, data)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write each span's final record (``event: end``)."""
        for span in spans:
            self.write(_span_line(span, "end"))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered: every record was written when it happened."""
        return True


class SpanStartRecorder(SpanProcessor):
    """Writes an ``event: start`` record when a span starts, so a killed attempt still shows."""

    def __init__(self, exporter: JsonLinesSpanExporter) -> None:
        self.exporter = exporter

    def on_start(self, span, parent_context=None) -> None:
        """Record the span as started (it will load as unfinished if its process dies)."""
        self.exporter.write(_span_line(span, "start"))


def configure_tracing(spans_file: str | os.PathLike | None = None,
                      service_name: str = SERVICE_NAME) -> TracerProvider:
    """Install the SDK's tracer provider for this process; with ``spans_file``, write spans there.

    Without a file the spans are still created (so the provider call carries
    the consumer span as its parent) but go nowhere.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if spans_file is not None:
        exporter = JsonLinesSpanExporter(spans_file)
        provider.add_span_processor(SpanStartRecorder(exporter))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


@contextlib.contextmanager
def message_span(traceparent: str | bytes | None, attributes: Mapping[str, Any] | None = None,
                 tracer: trace.Tracer | None = None) -> Iterator[trace.Span]:
    """The ``process {topic}`` span of one message: it links to the producer's ``traceparent`` and is its child.

    Without a ``traceparent`` the span starts a new trace and has no link.
    ``attributes`` should hold ``messaging.destination.name`` (it names the
    span); the operation's name and type are set here.
    """
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("ascii", "replace")
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    creation = trace.get_current_span(parent).get_span_context() if parent is not None else None
    links = [trace.Link(creation)] if creation is not None and creation.is_valid else []
    attributes = {"messaging.operation.name": PROCESS, "messaging.operation.type": PROCESS, **(attributes or {})}
    destination = attributes.get("messaging.destination.name")
    name = f"{PROCESS} {destination}" if destination else PROCESS
    tracer = tracer or trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER, links=links,
                                      attributes=attributes) as span:
        yield span


def outgoing_traceparent(parent: str | None) -> str:
    """The ``traceparent`` for an outgoing call: the current span if there is one, else a child of ``parent``."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent") or child_traceparent(parent)


# -- the producer's spans ---------------------------------------------------------------------
class _PresetIds(IdGenerator):
    """The ids of the next span, taken from a ``traceparent`` drawn beforehand (random when none is set)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._next: tuple[int, int] | None = None

    def preset(self, trace_id: str, span_id: str) -> None:
        """Make the next span use these ids."""
        self._next = (int(trace_id, 16), int(span_id, 16))

    def generate_trace_id(self) -> int:
        """The preset trace id (the SDK asks for it first), else a random one."""
        return self._next[0] if self._next is not None else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        """The preset span id, used once, else a random one."""
        if self._next is None:
            return self._random.generate_span_id()
        span_id, self._next = self._next[1], None
        return span_id


Headers = list[tuple[str, bytes]]


class SendSpans:
    """The ``send {topic}`` PRODUCER span of each record a producer sends, appended to ``spans_file``.

    ``start`` opens a record's span before it is handed to the client;
    ``delivered`` or ``failed`` ends it from the delivery report. A
    ``traceparent`` already in the record's headers (``charge_records`` draws
    one per message, seeded when asked) gives the span its ids, so the header is
    the span's own context and seeded ids stay seeded; a record without one
    gets a new trace and the header is added. The provider is this object's
    own: the process's global tracer provider is left alone.
    """

    def __init__(self, spans_file: str | os.PathLike, service_name: str = PRODUCER_SERVICE_NAME) -> None:
        self._ids = _PresetIds()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                       id_generator=self._ids)
        self.provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(spans_file)))
        self.tracer = self.provider.get_tracer(PRODUCER_TRACER_NAME)

    def start(self, topic: str, key: bytes | None, headers: Sequence[tuple[str, bytes]],
              msg_id: str | None = None) -> tuple[trace.Span, Headers]:
        """Open one record's span; return it and the headers to send (its ``traceparent`` among them)."""
        headers = list(headers)
        ids = None
        for name, value in headers:
            if name == "traceparent":
                with contextlib.suppress(ValueError):
                    ids = parse_traceparent(value)
        if ids is not None:
            self._ids.preset(*ids)
        attributes: dict[str, str] = {"messaging.system": "kafka", "messaging.operation.name": SEND,
                                      "messaging.operation.type": SEND, "messaging.destination.name": topic}
        if msg_id:
            attributes["messaging.message.id"] = msg_id
        if key is not None:
            attributes["messaging.kafka.message.key"] = key.decode("utf-8", "replace")
        # An empty context: the span is the root of the record's own trace, whatever span is current.
        span = self.tracer.start_span(f"{SEND} {topic}", context=Context(), kind=SpanKind.PRODUCER,
                                      attributes=attributes)
        if ids is None:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            headers = [(n, v) for n, v in headers if n != "traceparent"]
            headers.append(("traceparent", carrier["traceparent"].encode()))
        return span, headers

    @staticmethod
    def delivered(span: trace.Span, partition: int, offset: int) -> None:
        """End a span whose record the broker acknowledged, with where the record landed."""
        span.set_attributes({"messaging.destination.partition.id": str(partition), "messaging.kafka.offset": offset})
        span.end()

    @staticmethod
    def failed(span: trace.Span, error_type: str, message: str) -> None:
        """End a span whose record was not acknowledged."""
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, message))
        span.end()

    def close(self) -> None:
        """Flush and close the spans file."""
        self.provider.shutdown()


# -- reading spans back ------------------------------------------------------------------------
@dataclass(frozen=True)
class SpanRecord:
    """One span as the file holds it; ``end`` is None when its process died before it ended."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    start: float
    end: float | None
    status: str
    pid: int
    attributes: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[str, ...] = ()   # span ids this span links to (the creation context, for a process span)

    @property
    def finished(self) -> bool:
        """False for a span whose process was killed while it was open."""
        return self.end is not None

    @property
    def msg_id(self) -> str | None:
        """The message this span processed, if it says."""
        return self.attributes.get("messaging.message.id")


def load_spans(path: str | os.PathLike) -> list[SpanRecord]:
    """Every span in a spans file, oldest start first; a span with no end record is unfinished.

    A missing file holds no spans. A torn last line (a writer killed
    mid-write) is skipped, since it carries no complete record.
    """
    path = Path(path)
    if not path.exists():
        return []
    merged: dict[str, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        known = merged.get(record["span_id"])
        if known is None or record["event"] == "end":
            merged[record["span_id"]] = record
    spans = [SpanRecord(name=r["name"], kind=r["kind"], trace_id=r["trace_id"], span_id=r["span_id"],
                        parent_span_id=r["parent_span_id"], start=r["start"], end=r["end"], status=r["status"],
                        pid=r["pid"], attributes=r.get("attributes") or {},
                        links=tuple(link["span_id"] for link in r.get("links") or ())) for r in merged.values()]
    return sorted(spans, key=lambda s: (s.start, s.span_id))


@dataclass(frozen=True)
class DuplicateTrace:
    """One trace holding several consumer spans: the same message processed more than once."""

    trace_id: str
    spans: tuple[SpanRecord, ...]

    @property
    def msg_ids(self) -> set[str]:
        """The msg_ids the spans name (one, for a true duplicate)."""
        return {s.msg_id for s in self.spans if s.msg_id}

    @property
    def pids(self) -> list[int]:
        """The consumer processes that handled it, in order."""
        return [s.pid for s in self.spans]


def is_process_span(span: SpanRecord) -> bool:
    """A consumer's ``process`` span (its name is ``process`` or ``process {topic}``)."""
    return span.kind == "consumer" and span.name.split(" ", 1)[0] == PROCESS


def is_send_span(span: SpanRecord) -> bool:
    """A producer's ``send`` span (its name is ``send`` or ``send {topic}``)."""
    return span.kind == "producer" and span.name.split(" ", 1)[0] == SEND


def wait_for_processed_trace(path: str | os.PathLike, trace_id: str, timeout: float = 30.0) -> list[SpanRecord]:
    """The spans of ``trace_id`` in a spans file, once a consumer has finished a ``process`` span in it.

    Raises ``TimeoutError`` naming the trace when no consumer finished processing it within ``timeout``
    seconds (a stopped consumer group, or a record sent to a topic nobody reads).
    """
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in load_spans(path) if s.trace_id == trace_id]
        if any(is_process_span(s) and s.finished for s in spans):
            return spans
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no consumer finished processing trace {trace_id} within {timeout:g} s: "
                               f"are the consumers still running and subscribed to the topic?")
        time.sleep(0.2)


def find_duplicate_traces(spans: Iterable[SpanRecord]) -> list[DuplicateTrace]:
    """Traces with two or more consumer ``process`` spans (finished or not), first seen first.

    Other spans in a trace, such as the producer's ``send`` span, are not counted.

    Two such spans in one trace mean one message processed twice only with one
    trace per message, one consumer group and no sampling: a second group
    processes every message once more under the same trace, and a sampler can
    drop an attempt's span. Spans are therefore grouped per trace *and* per
    ``messaging.consumer.group.name`` when they carry it; sampling must stay
    off for these spans for a missing duplicate to mean anything.
    """
    by_trace: dict[tuple[str, Any], list[SpanRecord]] = defaultdict(list)
    for span in spans:
        if is_process_span(span):
            by_trace[(span.trace_id, span.attributes.get("messaging.consumer.group.name"))].append(span)
    found = [DuplicateTrace(trace_id, tuple(sorted(group, key=lambda s: s.start)))
             for (trace_id, _), group in by_trace.items() if len(group) > 1]
    return sorted(found, key=lambda d: d.spans[0].start)
