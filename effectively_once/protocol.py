"""The strings the pipeline's processes speak to each other, in one place.

A child process tells its parent where it listens with one line on its
output; the parent finds that line in the child's log. What a process *did*
(the consumer started, lost its partitions to a rebalance, paused or reached
its crash point, overran ``max.poll.interval.ms``, had a commit refused, ...)
it also writes as an event line: ``EO-EVENT {"kind": "revoked", ...}``, JSON
after a fixed prefix, which ``parse_events`` reads back as ``ProcessEvent``s.
A test or a lab that needs to know what happened reads those, never the
human sentence beside them, which stays free to change. The consumer marks
each dead-lettered record with ``dlq.*`` headers that the lab, the recorder
and the redrive tool read back. Whoever writes one of these strings and
whoever reads it import it from here, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, get_args

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: the same thing, spelled out
    class StrEnum(str, Enum):
        """An enum whose members are strings, equal to their values and printed as them."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)

# -- crash points, layers and results -------------------------------------------------------------
# Plain strings at run time (what a learner types: crash_at="after_provider_call"), checked by mypy at the seams.
# Every point a step may mark, in the order a handling reaches them. The PaymentIntent path marks all six: two
# of them between the dedup row and the call that moves money, after the PaymentIntent is created (no money
# moves) and after its id is stored in the dedup row (the recovery point); its ``after_provider_call`` comes
# after the confirm, the call that moves money.
CrashPoint = Literal["before_dedup_insert", "after_dedup_insert", "after_intent_created", "after_intent_stored",
                     "after_provider_call", "after_status_update"]
ALL_CRASH_POINTS: tuple[CrashPoint, ...] = get_args(CrashPoint)
INTENT_CRASH_POINTS: tuple[CrashPoint, ...] = ALL_CRASH_POINTS
# The four points every consumer step marks, in order: the recipe's, and the one-shot Charges path's.
CRASH_POINTS: tuple[CrashPoint, ...] = ("before_dedup_insert", "after_dedup_insert", "after_provider_call",
                                        "after_status_update")
Layer = Literal["dedup", "dedup_as_written", "idempotency_key", "offsets_in_db"]
LAYERS: tuple[Layer, ...] = get_args(Layer)
DEDUP_LAYERS: tuple[Layer, ...] = ("dedup", "dedup_as_written")  # two versions of one layer: at most one is on
# Three ways for the shop to remember that a message was handled: at most one is on. ``offsets_in_db``
# stores the consumer's offsets in the transaction that records the charge, so a handled message is
# never read again, and a dedup table beside it has nothing left to catch from the consumer.
HANDLED_LAYERS: tuple[Layer, ...] = (*DEDUP_LAYERS, "offsets_in_db")
NO_LAYERS = "none"  # how an empty layer set is written on a command line
# How the consumer ends each message, in ``consumer_events.result`` (whose CHECK constraint in
# schemas/shop.sql lists the same values): money moved (``charged``), the provider answered from its key
# store (``replayed``), the PaymentIntent retrieved by id showed the money had moved (``recovered``), the
# dedup table said it was done (``skipped``), or it went to the dead-letter topic (``dead_lettered``).
Result = Literal["charged", "replayed", "recovered", "skipped", "dead_lettered"]
RESULTS: tuple[Result, ...] = get_args(Result)

# -- dead-letter headers ----------------------------------------------------------------------------
DLQ_PREFIX = "dlq."
DLQ_ERROR_TYPE = "dlq.error_type"
DLQ_REASON = "dlq.reason"
DLQ_SOURCE_TOPIC = "dlq.source_topic"
DLQ_SOURCE_PARTITION = "dlq.source_partition"
DLQ_SOURCE_OFFSET = "dlq.source_offset"
DLQ_FIRST_SEEN = "dlq.first_seen"
DLQ_CONSUMER_GROUP = "dlq.consumer_group"
# Other dead-letter queues write ``dlq-error``, ``x-dlq-reason``, ...: a redrive strips those too.
DLQ_HEADER_PREFIXES = ("dlq", "x-dlq")
REDRIVEN_AT = "redriven-at"


def is_dlq_header(name: str) -> bool:
    """True for the headers a dead-letter queue adds (``dlq.reason``, ``dlq-error``, ``x-dlq-reason``, ...)."""
    return name.lower().startswith(DLQ_HEADER_PREFIXES)


# -- announce lines -------------------------------------------------------------------------------
LISTENING = "provider listening on "
RECEIVER_LISTENING = "webhook receiver listening on "
METRICS_ON = "metrics on "
PROVIDER_ANSWERED = "provider answered "
CONNECTION_LIMIT = "connection limit reached: "
# The exit status of a provider or consumer that PostgreSQL refused over a connection limit:
# restarting it would only be refused again, so the parent reports the sentence instead.
EXIT_CONNECTION_LIMIT = 76
# The exit status of a consumer that asks for a restart (EX_TEMPFAIL in sysexits.h): the shop database or
# the broker went away, the batch's offsets were not committed, and a new process resumes where they stand.
EXIT_RESTART = 75

_PROVIDER_LISTENING = re.compile(re.escape(LISTENING) + r"(?P<url>https?://\S+)")
_RECEIVER_LISTENING = re.compile(re.escape(RECEIVER_LISTENING) + r"(?P<url>https?://\S+)")
_METRICS_ON = re.compile(r"^" + re.escape(METRICS_ON) + r"(?P<url>https?://\S+)", re.MULTILINE)
_CONNECTION_LIMIT = re.compile(r"^" + re.escape(CONNECTION_LIMIT) + r"(?P<sentence>.+)$", re.MULTILINE)
_PROVIDER_ANSWERED = re.compile(
    r"^" + re.escape(PROVIDER_ANSWERED) + r"(?P<msg_id>\S+) \(Idempotency-Key: (?P<key>\S+)\): HTTP (?P<status>\d+), "
    r"Idempotent-Replayed: (?P<replayed>\S+), charge (?P<charge_id>\S+)$", re.MULTILINE)


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ... ``11th``, ``21st``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``0 rows`` (``words`` for an irregular plural)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def provider_listening(url: str) -> str:
    """The provider's first line: where it listens."""
    return f"{LISTENING}{url}"


def parse_provider_listening(text: str) -> str | None:
    """The provider's URL from its output, or None before it has announced it."""
    match = _PROVIDER_LISTENING.search(text)
    return match.group("url") if match else None


def receiver_listening(url: str) -> str:
    """The webhook receiver's first line: where it listens (its base URL; events go to ``<url>/webhooks``)."""
    return f"{RECEIVER_LISTENING}{url}"


def parse_receiver_listening(text: str) -> str | None:
    """The webhook receiver's base URL from its output, or None before it has announced it."""
    match = _RECEIVER_LISTENING.search(text)
    return match.group("url") if match else None


def metrics_on(url: str) -> str:
    """The consumer's line saying where it serves ``/metrics``."""
    return f"{METRICS_ON}{url}"


def parse_metrics_on(text: str) -> str | None:
    """The consumer's ``/metrics`` URL from its output, or None before it has announced it."""
    match = _METRICS_ON.search(text)
    return match.group("url") if match else None


def crash_point_reached(point: str, count: int) -> str:
    """The consumer's last sentence before it SIGKILLs itself at ``point`` (the ``count``-th time there).

    For the human reading the log; the parent reads the ``crash_point`` event written just before it.
    """
    return f"crash point {point} reached for the {ordinal(count)} time: SIGKILL"


def paused_at(point: str, msg_id: str) -> str:
    """The consumer's sentence when it stops at ``point`` and waits for someone to kill it.

    For the human reading the log; the parent reads the ``paused`` event written just before it.
    """
    return f"paused at {point} with {msg_id}: waiting for a SIGKILL (SIGTERM stops it too)"


def provider_answered(msg_id: str, key: str | None, status: int, replayed: str | None, charge_id: str) -> str:
    """The consumer's line for one answer of the provider to a charge: its status and replay header."""
    return (f"{PROVIDER_ANSWERED}{msg_id} (Idempotency-Key: {key or '(none)'}): HTTP {status}, "
            f"Idempotent-Replayed: {replayed or '(absent)'}, charge {charge_id}")


def parse_provider_answers(text: str) -> list[dict[str, str]]:
    """Every provider answer a consumer's output records, in order, as dicts of the line's fields."""
    return [match.groupdict() for match in _PROVIDER_ANSWERED.finditer(text)]


def connection_limit(sentence: str) -> str:
    """A process's line when PostgreSQL refused it a connection over a limit: the sentence for the learner."""
    return f"{CONNECTION_LIMIT}{sentence}"


def parse_connection_limit(text: str) -> str | None:
    """The sentence a process's output gives for a connection refused over a limit, or None."""
    match = _CONNECTION_LIMIT.search(text)
    return match.group("sentence") if match else None


# -- events: what a process did, one machine-readable line each --------------------------------------
EVENT_PREFIX = "EO-EVENT "


class EventKind(StrEnum):
    """What a pipeline process reports with an event line. Each kind equals its plain string (``"revoked"``)."""

    STARTED = "started"                # the consumer subscribed, and polls from now on
    ASSIGNED = "assigned"              # the group gave it partitions
    REVOKED = "revoked"                # the group took them back: it waits for the rebalance (not idle time)
    PAUSED = "paused"                  # stopped at its pause_at point, waiting for a SIGKILL
    CRASH_POINT = "crash_point"        # reached its crash point: it SIGKILLs itself next
    POLL_INTERVAL_EXCEEDED = "poll_interval_exceeded"  # no poll within max.poll.interval.ms: its client left the group
    COMMIT_REFUSED = "commit_refused"  # the group refused an offset commit: the partitions have a new owner
    COMMIT_OWED = "commit_owed"        # the broker could not take an offset commit: it is tried again each second
    COMMIT_PAID = "commit_paid"        # an owed commit went through, or became moot (the group took the partitions)
    DEAD_LETTERED = "dead_lettered"    # a record went to the dead-letter topic
    RESTART_NEEDED = "restart_needed"  # it exits with ``code`` and commits nothing for its batch
    FINISHED = "finished"              # it stopped cleanly, with its counts
    HANDLER_FAILED = "handler_failed"  # the webhook receiver's handler raised: it answered 500


# The fields each kind carries, no more and no fewer: a writer and a reader that disagree fail at once.
EVENT_FIELDS: dict[EventKind, tuple[str, ...]] = {
    EventKind.STARTED: ("topic", "group", "layers", "step"),
    EventKind.ASSIGNED: ("partitions",),
    EventKind.REVOKED: ("partitions",),
    EventKind.PAUSED: ("point", "msg_id"),
    EventKind.CRASH_POINT: ("point", "count"),
    EventKind.POLL_INTERVAL_EXCEEDED: ("error",),
    EventKind.COMMIT_REFUSED: ("error",),
    EventKind.COMMIT_OWED: ("error",),
    EventKind.COMMIT_PAID: ("after_s", "moot"),
    EventKind.DEAD_LETTERED: ("topic", "partition", "offset", "error_type"),
    EventKind.RESTART_NEEDED: ("reason", "code"),
    EventKind.FINISHED: ("counts",),
    EventKind.HANDLER_FAILED: ("error",),
}
# Why a consumer asks for a restart (the ``reason`` of ``restart_needed``).
RestartReason = Literal["shop_database_gone", "commit_overdue"]
RESTART_REASONS: tuple[RestartReason, ...] = get_args(RestartReason)


@dataclass(frozen=True)
class ProcessEvent:
    """One thing a process did, as its event line says it: a kind and that kind's fields.

        event = ProcessEvent(EventKind.REVOKED, {"partitions": [0, 2]})
        event.format()       # 'EO-EVENT {"kind": "revoked", "partitions": [0, 2]}'
        event["partitions"]  # [0, 2]

    Field values are what JSON carries: strings, numbers, booleans, None, lists and objects.
    """

    kind: EventKind
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            kind = EventKind(self.kind)
        except ValueError:
            raise ValueError(f"unknown event kind {self.kind!r}; the kinds are {', '.join(EventKind)}") from None
        object.__setattr__(self, "kind", kind)
        wanted = EVENT_FIELDS[kind]
        if set(self.fields) != set(wanted):
            raise ValueError(f"a {kind} event has the fields {', '.join(wanted) or '(none)'}, "
                             f"not {', '.join(self.fields) or '(none)'}")
        object.__setattr__(self, "fields", dict(self.fields))

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def format(self) -> str:
        """The event as one line: ``EO-EVENT `` and a JSON object, its ``kind`` first.

        ASCII only (JSON escapes the rest), so no character in a field can break the line.
        """
        return EVENT_PREFIX + json.dumps({"kind": self.kind.value, **self.fields})

    @classmethod
    def parse(cls, line: str) -> ProcessEvent:
        """The event one line written by ``format`` says; ``ValueError`` when it is not one."""
        if not line.startswith(EVENT_PREFIX):
            raise ValueError(f"not an event line (no {EVENT_PREFIX.strip()} prefix): {line[:200]!r}")
        try:
            data = json.loads(line[len(EVENT_PREFIX):])
        except json.JSONDecodeError as exc:
            raise ValueError(f"an event line that is not JSON ({exc}): {line[:200]!r}") from None
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"an event line without a kind: {line[:200]!r}")
        kind = data.pop("kind")
        return cls(kind, data)


def event(kind: EventKind, **fields: Any) -> ProcessEvent:
    """``ProcessEvent(kind, fields)`` with the fields as keywords: ``event(EventKind.PAUSED, point=p, msg_id=m)``."""
    return ProcessEvent(kind, fields)


def parse_events(text: str, kind: EventKind | str | None = None) -> list[ProcessEvent]:
    """Every event line in a process's output, in order (only those of ``kind`` when given).

    Other lines (the human sentences, a library's warnings) are passed over. A line that starts like an
    event and is not one raises ``ValueError``, except an unterminated last line: the process may be
    writing it at this moment.
    """
    lines = text.split("\n")
    events = []
    for index, line in enumerate(lines):
        if not line.startswith(EVENT_PREFIX):
            continue
        try:
            found = ProcessEvent.parse(line.rstrip("\r"))
        except ValueError:
            if index == len(lines) - 1:  # no newline after it yet
                break
            raise
        if kind is None or found.kind == kind:
            events.append(found)
    return events
