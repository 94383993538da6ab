"""Stripe, 2023: a dead-letter queue redriven all at once floods the consumers behind it.

In the story notebook 06 tells (told in the field; no public post-mortem was found
for it), a DLQ filled with about a million messages during a downstream
incident; an operator redrove all of them at once, the source queue received them in one
burst, the consumer pool was overwhelmed and the payment API behind it started
throttling, which produced retries, which made it worse. A redrive is a
producer like any other: it needs a rate limit.

- ``TokenBucket(rate, burst, clock)``: pure pacing logic, testable with a fake clock.
- ``redrive(stack, dlq_topic, source_topic, rate=None, limit=None)``: read every
  record of the DLQ (read_committed, in its own consumer group) and republish
  it to the source topic with an idempotent producer: same key, value and
  headers, minus the DLQ's error headers (see ``is_dlq_header``), plus
  ``redriven-at``. ``rate=None`` sends as fast as the producer can (as
  in the story); a number paces the sends with a token bucket (the fix).
- ``python -m effectively_once redrive --dlq TOPIC --to TOPIC [--rate N] [--limit N]``.

The redrive commits its DLQ offsets only after the broker has acknowledged the
republished records, so running it again sends only what it has not sent yet;
if it dies in between, some records are sent twice and the consumer's dedup
table absorbs them (the redrive itself is at-least-once, like any producer).
"""

from __future__ import annotations

import argparse
import html
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from effectively_once.kafka import END_READER_SETTINGS, assign_topic, committed_offsets, poll_records, quiet_logger
from effectively_once.protocol import REDRIVEN_AT, is_dlq_header

if TYPE_CHECKING:
    from effectively_once.stack import Stack

HELP = "republish a dead-letter topic to its source topic, optionally rate-limited (--rate N per second)"
TOKEN_EPSILON = 1e-9
IDLE_SECONDS = 3.0  # a partition that sends neither records nor end-of-partition for this long counts as drained


class RedriveError(RuntimeError):
    """A redrive could not run; the message says why and what to do."""


# -- pacing ---------------------------------------------------------------------------------------
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up; starts full.

    ``clock`` returns seconds (``time.monotonic`` by default); pass a fake
    clock to test it without waiting. Over any interval of length t the bucket
    grants at most ``rate * t + burst`` tokens.
    """

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if not rate > 0:
            raise ValueError(f"rate must be a positive number of tokens per second, got {rate!r}")
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1 token, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def delay(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` are available (0.0 if they are now)."""
        if tokens > self.burst:
            raise ValueError(f"cannot take {tokens} tokens from a bucket that holds at most {self.burst}")
        self._refill()
        missing = tokens - self.tokens
        # Clock arithmetic in floats leaves crumbs like 0.9999999999 tokens; a crumb counts as whole.
        return missing / self.rate if missing > TOKEN_EPSILON else 0.0

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if they are available now; never waits."""
        if self.delay(tokens) > 0:
            return False
        self.tokens = max(0.0, self.tokens - tokens)
        return True

    def acquire(self, tokens: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> float:
        """Wait (with ``sleep``) until ``tokens`` are available, take them, and return the seconds waited."""
        waited = 0.0
        while not self.try_acquire(tokens):
            wait = self.delay(tokens)
            sleep(wait)
            waited += wait
        return waited


# -- the redrive ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SentRecord:
    """One republished record, as passed to ``redrive``'s ``on_send`` callback."""

    index: int                       # 0 for the first record sent
    sent_at: float                   # seconds since the first record was sent
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    dlq_partition: int
    dlq_offset: int


@dataclass
class RedriveResult:
    """What a redrive did: how many records it read and sent, and when each was sent."""

    dlq_topic: str
    source_topic: str
    rate: float | None
    burst: float | None
    read: int
    sent: int
    send_times: list[float] = field(default_factory=list, repr=False)  # seconds since the first send
    elapsed_seconds: float = 0.0
    waited_seconds: float = 0.0

    @property
    def observed_rate(self) -> float:
        """Sends per second between the first and the last send (inf for one instant burst)."""
        if self.sent < 2:
            return 0.0
        span = self.send_times[-1] - self.send_times[0]
        return (self.sent - 1) / span if span > 0 else float("inf")

    def max_in_window(self, seconds: float) -> int:
        """The most sends in any window of ``seconds`` (a token bucket keeps it <= rate*seconds + burst)."""
        best, lo = 0, 0
        for hi, t in enumerate(self.send_times):
            while t - self.send_times[lo] >= seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def arrival_rate(self, bin_seconds: float = 0.1) -> tuple[list[float], list[float]]:
        """(bin start times, records per second in each bin): the source topic's arrival rate."""
        if not self.send_times:
            return [], []
        bins = int(self.send_times[-1] // bin_seconds) + 1
        counts = [0] * bins
        for t in self.send_times:
            counts[int(t // bin_seconds)] += 1
        return [i * bin_seconds for i in range(bins)], [c / bin_seconds for c in counts]

    def summary(self) -> dict[str, Any]:
        """The counts as plain data."""
        return {
            "from": self.dlq_topic, "to": self.source_topic,
            "rate limit (/s)": "none" if self.rate is None else self.rate,
            "read": self.read, "sent": self.sent,
            "observed rate (/s)": round(self.observed_rate, 1),
            "elapsed (s)": round(self.elapsed_seconds, 2),
        }

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.summary().items())
        return f"<table>{rows}</table>"

    def plot(self, ax=None, bin_seconds: float = 0.1, label: str | None = None):
        """The arrival rate at the source topic over time, with the rate limit if there was one."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3.5))
        xs, ys = self.arrival_rate(bin_seconds)
        name = label or ("redrive-all" if self.rate is None else f"redrive --rate {self.rate:g}")
        if xs:  # close the last bin so that a single burst still draws as a step
            xs, ys = xs + [xs[-1] + bin_seconds], ys + [0.0]
        ax.step(xs, ys, where="post", label=f"{name}: {self.sent} records")
        if self.rate is not None:
            ax.axhline(self.rate, color="black", linestyle="--", linewidth=1, label=f"limit {self.rate:g}/s")
        ax.set_xlabel("seconds since the first record was sent")
        ax.set_ylabel(f"records/s (bins of {bin_seconds:g} s)")
        ax.set_title("arrival rate at the source topic")
        ax.legend(fontsize="small")
        ax.figure.tight_layout()
        return ax.figure


def resolve_topic(stack: Stack, name: str) -> str:
    """The full name of topic ``name`` (as given, or namespaced), or a ``RedriveError`` that lists the choices."""
    topics = set(stack.admin().list_topics(timeout=10).topics)
    for candidate in (name, stack.topic(name)):
        if candidate in topics:
            return candidate
    mine = sorted(t for t in topics if t.startswith(f"{stack.namespace}."))
    choices = ", ".join(mine[:8]) if mine else "none yet"
    raise RedriveError(f"There is no topic {name!r} (nor {stack.topic(name)!r}) on the broker; "
                       f"pass an existing one (yours: {choices}).")


def _dlq_records(consumer, topic: str, limit: int | None):
    """Yield the records of ``topic`` from the group's committed offsets to the end, then stop."""
    from confluent_kafka import KafkaException

    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    partitions = sorted(metadata.partitions)
    assign_topic(consumer, topic, partitions, committed_offsets(consumer, topic, partitions))
    records = poll_records(consumer, until_end=partitions, quiet=IDLE_SECONDS, skip_errors=False, batch=1)
    try:
        yield from itertools.islice(records, limit)
    except KafkaException as exc:
        raise RedriveError(f"Reading {topic} failed: {exc.args[0].str()}.") from None


def redrive(stack: Stack, dlq_topic: str, source_topic: str, rate: float | None = None, limit: int | None = None, *,
            burst: float = 1.0, group: str | None = None,
            on_send: Callable[[SentRecord], None] | None = None) -> RedriveResult:
    """Republish the records of ``dlq_topic`` to ``source_topic`` and return what was sent, and when.

    ``rate`` (records per second) paces the sends with a ``TokenBucket`` of
    ``burst`` tokens; None sends everything at once. ``limit`` stops after that
    many records. ``group`` is the consumer group whose committed offsets mark
    what was already redriven (``<namespace>.redrive`` by default). Topic names
    may be given in full or without the namespace. ``on_send`` is called in
    this thread after each record is handed to the producer.
    """
    from confluent_kafka import Consumer, Producer, TopicPartition

    if rate is not None and not rate > 0:
        raise RedriveError(f"--rate must be a positive number of records per second, got {rate!r}.")
    if limit is not None and limit < 0:
        raise RedriveError(f"--limit must be zero or more, got {limit!r}.")
    dlq = resolve_topic(stack, dlq_topic)
    target = resolve_topic(stack, source_topic)
    if dlq == target:
        raise RedriveError(f"The DLQ and the source topic are both {dlq!r}; redrive into the topic the DLQ serves.")

    failures: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            failures.append(str(err))

    consumer = Consumer(stack.consumer_config(**{
        "group.id": group or stack.group("redrive"), **END_READER_SETTINGS, "logger": quiet_logger()}))
    # Paced records leave one by one (no linger): the bucket, not the client's batching, sets the rate.
    producer = Producer(stack.producer_config(logger=quiet_logger(), **({"linger.ms": 0} if rate is not None else {})))
    bucket = TokenBucket(rate, burst) if rate is not None else None
    send_times: list[float] = []
    next_offsets: dict[int, int] = {}
    read = 0
    waited = 0.0
    started = time.monotonic()
    first_send: float | None = None
    try:
        for msg in _dlq_records(consumer, dlq, limit):
            read += 1
            headers = [(k, v) for k, v in (msg.headers() or []) if not is_dlq_header(k)]
            headers.append((REDRIVEN_AT, datetime.now(timezone.utc).isoformat().encode()))
            if bucket is not None:
                waited += bucket.acquire()
            while True:
                try:
                    producer.produce(target, key=msg.key(), value=msg.value(), headers=headers,
                                     on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)  # the local queue is full: let deliveries drain it
            now = time.monotonic()
            first_send = now if first_send is None else first_send
            sent_at = now - first_send
            send_times.append(sent_at)
            producer.poll(0)
            if bucket is not None and len(send_times) == 1:
                # The first record waits for the connection and the producer id. Records paced during that
                # wait would otherwise queue in the client and leave together the moment it ends.
                producer.flush(30)
            next_offsets[msg.partition()] = msg.offset() + 1
            if on_send is not None:
                on_send(SentRecord(index=len(send_times) - 1, sent_at=sent_at, key=msg.key(), value=msg.value(),
                                   headers=headers, dlq_partition=msg.partition(), dlq_offset=msg.offset()))
        left = producer.flush(30)
        if left or failures:
            why = failures[0] if failures else f"{left} record(s) still unacknowledged after 30 s"
            raise RedriveError(f"The broker did not take every redriven record ({why}); nothing was marked "
                               "redriven, so running the redrive again resends them.")
        if next_offsets:
            consumer.commit(offsets=[TopicPartition(dlq, p, o) for p, o in sorted(next_offsets.items())],
                            asynchronous=False)
    finally:
        consumer.close()
    return RedriveResult(dlq_topic=dlq, source_topic=target, rate=rate, burst=burst if rate is not None else None,
                         read=read, sent=len(send_times), send_times=send_times,
                         elapsed_seconds=time.monotonic() - started, waited_seconds=waited)


# -- the command ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m effectively_once redrive``."""
    parser.add_argument("--dlq", required=True, metavar="TOPIC", help="the dead-letter topic to read")
    parser.add_argument("--to", required=True, metavar="TOPIC", help="the source topic to republish to")
    parser.add_argument("--rate", type=float, default=None, metavar="N",
                        help="at most N records per second (default: all at once)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="redrive at most N records")
    parser.add_argument("--burst", type=float, default=1.0, metavar="N",
                        help="records that may go out back to back under --rate (default 1)")


def run(args: argparse.Namespace) -> int:
    """Redrive on the running stack; exit 0 when done, 2 on bad input (one sentence and the fix)."""
    from effectively_once.stack import StackError, command_stack

    if args.rate is not None and not args.rate > 0:
        print(f"--rate must be a positive number of records per second, got {args.rate:g}.", file=sys.stderr)
        return 2
    progress = {"next": time.monotonic() + 2.0}

    def report(record: SentRecord) -> None:
        if time.monotonic() >= progress["next"]:
            progress["next"] += 2.0
            print(f"  redriven {record.index + 1} records so far...", file=sys.stderr, flush=True)

    try:
        with command_stack() as stack:
            result = redrive(stack, args.dlq, args.to, rate=args.rate, limit=args.limit, burst=args.burst,
                             on_send=report)
    except (StackError, RedriveError) as exc:
        print(exc, file=sys.stderr)
        return 2
    pace = "all at once" if result.rate is None else f"at most {result.rate:g}/s"
    print(f"redrove {result.sent} record(s) from {result.dlq_topic} to {result.source_topic} {pace} "
          f"in {result.elapsed_seconds:.1f} s (observed {result.observed_rate:.1f}/s).")
    return 0
