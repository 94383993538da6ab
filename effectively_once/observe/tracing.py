"""W3C trace context (``traceparent``) for Kafka headers and HTTP calls.

A ``traceparent`` is ``VERSION-TRACEID-SPANID-FLAGS``: ``00``, 32 lowercase hex
digits (the trace), 16 (this span), 2 (flags; ``01`` = sampled). The producer
starts a trace per charge (the header is the context of the record's ``send``
span); the consumer and its call to the provider are new spans in the same
trace. Two consumer spans in one message's trace are then a
duplicate delivery, told apart at a glance from two distinct messages, as long
as each message has its own trace, one consumer group reads the topic and no
span is sampled out (see ``observe.spans``).
"""

from __future__ import annotations

import random
import re
from typing import Any

_VERSION_00 = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# A later version keeps the same first four fields and may append more after a dash.
_LATER_VERSION = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_SYSTEM_RANDOM = random.SystemRandom()


def _hex_id(rng: Any, bits: int) -> str:
    # An all-zero id is invalid in W3C trace context: draw again.
    while True:
        value = rng.getrandbits(bits)
        if value:
            return f"{value:0{bits // 4}x}"


def new_traceparent(rng: Any = None, *, trace_id: str | None = None, sampled: bool = True) -> str:
    """A new ``traceparent``: a new span in trace ``trace_id`` (a new trace when None).

    ``rng`` is anything with ``getrandbits`` (a seeded ``random.Random`` makes
    ids reproducible in a notebook); by default the system's random source.
    """
    rng = rng or _SYSTEM_RANDOM
    if trace_id is None:
        trace_id = _hex_id(rng, 128)
    elif not re.fullmatch(r"[0-9a-f]{32}", trace_id) or trace_id == _ZERO_TRACE:
        raise ValueError(f"a trace id is 32 lowercase hex digits, not all zero; got {trace_id!r:.60}")
    return f"00-{trace_id}-{_hex_id(rng, 64)}-{'01' if sampled else '00'}"


def parse_traceparent(value: str | bytes) -> tuple[str, str]:
    """``(trace_id, span_id)`` of a ``traceparent`` header; ``ValueError`` when it is malformed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = value.strip()
    match = _VERSION_00.match(text)
    if match is None:
        later = _LATER_VERSION.match(text)
        if later is None or later.group(1) in ("00", "ff"):
            raise ValueError(f"not a W3C traceparent: {value!r:.80}")
        trace_id, span_id = later.group(2), later.group(3)
    else:
        trace_id, span_id = match.group(1), match.group(2)
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        raise ValueError(f"a traceparent with an all-zero id is invalid: {value!r:.80}")
    return trace_id, span_id


def trace_id_of(value: str | bytes | None) -> str | None:
    """The trace id in a ``traceparent``, or None when it is absent or malformed."""
    if not value:
        return None
    try:
        return parse_traceparent(value)[0]
    except ValueError:
        return None


def child_traceparent(parent: str | bytes | None, rng: Any = None) -> str:
    """The ``traceparent`` for work done on behalf of ``parent``: same trace, new span (new trace if none)."""
    return new_traceparent(rng, trace_id=trace_id_of(parent))
