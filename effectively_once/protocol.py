"""The strings the pipeline's processes speak to each other, in one place.

A child process tells its parent where it listens, or that it reached its
crash point, with one line on its output; the parent finds that line in the
child's log. The consumer marks each dead-lettered record with ``dlq.*``
headers that the lab, the recorder and the redrive tool read back. Whoever
writes one of these strings and whoever reads it import it from here, so the
two cannot drift apart.
"""

from __future__ import annotations

import re

# -- crash points and layers ----------------------------------------------------------------------
# The four points every consumer step marks, in order: the recipe's, and the one-shot Charges path's.
CRASH_POINTS = ("before_dedup_insert", "after_dedup_insert", "after_provider_call", "after_status_update")
# The PaymentIntent path marks two more, between the dedup row and the call that moves money: after the
# PaymentIntent is created (no money moves) and after its id is stored in the dedup row (the recovery
# point). Its ``after_provider_call`` comes after the confirm, the call that moves money.
INTENT_CRASH_POINTS = ("before_dedup_insert", "after_dedup_insert", "after_intent_created", "after_intent_stored",
                       "after_provider_call", "after_status_update")
ALL_CRASH_POINTS = INTENT_CRASH_POINTS  # every point a step may mark, in the order a handling reaches them
LAYERS = ("dedup", "dedup_as_written", "idempotency_key", "offsets_in_db")
DEDUP_LAYERS = ("dedup", "dedup_as_written")  # two versions of one layer: at most one is on
# Three ways for the shop to remember that a message was handled: at most one is on. ``offsets_in_db``
# stores the consumer's offsets in the transaction that records the charge, so a handled message is
# never read again, and a dedup table beside it has nothing left to catch from the consumer.
HANDLED_LAYERS = (*DEDUP_LAYERS, "offsets_in_db")
NO_LAYERS = "none"  # how an empty layer set is written on a command line

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
CRASH_POINT = "crash point "
PAUSED_AT = "paused at "
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
_CRASH_POINT_REACHED = re.compile(
    re.escape(CRASH_POINT) + r"(?P<point>\w+) reached for the (?P<count>\d+)(st|nd|rd|th) time")
_PAUSED_AT = re.compile(r"^" + re.escape(PAUSED_AT) + r"(?P<point>\w+) with (?P<msg_id>[^\s:]+)", re.MULTILINE)
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
    """The consumer's last line before it SIGKILLs itself at ``point`` (the ``count``-th time there)."""
    return f"{CRASH_POINT}{point} reached for the {ordinal(count)} time: SIGKILL"


def parse_crash_point_reached(text: str) -> str | None:
    """The crash point a consumer's output says it killed itself at, or None."""
    match = _CRASH_POINT_REACHED.search(text)
    return match.group("point") if match else None


def paused_at(point: str, msg_id: str) -> str:
    """The consumer's line when it stops at ``point`` and waits for someone to kill it."""
    return f"{PAUSED_AT}{point} with {msg_id}: waiting for a SIGKILL (SIGTERM stops it too)"


def parse_paused_at(text: str) -> tuple[str, str] | None:
    """The crash point and msg_id a consumer's output says it paused at, or None."""
    match = _PAUSED_AT.search(text)
    return (match.group("point"), match.group("msg_id")) if match else None


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
