"""The Two Generals' Problem as data: runs, decision rules, the proof, and a bounded check.

The model. General A receives an order, attack or retreat, that only A knows.
A and B then take turns sending numbered messages over a channel that may lose
any of them: message 1 goes A -> B, message 2 goes B -> A, and so on up to
message ``n``. Each message may carry everything its sender knows. The enemy
can capture a messenger at any point; once one is captured the conversation
ends (each message answers the one before, so nothing follows a loss). A run is
therefore fully described by the order and how many messages got through, from
0 to ``n``.

What a general *sees* in a run is its view:

* A sees the order and how many of B's messages reached it.
* B sees how many of A's messages reached it and, if at least one did, the
  order (the first message carries it).

A deterministic protocol decides from the view alone. It must give:

* **agreement**: both generals decide the same in every run;
* **attack when all goes well**: the order was attack and every message arrived;
* **retreat when told to**: the order was retreat (in every run).

:func:`proof_steps` walks the classical argument for any ``n``: start from
the run where everything arrives, drop the last message, and notice that its
sender sees the same thing as before, so it decides the same; by agreement so
does the other; repeat down to the run where nothing arrives, which B cannot
tell apart from a run where the order was retreat.

:func:`exhaustive_check` enumerates every deterministic decision rule for
protocols of up to ``n`` messages in this model and counts how many meet all
three requirements (none). It illustrates the proof; it is not the proof. It
covers deterministic rules over alternating, reply-driven conversations of a
bounded length; it does not cover randomised rules (they cannot be certain
either, only likely), conversations of unbounded length, or channels that
lose nothing. Only the induction in :func:`proof_steps` covers every ``n``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

ATTACK = "attack"
RETREAT = "retreat"
ORDERS = (ATTACK, RETREAT)
REQUIREMENTS = ("agreement", "attack when all goes well", "retreat when told to")


def sender(message: int) -> str:
    """Who sends message number ``message`` (1-based): A sends the odd ones, B the even ones."""
    if message < 1:
        raise ValueError(f"messages are numbered from 1, got {message}")
    return "A" if message % 2 == 1 else "B"


@dataclass(frozen=True)
class Run:
    """One run: the order A was given and how many messages got through before the first loss."""

    order: str
    delivered: int
    n_messages: int

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be {ATTACK!r} or {RETREAT!r}, got {self.order!r}")
        if not 0 <= self.delivered <= self.n_messages:
            raise ValueError(f"delivered must be between 0 and {self.n_messages}, got {self.delivered}")

    @property
    def lost(self) -> int | None:
        """The number of the captured message, or None when every message arrived."""
        return self.delivered + 1 if self.delivered < self.n_messages else None

    def view_a(self) -> tuple[str, int]:
        """What A sees: the order and how many of B's messages arrived."""
        return (self.order, self.delivered // 2)

    def view_b(self) -> tuple[str | None, int]:
        """What B sees: the order if any message arrived, and how many of A's messages arrived."""
        received = (self.delivered + 1) // 2
        return (self.order if received else None, received)

    def messages(self) -> list[tuple[int, str, str, bool]]:
        """The messages of the run: (number, from, to, arrived); sending stops after a loss."""
        out = []
        for k in range(1, min(self.delivered + 1, self.n_messages) + 1):
            frm = sender(k)
            out.append((k, frm, "B" if frm == "A" else "A", k <= self.delivered))
        return out

    def describe(self) -> str:
        """A one-line description for tables and captions."""
        lost = "all arrived" if self.lost is None else f"message {self.lost} captured"
        return f"order={self.order}, {self.delivered}/{self.n_messages} delivered ({lost})"


def all_runs(n_messages: int) -> list[Run]:
    """Every run of an ``n_messages`` protocol: both orders, every cut-off point."""
    return [Run(order, d, n_messages) for order in ORDERS for d in range(n_messages + 1)]


@dataclass(frozen=True)
class DecisionRule:
    """A pair of decision functions, one per general, each from that general's view to a decision."""

    name: str
    decide_a: Callable[[tuple[str, int]], str]
    decide_b: Callable[[tuple[str | None, int]], str]

    def decisions(self, run: Run) -> tuple[str, str]:
        """What A and B decide in ``run``."""
        return self.decide_a(run.view_a()), self.decide_b(run.view_b())


@dataclass(frozen=True)
class Violation:
    """A run that breaks a rule, and which requirement it breaks."""

    rule: str
    run: Run
    requirement: str
    decision_a: str
    decision_b: str

    def explain(self) -> str:
        """A sentence a learner can read."""
        return (f"{self.rule!r} breaks {self.requirement!r} when {self.run.describe()}: "
                f"A decides {self.decision_a}, B decides {self.decision_b}")


def broken_requirements(run: Run, a: str, b: str) -> list[str]:
    """The requirements that the decisions ``a`` and ``b`` break in ``run``."""
    broken = []
    if a != b:
        broken.append("agreement")
    if run.order == ATTACK and run.delivered == run.n_messages and (a, b) != (ATTACK, ATTACK):
        broken.append("attack when all goes well")
    if run.order == RETREAT and (a, b) != (RETREAT, RETREAT):
        broken.append("retreat when told to")
    return broken


def find_violation(rule: DecisionRule, n_messages: int) -> Violation | None:
    """The first run (fewest messages delivered first) that breaks ``rule``, or None."""
    runs = sorted(all_runs(n_messages), key=lambda r: (r.delivered, r.order))
    for run in runs:
        a, b = rule.decisions(run)
        broken = broken_requirements(run, a, b)
        if broken:
            return Violation(rule.name, run, broken[0], a, b)
    return None


def first_try_rules(n_messages: int) -> list[DecisionRule]:
    """The rules people try first, each a plausible idea that fails."""
    last_b = n_messages // 2          # how many messages A gets when all arrive
    last_a = (n_messages + 1) // 2    # how many messages B gets when all arrive

    def when(cond: bool) -> str:
        return ATTACK if cond else RETREAT

    return [
        DecisionRule("always attack", lambda va: ATTACK, lambda vb: ATTACK),
        DecisionRule("never attack", lambda va: RETREAT, lambda vb: RETREAT),
        DecisionRule("attack once the order is sent",
                     lambda va: when(va[0] == ATTACK),
                     lambda vb: when(vb[0] == ATTACK)),
        DecisionRule("attack once acknowledged",
                     lambda va: when(va[0] == ATTACK and va[1] >= 1),
                     lambda vb: when(vb[0] == ATTACK)),
        DecisionRule("attack only after the full handshake",
                     lambda va: when(va[0] == ATTACK and va[1] >= last_b),
                     lambda vb: when(vb[0] == ATTACK and vb[1] >= last_a)),
    ]


# --- the proof, step by step -----------------------------------------------------------------


@dataclass(frozen=True)
class ProofStep:
    """One step of the argument: a run, the decision it forces, and why."""

    run: Run
    forced: str             # what both generals must decide in this run
    reason: str
    unaware: str | None     # the general that cannot tell this run from the previous one


def proof_steps(n_messages: int) -> list[ProofStep]:
    """The impossibility argument for an ``n_messages`` protocol, as a list of runs.

    Step 0 is the run where every message arrives: both must attack. Each next
    step loses one more message off the end. The sender of the newly lost
    message saw nothing different (it never hears whether its last message
    arrived), so it still attacks; by agreement, so does the other general. The
    last step is the run where nothing arrives, which B cannot tell from the
    run with order retreat, where it must retreat: a contradiction.
    """
    if n_messages < 0:
        raise ValueError(f"n_messages must be >= 0, got {n_messages}")
    steps = [ProofStep(Run(ATTACK, n_messages, n_messages), ATTACK,
                       "every message arrived and the order was attack, so both must attack", None)]
    for delivered in range(n_messages - 1, -1, -1):
        lost = delivered + 1
        who = sender(lost)
        other = "B" if who == "A" else "A"
        previous, run = steps[-1].run, Run(ATTACK, delivered, n_messages)
        same = previous.view_a() == run.view_a() if who == "A" else previous.view_b() == run.view_b()
        assert same, "the sender of the last message must see the same view in both runs"
        steps.append(ProofStep(run, ATTACK,
                               f"message {lost} was captured; {who} sent it and cannot tell this run from the "
                               f"previous one, so {who} still attacks, and by agreement {other} attacks too",
                               who))
    nothing = Run(RETREAT, 0, n_messages)
    assert nothing.view_b() == steps[-1].run.view_b()
    steps.append(ProofStep(nothing, RETREAT,
                           "the order was retreat, so both must retreat; but B sees exactly what it saw in the "
                           "previous run, where it had to attack: no rule can do both",
                           "B"))
    return steps


# --- the bounded, exhaustive check -----------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """What the exhaustive check found for one protocol length."""

    n_messages: int
    views_a: int
    views_b: int
    rules_checked: int
    meeting_agreement: int
    meeting_validity: int      # both "attack when all goes well" and "retreat when told to"
    meeting_all: int


def _views(n_messages: int) -> tuple[list, list]:
    runs = all_runs(n_messages)
    va = sorted({r.view_a() for r in runs}, key=repr)
    vb = sorted({r.view_b() for r in runs}, key=repr)
    return va, vb


def exhaustive_check(n_messages: int) -> CheckResult:
    """Try every deterministic decision rule for an ``n_messages`` protocol (n <= 8).

    A rule assigns attack or retreat to each possible view of A and of B, so
    there are 2**(views of A) * 2**(views of B) of them; all are checked against
    all runs at once with numpy.
    """
    if not 0 <= n_messages <= 8:
        raise ValueError(f"the exhaustive check enumerates 2**(2n+3) rules; keep n_messages in 0..8, "
                         f"got {n_messages}")
    views_a, views_b = _views(n_messages)
    index_a = {v: i for i, v in enumerate(views_a)}
    index_b = {v: i for i, v in enumerate(views_b)}
    runs = all_runs(n_messages)
    # bits[k, i]: decision (1 = attack) of rule number k at view i.
    bits_a = (np.arange(2 ** len(views_a))[:, None] >> np.arange(len(views_a))[None, :]) & 1
    bits_b = (np.arange(2 ** len(views_b))[:, None] >> np.arange(len(views_b))[None, :]) & 1
    ra = np.array([index_a[r.view_a()] for r in runs])
    rb = np.array([index_b[r.view_b()] for r in runs])
    dec_a = bits_a[:, ra].astype(bool)   # (rules of A, runs)
    dec_b = bits_b[:, rb].astype(bool)   # (rules of B, runs)
    attack_all = np.array([r.order == ATTACK and r.delivered == r.n_messages for r in runs])
    retreat = np.array([r.order == RETREAT for r in runs])
    valid_a = (dec_a[:, attack_all].all(axis=1)) & (~dec_a[:, retreat]).all(axis=1)
    valid_b = (dec_b[:, attack_all].all(axis=1)) & (~dec_b[:, retreat]).all(axis=1)
    agree = (dec_a[:, None, :] == dec_b[None, :, :]).all(axis=2)   # (rules of A, rules of B)
    valid = valid_a[:, None] & valid_b[None, :]
    return CheckResult(n_messages, len(views_a), len(views_b), int(agree.size), int(agree.sum()),
                       int(valid.sum()), int((agree & valid).sum()))


def exhaustive_checks(max_messages: int = 6) -> list[CheckResult]:
    """:func:`exhaustive_check` for every protocol length from 1 to ``max_messages``."""
    return [exhaustive_check(n) for n in range(1, max_messages + 1)]


# --- the asymmetry: one-sided certainty ------------------------------------------------------


class ConsumerCrashed(Exception):
    """The consumer died at its crash point, the way SIGKILL or a pulled plug stops a real one."""


WRITE_ORDERS = ("atomic", "effect_then_log", "log_then_effect")


class DedupLog:
    """A consumer's record of the message ids it has processed.

    The consumer alone decides whether to run a side effect, from its own log:
    it needs no answer from the producer, so no agreement is involved.

    That gives exactly-once *processing* only when a crash cannot fall between
    the side effect and the log entry: both commit atomically (in one database
    transaction, ``write_order="atomic"``), or the effect is itself idempotent
    (a repeat of it changes nothing, as a payment provider's Idempotency-Key
    makes a charge). Written one after the other, a crash in between either
    repeats the effect on redelivery (``"effect_then_log"``) or loses it
    (``"log_then_effect"``, which is what acknowledging a message before
    processing it amounts to). :func:`crash_then_redeliver` shows all three.

    The log stands for durable storage: it outlives a crash of the consumer.
    """

    def __init__(self, write_order: str = "atomic") -> None:
        if write_order not in WRITE_ORDERS:
            raise ValueError(f"write_order must be one of {WRITE_ORDERS}, got {write_order!r}")
        self.write_order = write_order
        self._seen: set[str] = set()
        self.hits = 0

    def __contains__(self, msg_id: str) -> bool:
        return msg_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def process(self, msg_id: str, effect: Callable[[], None], *, crash_between: bool = False) -> bool:
        """Run ``effect`` unless ``msg_id`` was processed before; True when it ran.

        With ``crash_between`` the consumer dies between the effect and the log
        entry (raising :class:`ConsumerCrashed`): what survives depends on the
        write order. In an atomic write a crash before the commit rolls back both.
        """
        if msg_id in self._seen:
            self.hits += 1
            return False
        if self.write_order == "atomic":
            if crash_between:
                raise ConsumerCrashed(f"died before committing {msg_id}: neither effect nor log entry kept")
            effect()
            self._seen.add(msg_id)
        elif self.write_order == "effect_then_log":
            effect()
            if crash_between:
                raise ConsumerCrashed(f"died after the effect of {msg_id}, before its log entry")
            self._seen.add(msg_id)
        else:
            self._seen.add(msg_id)
            if crash_between:
                raise ConsumerCrashed(f"died after logging {msg_id}, before its effect")
            effect()
        return True


def crash_then_redeliver(write_order: str, msg_id: str = "msg-000") -> dict[str, int]:
    """Deliver one message, crash the consumer mid-way, deliver the message again.

    The first delivery dies between the effect and the log entry; its offset
    was never committed, so the broker delivers the message a second time to a
    fresh consumer that reads the same (durable) log. Returns how many times
    the effect ran in all (1: exactly once) and how many deliveries the log skipped.
    """
    log = DedupLog(write_order)
    effects: list[str] = []
    try:
        log.process(msg_id, lambda: effects.append(msg_id), crash_between=True)
    except ConsumerCrashed:
        pass
    log.process(msg_id, lambda: effects.append(msg_id))
    return {"effects": len(effects), "dedup_hits": log.hits}


def deliver_with_duplicates(msg_ids: Iterable[str], *, duplicate_rate: float, seed: int = 0) -> list[str]:
    """A delivery stream in which each id appears once or more (at-least-once delivery), seeded."""
    rng = np.random.default_rng(seed)
    stream = []
    for msg_id in msg_ids:
        stream.append(msg_id)
        while rng.random() < duplicate_rate:
            stream.append(msg_id)
    return stream


def one_sided_demo(n_messages: int = 20, duplicate_rate: float = 0.4, seed: int = 0) -> dict[str, int]:
    """Process an at-least-once stream through a dedup log and count effects per id.

    Returns the number of deliveries, of effects run, of dedup hits, and the
    largest number of effects any one id got (1: exactly-once processing).
    """
    ids = [f"msg-{i:03d}" for i in range(n_messages)]
    stream = deliver_with_duplicates(ids, duplicate_rate=duplicate_rate, seed=seed)
    log = DedupLog()
    effects: dict[str, int] = {}

    def charge(msg_id: str) -> Callable[[], None]:
        return lambda: effects.__setitem__(msg_id, effects.get(msg_id, 0) + 1)

    for msg_id in stream:
        log.process(msg_id, charge(msg_id))
    return {"deliveries": len(stream), "effects": sum(effects.values()), "dedup_hits": log.hits,
            "max_effects_per_id": max(effects.values(), default=0), "distinct_ids": len(ids)}
