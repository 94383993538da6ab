"""What the probe found, and how it reads: in a terminal, as JSON, and as an HTML table in a notebook.

Plain data and rendering only; the checks that fill it in are in ``broker_checks``.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any

IDEMPOTENT_PRODUCER = "idempotent_producer"
READ_COMMITTED = "read_committed_hides_aborted"
ZOMBIE_FENCED = "zombie_fenced"
STALE_GENERATION = "stale_generation_rejected"

TITLES = {
    IDEMPOTENT_PRODUCER: "idempotent producer (acks=all): a retried batch is stored once",
    READ_COMMITTED: "read_committed hides the records of an aborted transaction",
    ZOMBIE_FENCED: "a zombie producer is fenced: its open transaction is aborted",
    STALE_GENERATION: "a transactional offset commit from a stale group generation is rejected (KIP-447)",
}


@dataclass
class Check:
    """One guarantee, whether it held on this broker, and what was seen."""

    guarantee: str
    holds: bool
    evidence: str
    seen: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """A sentence naming the guarantee."""
        return TITLES.get(self.guarantee, self.guarantee)


@dataclass
class ProbeReport:
    """The outcome of ``probe``: one ``Check`` per guarantee, in the order of ``CHECKS``."""

    broker_flavor: str
    backend: str
    checks: list[Check]
    seconds: float = 0.0

    def __getitem__(self, guarantee: str) -> Check:
        for check in self.checks:
            if check.guarantee == guarantee:
                return check
        raise KeyError(f"no check named {guarantee!r}; the checks are {[c.guarantee for c in self.checks]}")

    @property
    def all_hold(self) -> bool:
        """True when every guarantee held."""
        return all(check.holds for check in self.checks)

    def holds(self) -> dict[str, bool]:
        """``{guarantee: holds}`` for every check."""
        return {check.guarantee: check.holds for check in self.checks}

    def as_dict(self) -> dict[str, Any]:
        """Plain data (what ``probe --json`` prints)."""
        return {
            "broker_flavor": self.broker_flavor,
            "backend": self.backend,
            "all_hold": self.all_hold,
            "seconds": round(self.seconds, 2),
            "checks": [dict(asdict(check), title=check.title) for check in self.checks],
        }

    def as_text(self) -> str:
        """A plain-text table for a terminal."""
        lines = [f"broker: {self.broker_flavor} ({self.backend} backend)"]
        for check in self.checks:
            lines.append(f"{'holds' if check.holds else 'FAILS':<6} {check.title}")
            lines.append(f"       {check.evidence}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for check in self.checks:
            colour = "#d4edda" if check.holds else "#f8d7da"
            verdict = "holds" if check.holds else "fails"
            rows.append(
                f"<tr style='background:{colour};color:#212529'>"
                f"<td style='text-align:left'>{html.escape(check.title)}</td>"
                f"<td style='text-align:center'><b>{verdict}</b></td>"
                f"<td style='text-align:left'>{html.escape(check.evidence)}</td></tr>")
        return (f"<p>Broker: <b>{html.escape(self.broker_flavor)}</b> ({html.escape(self.backend)} backend)</p>"
                "<table><thead><tr><th style='text-align:left'>guarantee</th><th>on this broker</th>"
                "<th style='text-align:left'>what a consumer saw</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")


@dataclass
class BrokerComparison:
    """The probe run on two brokers, one table: a row per guarantee, a column per broker."""

    reports: list[ProbeReport]

    def __getitem__(self, broker_flavor: str) -> ProbeReport:
        for report in self.reports:
            if report.broker_flavor == broker_flavor:
                return report
        raise KeyError(f"no report for {broker_flavor!r}; the brokers are {[r.broker_flavor for r in self.reports]}")

    def holds(self) -> dict[str, dict[str, bool]]:
        """``{broker_flavor: {guarantee: holds}}``."""
        return {report.broker_flavor: report.holds() for report in self.reports}

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(r.broker_flavor)} ({html.escape(r.backend)})</th>"
                       for r in self.reports)
        rows = []
        for check in self.reports[0].checks:
            cells = []
            for report in self.reports:
                mine = report[check.guarantee]
                colour = "#d4edda" if mine.holds else "#f8d7da"
                cells.append(f"<td style='text-align:left;background:{colour};color:#212529'>"
                             f"<b>{'holds' if mine.holds else 'fails'}</b>: {html.escape(mine.evidence)}</td>")
            rows.append(f"<tr><td style='text-align:left'>{html.escape(check.title)}</td>{''.join(cells)}</tr>")
        return (f"<table><thead><tr><th style='text-align:left'>guarantee</th>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")
