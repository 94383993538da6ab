"""The course's review questions, as data: choices, the right one, and feedback that cites the course.

The widgets in ``effectively_once.widgets.quiz`` only render these; what is
right and what each answer teaches lives here, so it can be tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Choice:
    """One answer to a multiple-choice question, and what to tell a learner who picks it."""

    text: str
    correct: bool
    feedback: str


@dataclass(frozen=True)
class MultipleChoice:
    """A question with exactly one right answer among ``choices``."""

    key: str
    prompt: str
    choices: tuple[Choice, ...]

    def __post_init__(self) -> None:
        if sum(c.correct for c in self.choices) != 1:
            raise ValueError(f"question {self.key!r} must have exactly one right answer")

    @property
    def answer(self) -> Choice:
        """The right choice."""
        return next(c for c in self.choices if c.correct)

    def check(self, index: int) -> Choice:
        """The choice at ``index`` (0-based), with its feedback."""
        if not 0 <= index < len(self.choices):
            raise IndexError(f"question {self.key!r} has choices 0 to {len(self.choices) - 1}; got {index}")
        return self.choices[index]


@dataclass(frozen=True)
class Point:
    """One point a good answer makes, and what in a text shows it was made.

    ``any_of`` holds words (each matched at the start of a word, so "induct"
    finds "induction"); ``patterns`` holds regular expressions, for a point
    that no single word shows, such as removing messages one at a time.
    """

    idea: str
    any_of: tuple[str, ...]
    patterns: tuple[str, ...] = ()

    def made_in(self, text: str) -> bool:
        lowered = text.lower()
        return (any(re.search(rf"\b{re.escape(word.lower())}", lowered) for word in self.any_of)
                or any(re.search(pattern, lowered) for pattern in self.patterns))


@dataclass(frozen=True)
class OpenQuestion:
    """A question answered in a sentence or two, with a model answer and the points it must make."""

    key: str
    prompt: str
    model_answer: str
    points: tuple[Point, ...] = field(default_factory=tuple)
    where: str = ""

    def points_made(self, text: str) -> list[tuple[str, bool]]:
        """For each point, whether ``text`` seems to make it (a word match: a prompt to reread, not a grade)."""
        return [(p.idea, p.made_in(text)) for p in self.points]


KAFKA_EOS_AND_POSTGRES = MultipleChoice(
    key="kafka_eos_postgres",
    prompt="What is the actual reason Kafka's exactly-once cannot extend natively to an external PostgreSQL database?",
    choices=(
        Choice("PostgreSQL is too slow to keep up with Kafka's transaction commits.", False,
               "Speed has nothing to do with it. In notebook 03 a single charge was enough to make the two "
               "systems disagree."),
        Choice("Kafka's transaction coordinator only spans Kafka partitions and consumer offsets; PostgreSQL's "
               "commit is not part of that protocol, so each side commits or aborts on its own.", True,
               "Notebook 03 showed both directions live: a Kafka transaction committed while the "
               "PostgreSQL write beside it rolled back, and the reverse. Nothing coordinates the two commits, "
               "so the consumer has to make its database write idempotent instead."),
        Choice("Kafka transactions only work with the Java client.", False,
               "The course's probe ran transactions from Python (librdkafka) in notebook 03. The limit is what "
               "the transaction covers, not who starts it."),
        Choice("read_committed consumers cannot write to a database.", False,
               "They can write anywhere; what they cannot do is make that write part of Kafka's transaction. "
               "Notebook 04's consumer reads with read_committed and writes to PostgreSQL on every message."),
    ),
)

DEDUP_SPIKE = MultipleChoice(
    key="dedup_spike",
    prompt="In steady state, a consumer's dedup_check_hit_rate jumps from 0.05% to 8% for 10 minutes, outside "
           "any deploy window. What is the most likely cause?",
    choices=(
        Choice("The dedup table's UNIQUE constraint was dropped.", False,
               "Then the hit rate would fall to zero, not rise: a hit is the constraint doing its job."),
        Choice("Customers are submitting each payment twice.", False,
               "With msg_ids derived from the order, as notebook 04 derives them, a second click for the same "
               "order does hit the dedup table and is absorbed. But customers do not start clicking twice as "
               "often for ten minutes and then stop; double clicks are part of the steady 0.05 %. A jump that "
               "starts and ends like this points at the redelivery machinery. (With ids minted per click, a "
               "double click would not hit the table at all: it would charge twice, and the ledger would show it.)"),
        Choice("The broker is redelivering messages whose offsets were not committed in time: commits that are "
               "late, missing or failed (a crash before the commit), a rebalance, or a poll batch whose "
               "processing outlasts max.poll.interval.ms.", True,
               "Notebook 05 produced exactly this picture: killing and restarting consumers made the "
               "group rebalance, uncommitted offsets were delivered again, the hit rate spiked and lag grew, "
               "while the ledger showed no charge twice. The dedup table absorbed it; the cause to fix is why "
               "the commits did not land. (An upstream re-publish or a DLQ redrive in that window gives the "
               "same picture: rule those out too.)"),
        Choice("PostgreSQL is running out of disk.", False,
               "That shows up as failed INSERTs and errors, not as successful duplicate detection."),
        Choice("The consumers acknowledge (commit offsets for) messages before they finish processing them.", False,
               "An early commit loses messages, it does not repeat them: a consumer that dies after committing "
               "and before the side effect leaves a message nobody will deliver again, so nothing hits the dedup "
               "table. That is why notebook 04's consumer commits its offsets only after the whole batch is handled."),
    ),
)

OPEN_QUESTIONS = (
    OpenQuestion(
        key="two_generals",
        prompt="State the Two Generals' Problem, and explain the asymmetry that makes exactly-once processing "
               "achievable although exactly-once delivery is not.",
        model_answer=(
            "Two generals can only talk through messengers, and any messenger may be captured (lost). They "
            "want a protocol that always ends in agreement, attacks when the order is attack and every "
            "message arrives, and retreats when the order is retreat. No finite protocol can. Suppose one "
            "did, and start from the run where every message arrives: both attack. Remove the last message: "
            "its sender cannot tell it was lost, sees what it saw before and still attacks, so by agreement "
            "the other general attacks too. Repeat, by induction, one message at a time, down to the run "
            "where no message arrives: both must still attack. But there B sees exactly what it sees when "
            "the order was retreat, where it must retreat: a contradiction. Delivery exactly once needs both "
            "the sender and the receiver to be certain, so it is impossible. Processing exactly once needs "
            "only the consumer to be certain, and it can be: it keeps a durable log of the message ids it has "
            "processed and skips any it has seen. One-sided certainty is enough."),
        points=(
            Point("messages can be lost, so no finite protocol gives both sides certainty",
                  ("lost", "lose", "captured", "unreliable", "certainty", "certain")),
            Point("the proof removes the last message, one at a time (by induction), down to none",
                  ("induct",),
                  patterns=(r"\b(remov|drop|delet|strip)\w*\b[^.]*\b(one (message )?at a time|one by one|"
                            r"each message in turn)",
                            r"\b(one (message )?at a time|one by one)\b[^.]*\b(remov|drop|delet|strip)")),
            Point("each step keeps agreement: the sender cannot tell, so both still attack",
                  ("cannot tell", "can't tell", "still attack", "still agree", "keeps agreement")),
            Point("it ends in a contradiction: with nothing delivered they must still attack",
                  ("contradiction", "absurd")),
            Point("processing needs only the consumer's certainty: a dedup log",
                  ("dedup", "one-sided", "one side", "consumer", "log")),
        ),
        where="notebook 01",
    ),
    OpenQuestion(
        key="three_layers",
        prompt="What three layers make up the hybrid exactly-once pattern for a payment processor, and which "
               "failure window does each one close?",
        model_answer=(
            "The hybrid exactly-once pattern (notebook 04) layers the defences of three systems, because none "
            "gives exactly-once alone; delivery stays at least once. "
            "1. Kafka's idempotent producer (enable.idempotence=true, acks=all; librdkafka leaves it off unless "
            "asked): the broker drops a retried batch by producer id and sequence number. It works within one "
            "producer session and while the broker keeps that producer's state; a restarted producer's resend "
            "is a new record. "
            "2. A dedup table in the consumer's database, keyed by a msg_id derived from the input: INSERT it "
            "as 'pending' ON CONFLICT DO NOTHING before the side effect, mark it 'done' after. A 'done' row is "
            "skipped, which closes redelivery after the effect; a 'pending' row is retried with the same key, "
            "never skipped. "
            "3. The payment provider's Idempotency-Key derived from the msg_id: it closes the window the dedup "
            "table cannot, between the provider call and 'done', because a retried call gets the stored answer "
            "instead of moving money again. It is also the only layer that stops two workers calling at once "
            "(the provider answers 409 while the key is in flight). It lasts only as long as the provider keeps "
            "the key (Stripe's API v1 may prune it once it is at least 24 hours old), and a key whose stored "
            "answer is a 500 says nothing about the money. So the consumer takes the PaymentIntent path: it "
            "stores the PaymentIntent's id in the dedup row before confirming it, and settles any answer that "
            "says nothing, or a 'pending' row older than the key, by retrieving the PaymentIntent by id, which "
            "is strongly consistent; never by Search, which lags behind the writes."),
        points=(
            Point("idempotent producer", ("idempotent producer", "enable.idempotence", "producer id", "sequence")),
            Point("consumer dedup table in the database", ("dedup", "on conflict", "pending")),
            Point("Idempotency-Key at the provider", ("idempotency-key", "idempotency key", "stripe")),
        ),
        where="notebooks 03, 04, 04c and 04e",
    ),
    OpenQuestion(
        key="hit_rate_spike",
        prompt="What does a sustained dedup_check_hit_rate above 1% outside deploy windows indicate, and what "
               "do you do about it?",
        model_answer=(
            "Messages that were already processed are arriving again. Mostly the broker is redelivering them "
            "because their offsets were not committed in time: a commit that is late, missing or failed (a "
            "consumer that crashes or restarts before it commits), processing that outlasts "
            "max.poll.interval.ms (the whole poll batch counts, not one message), so the consumer is removed "
            "from the group, or a rebalance. Or they were sent again from upstream: a producer re-published "
            "them, or someone redrove a dead-letter queue. Committing too early is not a cause: it loses "
            "messages, it does not repeat them. The dedup layer is working (no money moves twice), so look "
            "for the cause: commit errors, restarts, rebalances, batch processing time against "
            "max.poll.interval.ms, and any redrive or re-publish in that window, not the dedup table."),
        points=(
            Point("redelivery of already-processed messages", ("redeliver", "redelivery", "delivered again",
                                                               "arriving again")),
            Point("why: late or failed commits, a slow poll batch, rebalances, a re-publish or redrive",
                  ("commit", "rebalance", "crash", "restart", "unstable", "max.poll.interval", "redrive",
                   "re-publish", "republish")),
            Point("dedup is working; find the cause elsewhere", ("dedup is working", "dedup layer is working",
                                                                 "absorb", "no money", "not a dedup failure")),
        ),
        where="notebook 05",
    ),
)

# (layer, the window it closes, the window it leaves open)
LAYERS = (
    ("idempotent producer (`enable.idempotence=true`, `acks=all`)",
     "a producer's retry after a lost ack, within one producer session",
     "a restarted producer's resend; anything after the broker"),
    ("dedup table (`INSERT ... ON CONFLICT DO NOTHING`, `pending` then `done`)", "a redelivery after the status update",
     "the gap between the provider call and `done`; two workers on one `pending` row"),
    ("provider `Idempotency-Key` derived from `msg_id`",
     "a retried call after the money moved; a second worker's concurrent call (409)",
     "a retry after the provider pruned the key (Stripe API v1: any time after 24 h); a 500 stored under it, "
     "which says nothing about the money"),
    ("the PaymentIntent's id, stored in the dedup row before the confirm (the recovery point)",
     "an answer that says nothing (a 500, a timeout): retrieve it by id; a `pending` row older than the key",
     "nothing Search can close: it lags behind the writes, so \"not found\" proves nothing"),
)
LAYERS_TABLE = "\n".join(["| layer | closes | does not close |", "|---|---|---|",
                          *(f"| {layer} | {closes} | {leaves_open} |" for layer, closes, leaves_open in LAYERS)])

SUMMARY = f"""
### The course on one page

**Impossible:** exactly-once *delivery*. Over a channel that can lose messages, no finite protocol gives both
parties certainty (the Two Generals). Every broker delivers at least once or at most once.

**Achievable:** exactly-once *processing*, which production calls effectively-once: at-least-once delivery from
the broker plus a consumer that makes every side effect idempotent.

**The three layers, the recovery point, and the windows they close**

{LAYERS_TABLE}

**The traps:** a `pending` row must be retried, never skipped; the dedup table alone double-charges when the
consumer dies after a one-shot charge call; a key past its TTL is a new key; a 500 replayed under a key says
nothing, and Search right after it finds nothing even when the money moved; the SDK's automatic key covers only
its own retries of one call, not a redelivery; webhooks arrive at least once and in any order, so the shop's
inbox records each event once by its id; and a Kafka-protocol broker is not necessarily Apache Kafka (probe it).

**What to watch:** `consumer_lag_messages`, `dlq_depth` (alert at any), `dlq_oldest_age_seconds` (the oldest
message's age; alert over an hour), `dedup_check_hit_rate` (near zero; a sustained spike means processed
messages are arriving again: late, missing or failed commits, a poll batch that outlasts
`max.poll.interval.ms`, rebalances, an upstream re-publish or a redrive), `side_effect_duration_p99` (against
your timeouts), `retry_count_p99` (high: an unhealthy downstream), and one trace id per message end to end.
Committing too early does not show here: it loses messages instead.

**The incidents:** Stripe 2020, SQS 2019, Stripe 2023 and Slack 2022 are stories told in the field (no public
post-mortem was found for any of them), each paired with documented evidence of its mechanism. In the first
three the broker or queue kept its promises and the invariant broke in the consumer or in an operational
procedure. Slack's tells of a broker that failed to fence a zombie producer, a failure no public record shows;
the consumer's dedup table is what would have held. Broker guarantees are necessary and never sufficient.
"""
