"""When a consumer's dedup table absorbs a broker's missing transaction guarantees, and when it does not.

A broker that shows the records of aborted transactions to ``read_committed``
consumers (Tansu does, ``check_read_committed`` shows it live), or that does not
fence a zombie, delivers records their producer took back. The consumer's
dedup table, keyed by ``msg_id``, turns that into a harmless redelivery only
when two conditions hold:

- every aborted transaction is retried until it commits, with the same work;
- each record's ``msg_id`` is derived from the input (here the order), so the
  retry (or the zombie's twin) carries the same ids as the attempt that leaked.

``compare_leaks()`` runs every combination of story, id scheme and reader
through ``theory.generals.DedupLog``, the dedup rule of the course's consumer
(process a ``msg_id`` once), and reports how often each order was charged.
Pure and deterministic: no broker, no database.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field

from effectively_once.theory.generals import DedupLog

RETRIED = "aborted, then retried and committed"
ZOMBIE = "an unfenced zombie and its successor both publish"
PHANTOM = "aborted and never retried"
STORIES = (RETRIED, ZOMBIE, PHANTOM)

DERIVED = "derived from the order"
FRESH = "minted per attempt"
ID_SCHEMES = (DERIVED, FRESH)

ORDERS = ("order-1", "order-2", "order-3")


@dataclass(frozen=True)
class Attempt:
    """One transaction of the producer: the orders it published and whether it committed."""

    number: int
    committed: bool
    orders: tuple[str, ...]


def attempts_of(story: str, orders: tuple[str, ...] = ORDERS) -> list[Attempt]:
    """The producer's transactions in ``story``, in the order they reached the log."""
    if story == RETRIED:
        return [Attempt(1, False, orders), Attempt(2, True, orders)]
    if story == ZOMBIE:
        # The zombie's transaction is aborted by the successor's init_transactions on a broker that
        # fences; on one that does not, it stays visible. Either way it never counts as committed.
        return [Attempt(1, False, orders), Attempt(2, True, orders)]
    if story == PHANTOM:
        return [Attempt(1, False, orders)]
    raise ValueError(f"unknown story {story!r}; the stories are {STORIES}")


def msg_id(order: str, attempt: Attempt, ids: str) -> str:
    """The ``msg_id`` a producer gives the charge for ``order`` in ``attempt``."""
    if ids == DERIVED:
        return f"msg-{order}"
    if ids == FRESH:
        # A counter stands in for uuid4(): new on every attempt, and deterministic here.
        return f"msg-a{attempt.number}-{order}"
    raise ValueError(f"unknown id scheme {ids!r}; the schemes are {ID_SCHEMES}")


@dataclass
class LeakOutcome:
    """What a consumer with a dedup table charged, for one story, id scheme and reader."""

    story: str
    ids: str
    hides_aborted: bool
    delivered: list[str] = field(default_factory=list)
    charged: dict[str, int] = field(default_factory=dict)
    intended: dict[str, int] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        """True when every order was charged exactly as often as a committed transaction asked for."""
        return self.charged == self.intended

    def summary(self) -> str:
        """One phrase: right, or which orders were charged how often against how often intended."""
        if self.correct:
            return "right: " + ("each order charged once" if any(self.intended.values()) else "nothing charged")
        groups: dict[tuple[int, int], int] = {}
        for order, times in self.charged.items():
            if times != self.intended[order]:
                pair = (times, self.intended[order])
                groups[pair] = groups.get(pair, 0) + 1
        return "WRONG: " + ", ".join(f"{n} of {len(self.charged)} orders charged {times}x instead of {intended}x"
                                     for (times, intended), n in groups.items())


def consume(story: str, ids: str, *, hides_aborted: bool, orders: tuple[str, ...] = ORDERS) -> LeakOutcome:
    """Deliver ``story``'s records to a consumer that charges each ``msg_id`` once (a ``DedupLog``).

    ``hides_aborted=True`` is a reader on Apache Kafka (read_committed, zombies
    fenced); ``False`` is one on a broker whose read_committed shows aborted
    records, or a read_uncommitted reader.
    """
    attempts = attempts_of(story, orders)
    outcome = LeakOutcome(story, ids, hides_aborted,
                          charged=dict.fromkeys(orders, 0),
                          intended={o: int(any(a.committed and o in a.orders for a in attempts)) for o in orders})
    log = DedupLog()

    def charge(order: str) -> Callable[[], None]:
        def effect() -> None:
            outcome.charged[order] += 1
        return effect

    for attempt in attempts:
        if hides_aborted and not attempt.committed:
            continue
        for order in attempt.orders:
            key = msg_id(order, attempt, ids)
            outcome.delivered.append(key)
            log.process(key, charge(order))
    return outcome


@dataclass(repr=False)
class LeakComparison:
    """Every story and id scheme, on a reader that hides aborted records and on one that shows them."""

    outcomes: list[LeakOutcome]

    def __repr__(self) -> str:
        return self.as_text()

    def get(self, story: str, ids: str, *, hides_aborted: bool) -> LeakOutcome:
        """The outcome for one combination."""
        for outcome in self.outcomes:
            if (outcome.story, outcome.ids, outcome.hides_aborted) == (story, ids, hides_aborted):
                return outcome
        raise KeyError(f"no outcome for story {story!r}, ids {ids!r}, hides_aborted={hides_aborted}: "
                       f"the stories are {STORIES}, the id schemes {ID_SCHEMES}")

    def as_text(self) -> str:
        """A plain-text table: a row per story and id scheme, a column per reader."""
        lines = []
        for story in STORIES:
            for ids in ID_SCHEMES:
                lines.append(f"{story}, msg_id {ids}:")
                for hides in (True, False):
                    reader = "hides aborted (Apache Kafka)" if hides else "shows aborted (Tansu)"
                    lines.append(f"    {reader:<29} {self.get(story, ids, hides_aborted=hides).summary()}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for story in STORIES:
            for ids in ID_SCHEMES:
                cells = []
                for hides in (True, False):
                    outcome = self.get(story, ids, hides_aborted=hides)
                    colour = "#d4edda" if outcome.correct else "#f8d7da"
                    cells.append(f"<td style='text-align:left;background:{colour};color:#212529'>"
                                 f"{html.escape(outcome.summary())}</td>")
                rows.append(f"<tr><td style='text-align:left'>{html.escape(story)}</td>"
                            f"<td style='text-align:left'>{html.escape(ids)}</td>{''.join(cells)}</tr>")
        return ("<table><thead><tr><th style='text-align:left'>the producer's transactions</th>"
                "<th style='text-align:left'>msg_id</th>"
                "<th style='text-align:left'>reader hides aborted records (Apache Kafka)</th>"
                "<th style='text-align:left'>reader shows them (Tansu)</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")


def compare_leaks(orders: tuple[str, ...] = ORDERS) -> LeakComparison:
    """``consume`` for every story, id scheme and reader."""
    return LeakComparison([consume(story, ids, hides_aborted=hides, orders=orders)
                           for story in STORIES for ids in ID_SCHEMES for hides in (True, False)])
