"""A lossy channel from producer to broker to consumer, under four delivery semantics.

The model, per message:

* **Producer leg.** The producer sends the message; the network may lose it
  (``message_loss``). If it reaches the broker, the broker stores a copy and
  sends an acknowledgement, which the network may lose too (``ack_loss``). A
  producer that hears no acknowledgement times out and sends again, up to
  ``retries`` more times. A lost *acknowledgement* is what makes a retry store a
  second copy. With an idempotent producer the broker recognises the retry by
  its producer id and sequence number, drops it, and acknowledges again.
* **Consumer leg.** The consumer pulls every stored copy, runs its side effect,
  then commits its offset. If the commit is lost (``ack_loss`` again, standing
  for a crash or a rebalance before the commit landed), the broker hands the
  same copy out again and the side effect runs again, up to ``retries`` times.
  With ``retries=0`` the consumer commits before processing, which is
  at-most-once: no redelivery. A consumer with a dedup log skips a message id it
  has already processed.

A message is *lost* when its side effect never ran, *duplicated* when it ran
more than once, and *processed exactly once* otherwise.

All randomness is drawn up front from one seeded generator into a
:class:`ChannelDraws`, so that the vectorised totals (:func:`simulate`), the
plain per-message loop (:func:`simulate_loop`) and the event logs used by the
animation (:func:`message_events`) describe the very same runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

# Outcomes of one producer send.
SEND_LOST = 0        # the network lost the message; the broker never saw it
STORED_ACK_LOST = 1  # the broker got it, the acknowledgement was lost
STORED_ACKED = 2     # the broker got it and the producer heard back

MAX_RETRIES = 20


@dataclass(frozen=True)
class Semantics:
    """The knobs that make up a delivery semantic."""

    name: str
    retries: int
    idempotent_producer: bool
    consumer_dedup: bool

    def with_retries(self, retries: int) -> Semantics:
        """The same semantic with another retry budget (at-most-once keeps 0)."""
        if self.retries == 0:
            return self
        return Semantics(self.name, retries, self.idempotent_producer, self.consumer_dedup)


AT_MOST_ONCE = Semantics("at-most-once", 0, False, False)
AT_LEAST_ONCE = Semantics("at-least-once", 5, False, False)
IDEMPOTENT_PRODUCER = Semantics("at-least-once + idempotent producer", 5, True, False)
EFFECTIVELY_ONCE = Semantics("effectively-once", 5, True, True)
SEMANTICS = (AT_MOST_ONCE, AT_LEAST_ONCE, IDEMPOTENT_PRODUCER, EFFECTIVELY_ONCE)


def semantics_for(retries: int, idempotent_producer: bool, consumer_dedup: bool) -> str:
    """Name the semantic a combination of knobs gives (used by the widget's label)."""
    if retries == 0:
        base = "at-most-once"
    elif idempotent_producer and consumer_dedup:
        return "effectively-once"
    elif idempotent_producer:
        return "at-least-once + idempotent producer"
    else:
        base = "at-least-once"
    return base + (" + consumer dedup" if consumer_dedup else "")


@dataclass(frozen=True)
class ChannelDraws:
    """Every random outcome of a run, drawn up front.

    ``sends[i, j]`` is the outcome of the producer's ``j``-th send of message
    ``i`` (one of SEND_LOST, STORED_ACK_LOST, STORED_ACKED); ``redeliveries[i, c]``
    is how many commits of stored copy ``c`` of message ``i`` are lost before
    one lands. Both have ``1 + max_retries`` columns; a run with fewer retries
    reads only the first ones.
    """

    sends: np.ndarray
    redeliveries: np.ndarray
    message_loss: float
    ack_loss: float
    seed: int

    @property
    def n_messages(self) -> int:
        """How many messages the draws cover."""
        return int(self.sends.shape[0])

    @property
    def max_retries(self) -> int:
        """The largest retry budget these draws can replay."""
        return int(self.sends.shape[1]) - 1


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")
    return value


def draw(n_messages: int, message_loss: float, ack_loss: float, *, max_retries: int = 5,
         seed: int = 0) -> ChannelDraws:
    """Draw the random outcomes of ``n_messages`` messages (seeded, reproducible)."""
    message_loss = _check_rate("message_loss", message_loss)
    ack_loss = _check_rate("ack_loss", ack_loss)
    if n_messages < 0:
        raise ValueError(f"n_messages must be >= 0, got {n_messages}")
    if not 0 <= max_retries <= MAX_RETRIES:
        raise ValueError(f"max_retries must be between 0 and {MAX_RETRIES}, got {max_retries}")
    rng = np.random.default_rng(seed)
    width = max_retries + 1
    u = rng.random((n_messages, 2 * width), dtype=np.float32)
    u, v = u[:, :width], u[:, width:]
    # One uniform per send decides its fate: lost, stored but unacknowledged, or acknowledged.
    sends = np.full((n_messages, width), STORED_ACKED, dtype=np.int8)
    sends[u < message_loss + (1.0 - message_loss) * ack_loss] = STORED_ACK_LOST
    sends[u < message_loss] = SEND_LOST
    redeliveries: np.ndarray
    if ack_loss >= 1.0:
        redeliveries = np.full((n_messages, width), width, dtype=np.int8)
    else:
        # Failures before the first landed commit (geometric, by inversion), capped at the budget.
        with np.errstate(divide="ignore"):
            failures = np.floor(np.log(v) / np.float32(np.log(ack_loss))) if ack_loss > 0 else np.zeros_like(v)
        redeliveries = np.minimum(failures, width).astype(np.int8)
    return ChannelDraws(sends, redeliveries, message_loss, ack_loss, seed)


@dataclass(frozen=True)
class Totals:
    """What happened to a batch of messages under one semantic."""

    semantics: str
    sent: int                  # messages the application asked to send
    network_sends: int         # sends put on the wire, retries included
    retries: int               # network_sends - sent
    stored_copies: int         # records the broker appended
    broker_dropped: int        # retries the idempotent producer's broker recognised and dropped
    deliveries: int            # times the consumer ran a side effect or skipped it by dedup
    dedup_hits: int            # deliveries the consumer's dedup log skipped
    lost: int                  # messages whose side effect never ran
    duplicated: int            # messages whose side effect ran more than once
    exactly_once: int          # messages whose side effect ran exactly once
    extra_effects: int         # side effects beyond the first, summed over messages

    def as_dict(self) -> dict:
        """The totals as a plain dict (for tables and JSON)."""
        return asdict(self)


def _sized(draws: ChannelDraws, semantics: Semantics) -> int:
    if semantics.retries > draws.max_retries:
        raise ValueError(f"these draws cover {draws.max_retries} retries, the semantic asks for "
                         f"{semantics.retries}: draw again with max_retries={semantics.retries}")
    return semantics.retries + 1


def per_message(draws: ChannelDraws, semantics: Semantics) -> dict[str, np.ndarray]:
    """Vectorised per-message counts: sends, copies stored, deliveries and side effects."""
    width = _sized(draws, semantics)
    sends = draws.sends[:, :width]
    acked = sends == STORED_ACKED
    # A send happens only while no earlier send was acknowledged.
    acked_before = np.cumsum(acked, axis=1, dtype=np.int8) - acked
    attempted = acked_before == 0
    network_sends = attempted.sum(axis=1, dtype=np.int32)
    arrived = (attempted & (sends != SEND_LOST)).sum(axis=1, dtype=np.int32)
    copies = np.minimum(arrived, 1) if semantics.idempotent_producer else arrived
    # Each stored copy is processed once, plus once per lost commit, within the retry budget.
    per_copy = np.minimum(draws.redeliveries[:, :width], width - 1) + 1
    copy_index = np.arange(per_copy.shape[1])
    deliveries = np.where(copy_index[None, :] < copies[:, None], per_copy, 0).sum(axis=1, dtype=np.int32)
    effects = np.minimum(deliveries, 1) if semantics.consumer_dedup else deliveries
    return {"network_sends": network_sends, "arrived": arrived, "copies": copies,
            "deliveries": deliveries, "effects": effects}


def simulate(draws: ChannelDraws, semantics: Semantics) -> Totals:
    """Totals for every message of ``draws`` under ``semantics``, computed with numpy."""
    m = per_message(draws, semantics)
    effects = m["effects"]
    n_sends = int(m["network_sends"].sum())
    return Totals(
        semantics=semantics.name,
        sent=draws.n_messages,
        network_sends=n_sends,
        retries=n_sends - draws.n_messages,
        stored_copies=int(m["copies"].sum()),
        broker_dropped=int((m["arrived"] - m["copies"]).sum()),
        deliveries=int(m["deliveries"].sum()),
        dedup_hits=int((m["deliveries"] - effects).sum()),
        lost=int((effects == 0).sum()),
        duplicated=int((effects > 1).sum()),
        exactly_once=int((effects == 1).sum()),
        extra_effects=int(np.maximum(effects - 1, 0).sum()),
    )


def compare(draws: ChannelDraws, retries: int | None = None) -> dict[str, Totals]:
    """Totals for each of the four semantics on the same draws (same losses for all)."""
    chosen = [s if retries is None else s.with_retries(retries) for s in SEMANTICS]
    return {s.name: simulate(draws, s) for s in chosen}


# --- the same model, one message at a time -------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One thing that happened to one message, in the order it happened.

    ``kind`` is one of: send, lost, stored, dropped_duplicate, ack, ack_lost,
    timeout, give_up, deliver, process, dedup_skip, commit, commit_lost.
    ``src``/``dst`` are lanes ("producer", "network", "broker", "consumer"). An
    ``ack_lost`` ends in the network lane, where the ack vanished; a ``commit_lost``
    goes from the consumer towards the broker, which never receives it.
    ``attempt`` counts sends (producer leg) or deliveries of a copy (consumer leg)
    from 0; ``copy`` is the broker copy the event concerns (or -1).
    """

    message: int
    kind: str
    src: str
    dst: str
    attempt: int = 0
    copy: int = -1
    retry: bool = False      # a resend or a redelivery
    duplicate: bool = False  # a second copy stored, or a side effect run again


def message_events(draws: ChannelDraws, semantics: Semantics, message: int) -> list[Event]:
    """The event log of one message: what the animation draws, step by step."""
    width = _sized(draws, semantics)
    events: list[Event] = []
    add = events.append
    copies = 0
    arrived = 0
    for attempt in range(width):
        outcome = int(draws.sends[message, attempt])
        retry = attempt > 0
        add(Event(message, "send", "producer", "network", attempt, -1, retry))
        if outcome == SEND_LOST:
            add(Event(message, "lost", "network", "network", attempt, -1, retry))
        else:
            arrived += 1
            if semantics.idempotent_producer and copies >= 1:
                add(Event(message, "dropped_duplicate", "network", "broker", attempt, copies - 1, retry))
            else:
                add(Event(message, "stored", "network", "broker", attempt, copies, retry, copies >= 1))
                copies += 1
            if outcome == STORED_ACKED:
                add(Event(message, "ack", "broker", "producer", attempt, copies - 1, retry))
                break
            add(Event(message, "ack_lost", "broker", "network", attempt, copies - 1, retry))
        if attempt + 1 < width:
            add(Event(message, "timeout", "producer", "producer", attempt, -1, retry))
        else:
            add(Event(message, "give_up", "producer", "producer", attempt, -1, retry))
    processed = 0
    for copy in range(copies):
        failures = min(int(draws.redeliveries[message, copy]), width - 1)
        for delivery in range(failures + 1):
            retry = delivery > 0
            add(Event(message, "deliver", "broker", "consumer", delivery, copy, retry))
            if semantics.consumer_dedup and processed >= 1:
                add(Event(message, "dedup_skip", "consumer", "consumer", delivery, copy, retry))
            else:
                add(Event(message, "process", "consumer", "consumer", delivery, copy, retry, processed >= 1))
                processed += 1
            if delivery < failures:
                add(Event(message, "commit_lost", "consumer", "broker", delivery, copy, retry))
            else:
                add(Event(message, "commit", "consumer", "broker", delivery, copy, retry))
    return events


def simulate_loop(draws: ChannelDraws, semantics: Semantics) -> Totals:
    """The same totals as :func:`simulate`, one message at a time in plain Python.

    This is the reference the vectorised version is checked (and benchmarked) against.
    """
    width = _sized(draws, semantics)
    sends_all = draws.sends.tolist()
    redeliveries_all = draws.redeliveries.tolist()
    n_sends = stored = dropped = deliveries = dedup_hits = 0
    lost = duplicated = exactly = extra = 0
    for i in range(draws.n_messages):
        row = sends_all[i]
        copies = 0
        for attempt in range(width):
            n_sends += 1
            outcome = row[attempt]
            if outcome != SEND_LOST:
                if semantics.idempotent_producer and copies >= 1:
                    dropped += 1
                else:
                    copies += 1
                if outcome == STORED_ACKED:
                    break
        stored += copies
        effects = 0
        for copy in range(copies):
            runs = min(redeliveries_all[i][copy], width - 1) + 1
            deliveries += runs
            for _ in range(runs):
                if semantics.consumer_dedup and effects >= 1:
                    dedup_hits += 1
                else:
                    effects += 1
        if effects == 0:
            lost += 1
        elif effects == 1:
            exactly += 1
        else:
            duplicated += 1
            extra += effects - 1
    return Totals(semantics.name, draws.n_messages, n_sends, n_sends - draws.n_messages, stored, dropped,
                  deliveries, dedup_hits, lost, duplicated, exactly, extra)


def totals_from_events(events: list[Event], semantics_name: str, n_messages: int) -> Totals:
    """Totals recomputed from event logs (the animation's counters use this)."""
    sends = stored = dropped = deliveries = dedup_hits = 0
    effects: dict[int, int] = {}
    for e in events:
        if e.kind == "send":
            sends += 1
        elif e.kind == "stored":
            stored += 1
        elif e.kind == "dropped_duplicate":
            dropped += 1
        elif e.kind == "deliver":
            deliveries += 1
        elif e.kind == "dedup_skip":
            dedup_hits += 1
        elif e.kind == "process":
            effects[e.message] = effects.get(e.message, 0) + 1
    counts = [effects.get(i, 0) for i in range(n_messages)]
    return Totals(semantics_name, n_messages, sends, sends - n_messages, stored, dropped, deliveries,
                  dedup_hits, sum(c == 0 for c in counts), sum(c > 1 for c in counts),
                  sum(c == 1 for c in counts), sum(max(c - 1, 0) for c in counts))


def iter_events(draws: ChannelDraws, semantics: Semantics, n_messages: int | None = None) -> Iterator[Event]:
    """Event logs of the first ``n_messages`` messages, one after the other."""
    count = draws.n_messages if n_messages is None else min(n_messages, draws.n_messages)
    for i in range(count):
        yield from message_events(draws, semantics, i)


def loss_bound(message_loss: float, retries: int) -> float:
    """Chance that a retrying producer loses a message: every one of its 1 + retries sends lost."""
    return float(message_loss) ** (retries + 1)
