"""The crash matrix: every crash point against every layer set, run live, as one coloured table.

    matrix = run_matrix(stack, CRASH_POINTS, LAYER_SETS, messages=3, api="charges")
    matrix                                            # HTML: what happened to the money, per cell
    matrix.cell("after_provider_call", "dedup_only")  # -> MatrixCell: outcome "charged twice"
    matrix.unexpected()                               # -> {}: every cell as expected_outcome() says

Each cell is one ``run_scenario``: produce a few charges, SIGKILL the consumer
at the crash point on the first message it handles, restart it, let it settle,
count the ledger. One provider and one shop database serve every cell (each
cell has its own topic, group and msg_id prefix, so nothing mixes), and the
cells run a few at a time: they mostly wait for processes to start and for
consumer groups to form. Both databases are dropped when the matrix is done;
each cell keeps a small copy of its rows to look at.

A ``step`` (``module:function``) plugs another per-message function into every
consumer of the matrix: that is how an exercise checks a step written by hand.
"""

from __future__ import annotations

import atexit
import html
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import psycopg

from effectively_once import runs
from effectively_once.db import columns
from effectively_once.payments.children import ProviderProcess
from effectively_once.payments.consumer_settings import APIS, LAYER_SETS, NAMED_LAYER_SETS, resolve_layers
from effectively_once.payments.lab import run_scenario
from effectively_once.payments.lab_reports import PaymentReport, Table, layer_set_name
from effectively_once.payments.plugged import step_module_source
from effectively_once.payments.producer import charge_records
from effectively_once.protocol import ALL_CRASH_POINTS, CRASH_POINTS, INTENT_CRASH_POINTS, CrashPoint, Result, plural

if TYPE_CHECKING:
    from effectively_once.stack import Stack

__all__ = ["ABSORBERS", "CHARGED_ONCE", "CHARGED_TWICE", "EXPECTED_MATRIX", "INTENT", "CrashMatrix", "DID_NOT_RUN",
           "ExpectedCell", "LOST", "MatrixCell", "OFFSETS", "PluggedStep", "SideBySide", "expected_outcome",
           "expected_outcomes", "run_matrix", "view"]

CHARGED_ONCE, CHARGED_TWICE, LOST, DID_NOT_RUN = "charged once", "charged twice", "lost", "did not run"
DEDUP, KEY, NOTHING = "dedup", "idempotency_key", "nothing needed"
ABSORBERS = (DEDUP, KEY, NOTHING)
# The offsets_in_db layer absorbs without a trace: the stored offset keeps the message from coming back.
OFFSETS = "offsets_in_db"
# On the PaymentIntent path, the stored id absorbs too: the PaymentIntent, retrieved by id, had succeeded.
INTENT = "payment_intent"


def expected_outcome(api: str, crash_at: CrashPoint, layers: str, *, keys_expired: bool = False) -> str:
    """What one cell of the crash matrix must end with: the course's single statement of the expected matrix.

    ``api`` is the default step's path (``payment_intents`` or ``charges``),
    ``layers`` a named layer set, ``keys_expired`` whether the provider forgot
    its keys between the crash and the restart. The crash hits the first
    message; the restart gets it again. The rules, in order:

    1. the recipe as written (``dedup_as_written``) skips any row it finds: a
       crash after the row and before the money moved loses the charge;
    2. nothing had moved before the crash: charging now is the first charge;
    3. the row (or the offset stored with the charge) says 'done': skipped;
    4. the provider still has the key: it replays the first answer;
    5. on the PaymentIntent path, a dedup row holds the PaymentIntent's id:
       confirming it again is refused, and the retrieve shows it succeeded;
    6. otherwise the money moves a second time.
    """
    members = set(NAMED_LAYER_SETS[layers])
    points = INTENT_CRASH_POINTS if api == "payment_intents" else CRASH_POINTS
    if crash_at not in points:
        raise ValueError(f"the {api} path has no crash point {crash_at!r}; its points are {', '.join(points)}")
    moved = crash_at in ("after_provider_call", "after_status_update")
    done = crash_at == "after_status_update"
    if "dedup_as_written" in members and crash_at != "before_dedup_insert":
        return CHARGED_ONCE if moved else LOST
    if not moved:
        return CHARGED_ONCE
    if done and ("dedup" in members or "dedup_as_written" in members or "offsets_in_db" in members):
        return CHARGED_ONCE
    if "idempotency_key" in members and not keys_expired:
        return CHARGED_ONCE
    if api == "payment_intents" and "dedup" in members:
        return CHARGED_ONCE
    return CHARGED_TWICE


@dataclass(frozen=True)
class ExpectedCell:
    """What one crash on the first message does once the restarted consumer settles, counted in the ledger.

    Only that message is ever handled twice: the crash comes on the first record
    the consumer handles, so nothing before it waits for an offset commit.
    """

    duplicate_charges: int = 0
    lost_charges: int = 0
    dedup_hits: int = 0
    key_replays: int = 0

    @property
    def outcome(self) -> str:
        """``charged twice``, ``lost`` or ``charged once``, as ``MatrixCell.outcome`` names a cell."""
        return CHARGED_TWICE if self.duplicate_charges else LOST if self.lost_charges else CHARGED_ONCE


_OK = ExpectedCell()
# What each cell of the one-shot Charges path's crash matrix counts (api="charges": every crash point
# against every layer set of the course), for the tests that count the ledger. The outcome of each cell
# is expected_outcome's; a unit test holds the two together.
EXPECTED_MATRIX: dict[tuple[str, str], ExpectedCell] = {
    ("before_dedup_insert", "both"): _OK,
    ("before_dedup_insert", "dedup_only"): _OK,
    ("before_dedup_insert", "idempotency_key_only"): _OK,
    ("before_dedup_insert", "none"): _OK,
    ("before_dedup_insert", "dedup_as_written"): _OK,
    # The row is 'pending' and no money moved yet: the recovery rule retries it...
    ("after_dedup_insert", "both"): ExpectedCell(dedup_hits=1),
    ("after_dedup_insert", "dedup_only"): ExpectedCell(dedup_hits=1),
    ("after_dedup_insert", "idempotency_key_only"): _OK,
    ("after_dedup_insert", "none"): _OK,
    # ...while the recipe's literal "0 rows: skip" loses the charge.
    ("after_dedup_insert", "dedup_as_written"): ExpectedCell(lost_charges=1, dedup_hits=1),
    # The money moved but the row still says 'pending': only the key stops a second charge.
    ("after_provider_call", "both"): ExpectedCell(dedup_hits=1, key_replays=1),
    ("after_provider_call", "dedup_only"): ExpectedCell(duplicate_charges=1, dedup_hits=1),
    ("after_provider_call", "idempotency_key_only"): ExpectedCell(key_replays=1),
    ("after_provider_call", "none"): ExpectedCell(duplicate_charges=1),
    ("after_provider_call", "dedup_as_written"): ExpectedCell(dedup_hits=1),
    # 'done' but the offset was not committed: the redelivery is a dedup hit, or a replay, or a duplicate.
    ("after_status_update", "both"): ExpectedCell(dedup_hits=1),
    ("after_status_update", "dedup_only"): ExpectedCell(dedup_hits=1),
    ("after_status_update", "idempotency_key_only"): ExpectedCell(key_replays=1),
    ("after_status_update", "none"): ExpectedCell(duplicate_charges=1),
    ("after_status_update", "dedup_as_written"): ExpectedCell(dedup_hits=1),
}


def expected_outcomes(api: str = "charges") -> dict[tuple[str, str], str]:
    """The expected outcome of every cell of ``api``'s crash matrix, as ``CrashMatrix.outcomes()`` reports a run."""
    points = INTENT_CRASH_POINTS if api == "payment_intents" else CRASH_POINTS
    return {(point, layers): expected_outcome(api, point, layers) for point in points for layers in LAYER_SETS}


_COLOURS = {CHARGED_ONCE: "#dafbe1", CHARGED_TWICE: "#ffd8d3", LOST: "#ffe7b3", DID_NOT_RUN: "#eaeef2"}
_LAYER_NOTES = {
    "both": "dedup table + Idempotency-Key",
    "dedup_only": "dedup table, no key",
    "idempotency_key_only": "key, no dedup table",
    "none": "neither",
    "dedup_as_written": "skip any existing row + key",
    "offsets_in_db": "offsets in the shop's DB + key",
    "offsets_only": "offsets in the shop's DB, no key",
}


@dataclass
class MatrixCell:
    """One crash point x layer set: what the restart did, and what happened to the money."""

    crash_at: CrashPoint
    layers: str
    report: PaymentReport | None = None
    results: list[Result] = field(default_factory=list)   # the consumer_events results, e.g. ['replayed', 'charged']
    dedup_hits: int = 0
    pending: int = 0                                     # dedup rows still 'pending' once everything settled
    shop: Table | None = None                            # msg_id, status, attempts
    ledger: Table | None = None                          # msg_id, charge_id, amount, idempotency_key: one row
                                                         # per time money moved
    error: str | None = None
    keys_expired: bool = False                           # the provider forgot its keys between crash and restart
    never_redelivered: int = 0                           # messages charged whose handling no consumer recorded

    @property
    def outcome(self) -> str:
        """``charged once``, ``charged twice``, ``lost``, or ``did not run`` (the scenario itself failed)."""
        if self.error is not None or self.report is None:
            return DID_NOT_RUN
        if self.report.duplicate_charges:
            return CHARGED_TWICE
        if self.report.lost_charges:
            return LOST
        return CHARGED_ONCE

    @property
    def ok(self) -> bool:
        """True when every message was charged exactly once."""
        return self.outcome == CHARGED_ONCE

    @property
    def absorbed_by(self) -> str | None:
        """Which layer absorbed the redelivered message: ``dedup`` (skipped, provider not called),
        ``idempotency_key`` (the provider replayed its first answer), ``payment_intent`` (the PaymentIntent
        whose id the row stored, retrieved, had succeeded), ``offsets_in_db`` (the offset stored with the
        charge kept the message from coming back at all) or ``nothing needed`` (no money had moved before
        the crash, so charging it was right). None when the money went wrong."""
        if not self.ok:
            return None
        if "replayed" in self.results:
            return KEY
        if "recovered" in self.results:
            return INTENT
        if "skipped" in self.results:
            return DEDUP
        if self.never_redelivered:
            return OFFSETS
        return NOTHING

    @property
    def how(self) -> str:
        """A few words on how the redelivered message was handled."""
        if self.outcome == DID_NOT_RUN:
            return _last_line(self.error or "no report")
        if self.outcome == LOST:
            return "'pending' row skipped: never charged" if "skipped" in self.results else "never charged"
        if self.outcome == CHARGED_TWICE:
            why = self._why_charged_again()
            return f"'pending' row charged again: {why}" if self.dedup_hits else f"redelivered: {why}, charged again"
        if self.absorbed_by == KEY:
            return "the key replayed the first charge"
        if self.absorbed_by == INTENT:
            return "the stored PaymentIntent had succeeded"
        if self.absorbed_by == DEDUP:
            return "skipped a 'pending' row (row stays)" if self.pending else "row 'done': skipped"
        if self.absorbed_by == OFFSETS:
            return "offset stored with the charge: not read again"
        if self.dedup_hits:
            return "'pending' row retried: first charge"
        return "nothing had moved: first charge"

    def _why_charged_again(self) -> str:
        # What the provider saw on the duplicated messages' charges, from the ledger's keys: none, a new
        # one each time (a key that is not derived from the message), or the same one it had forgotten.
        # Without the ledger's rows, the layer set says whether there was a key at all.
        has_key = "idempotency_key" in NAMED_LAYER_SETS.get(self.layers, ())
        if self.ledger is not None:
            duplicated = set(self.report.duplicated if self.report else ())
            keys = [r["idempotency_key"] for r in self.ledger if r["msg_id"] in duplicated]
            if keys and None not in keys and len(set(keys)) > 1:
                return "a different key each time"
            has_key = bool(keys) and None not in keys
        if not has_key:
            return "no key"
        return "key expired" if self.keys_expired else "the same key, charged again"

    def problem(self) -> str:
        """One sentence on what went wrong (empty when the money came out right)."""
        if self.ok:
            return ""
        where = f"crash at {self.crash_at} with layers {self.layers}"
        if self.outcome == DID_NOT_RUN:
            first = (self.error or "").strip().splitlines()[0] if self.error else "no report"
            last = _last_line(self.error or "")
            return f"{where}: the scenario did not run: {first}" + (f" ... {last}" if last != first else "")
        r = self.report
        if r is None:
            return f"{where}: no report"
        if self.outcome == CHARGED_TWICE:
            return (f"{where}: {plural(r.duplicate_charges, 'message')} charged twice ({', '.join(r.duplicated)}): "
                    f"{self.how}")
        return f"{where}: {plural(r.lost_charges, 'message')} never charged ({', '.join(r.lost)}): {self.how}"

    def __repr__(self) -> str:
        return f"<MatrixCell {self.crash_at} x {self.layers}: {self.outcome} ({self.how})>"


@dataclass
class CrashMatrix:
    """Every cell of a crash matrix, with the table a notebook shows."""

    crash_points: tuple[CrashPoint, ...]
    layer_sets: tuple[str, ...]
    cells: dict[tuple[CrashPoint, str], MatrixCell]
    messages: int
    seconds: float = 0.0
    step: str | None = None
    keys_expired: bool = False
    api: str = "payment_intents"

    def cell(self, crash_at: CrashPoint, layers: str) -> MatrixCell:
        """The cell of one crash point and one layer set (by name, e.g. ``dedup_only``)."""
        try:
            return self.cells[(crash_at, layers)]
        except KeyError:
            raise KeyError(f"no cell ({crash_at!r}, {layers!r}): the crash points are {', '.join(self.crash_points)} "
                           f"and the layer sets {', '.join(self.layer_sets)}") from None

    def row(self, crash_at: CrashPoint) -> dict[str, MatrixCell]:
        """The cells of one crash point, by layer set."""
        return {layers: self.cell(crash_at, layers) for layers in self.layer_sets}

    def column(self, layers: str) -> dict[str, MatrixCell]:
        """The cells of one layer set, by crash point."""
        return {point: self.cell(point, layers) for point in self.crash_points}

    def holds(self, layers: str) -> bool:
        """True when a layer set charged every message exactly once at every crash point."""
        return all(c.ok for c in self.column(layers).values())

    def outcomes(self) -> dict[tuple[str, str], str]:
        """Every cell's outcome, as plain data."""
        return {key: c.outcome for key, c in self.cells.items()}

    def problems(self) -> list[str]:
        """One sentence for each cell where the money went wrong."""
        return [c.problem() for c in self.cells.values() if not c.ok]

    def expected(self) -> dict[tuple[str, str], str]:
        """Every cell's expected outcome (``expected_outcome``), as plain data."""
        return {(point, layers): expected_outcome(self.api, point, layers, keys_expired=self.keys_expired)
                for point, layers in self.cells}

    def unexpected(self) -> dict[tuple[str, str], str]:
        """The cells whose outcome is not the expected one, with what each one ended with (empty: as expected)."""
        expected = self.expected()
        return {key: got for key, got in self.outcomes().items() if got != expected[key]}

    def _repr_html_(self) -> str:
        head = "".join(
            f"<th style='text-align:center'><code>{html.escape(s)}</code><br>"
            f"<small>{html.escape(_LAYER_NOTES.get(s, ''))}</small></th>" for s in self.layer_sets)
        rows = []
        for point in self.crash_points:
            tds = []
            for layers in self.layer_sets:
                c = self.cell(point, layers)
                tds.append(f"<td style='background:{_COLOURS[c.outcome]};color:#1f2328;text-align:center;"
                           f"padding:4px 8px'><b>{html.escape(c.outcome)}</b><br>"
                           f"<small>{html.escape(_shorten(c.how))}</small></td>")
            rows.append(f"<tr><th style='text-align:left'><code>{html.escape(point)}</code></th>{''.join(tds)}</tr>")
        step = (f", your step <code>{html.escape(self.step.split(':')[-1])}</code>" if self.step else
                f", on the {'PaymentIntent' if self.api == 'payment_intents' else 'one-shot Charges'} path")
        late = ", the provider's keys expired before it" if self.keys_expired else ""
        caption = (f"<caption style='text-align:left'><b>crash point x layers</b>: {self.messages} "
                   f"charge{'s' if self.messages != 1 else ''} per cell, SIGKILL on the "
                   f"{'first one' if self.messages != 1 else 'charge'}, then a restart{late}{step}</caption>")
        return (f"<table>{caption}<thead><tr><th>crash at</th>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")

    def __repr__(self) -> str:
        width = max(len(o) for o in (CHARGED_ONCE, CHARGED_TWICE, LOST, DID_NOT_RUN, *self.layer_sets)) + 2
        lines = ["crash at".ljust(22) + "".join(s.ljust(width) for s in self.layer_sets)]
        for point in self.crash_points:
            lines.append(point.ljust(22) + "".join(self.cell(point, s).outcome.ljust(width)
                                                   for s in self.layer_sets))
        return "\n".join(line.rstrip() for line in lines)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def view(table: Table, *columns: str, title: str | None = None) -> Table:
    """The same rows with only ``columns`` (all when none are named), under ``title`` if one is given:
    a table narrow enough to read without scrolling."""
    columns = columns or tuple(table.columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{table.title} has no column(s) {missing}; it has {', '.join(table.columns)}")
    index = [table.columns.index(c) for c in columns]
    return Table(title or table.title, list(columns), [tuple(row[i] for i in index) for row in table.rows])


class SideBySide:
    """Tables (anything with ``_repr_html_``) shown next to each other in a notebook."""

    def __init__(self, *items: Any) -> None:
        self.items = items

    def _repr_html_(self) -> str:
        parts = "".join(f"<div>{item._repr_html_()}</div>" for item in self.items)
        return f"<div style='display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap'>{parts}</div>"

    def __repr__(self) -> str:
        return "\n\n".join(repr(item) for item in self.items)


def _msg_ids(messages: int, seed: int, run_id: str) -> list[str]:
    return [dict(headers)["msg_id"].decode() for _, _, headers in charge_records(messages, seed=seed, prefix=run_id)]


def _read_cell(cell: MatrixCell, ids: list[str], shop_dsn: str, provider_dsn: str) -> None:
    """Copy the rows of one finished scenario into its cell (the databases are dropped afterwards)."""
    with psycopg.connect(shop_dsn) as conn:
        events = conn.execute("SELECT result, dedup_hit, msg_id FROM consumer_events WHERE msg_id = ANY(%s)"
                              " ORDER BY id", (ids,)).fetchall()
        cur = conn.execute("SELECT msg_id, status, attempts FROM charges WHERE msg_id = ANY(%s) ORDER BY msg_id",
                           (ids,))
        cell.shop = Table("shop: charges", columns(cur), cur.fetchall())
    with psycopg.connect(provider_dsn) as conn:
        cur = conn.execute("SELECT msg_id, charge_id, amount, idempotency_key FROM ledger WHERE msg_id = ANY(%s)"
                           " ORDER BY msg_id, created_at", (ids,))
        cell.ledger = Table("provider: ledger", columns(cur), cur.fetchall())
    cell.results = [result for result, _, _ in events]
    cell.dedup_hits = sum(1 for _, hit, _ in events if hit)
    recorded = {msg_id for _, _, msg_id in events}
    cell.never_redelivered = len(set(cell.ledger.column("msg_id")) - recorded)
    cell.pending = sum(1 for _, status, _ in cell.shop.rows if status == "pending")


def run_matrix(stack: Stack, crash_points: Sequence[str] | None = None,
               layer_sets: Iterable[str] | dict[str, Any] = tuple(LAYER_SETS), messages: int = 1, *, seed: int = 0,
               step: str | None = None, expire_keys: bool = False, workers: int = 4, run_prefix: str = "mx",
               timeout: float = 90.0, progress: Callable[[str], None] | None = None,
               api: str = "payment_intents") -> CrashMatrix:
    """Run every crash point against every layer set (by name) and return the ``CrashMatrix``.

    ``api`` is the path of the consumers' default step: ``payment_intents``
    (crash points ``INTENT_CRASH_POINTS`` by default) or ``charges``, the
    one-shot call (``CRASH_POINTS``).
    ``messages`` charges per cell (the crash hits the first one the consumer
    handles; with one, the rows of every cell are the same from run to run);
    ``step`` (``module:function``) replaces the consumer's per-message
    function; ``expire_keys=True`` ages the provider's keys past their TTL
    between each crash and its restart (a day goes by); ``workers`` cells run
    at once; ``run_prefix`` starts each cell's run id (its msg_ids are
    ``msg-<run_prefix>NN-00000`` ...); ``progress`` gets one line per
    finished cell. A cell whose scenario fails (a step that raises, a consumer
    that never reaches its crash point) is recorded as ``did not run`` with
    the reason, so one bad cell does not hide the others.
    """
    if api not in APIS:
        raise ValueError(f"api must be one of {', '.join(APIS)}, got {api!r}")
    chosen = tuple(crash_points if crash_points is not None else
                   INTENT_CRASH_POINTS if api == "payment_intents" else CRASH_POINTS)
    unknown = [p for p in chosen if p not in ALL_CRASH_POINTS]
    if unknown:
        raise ValueError(f"unknown crash point(s) {unknown}: use {', '.join(ALL_CRASH_POINTS)}")
    points = cast("tuple[CrashPoint, ...]", chosen)  # each one checked above
    names = tuple(layer_sets)
    for name in names:
        resolve_layers(name)  # a clear error for a misspelt layer set, before anything starts
    names = tuple(dict.fromkeys(n if n in NAMED_LAYER_SETS else layer_set_name(resolve_layers(n)) for n in names))
    if messages < 1:
        raise ValueError("messages must be at least 1: the crash needs a message to crash on")

    from effectively_once.stack import new_run_id

    started = time.monotonic()
    token = new_run_id()
    provider_db, shop_db = f"matrix_provider_{token}", f"matrix_shop_{token}"
    provider_dsn = stack.create_database(provider_db)
    shop_dsn = stack.create_database(shop_db)
    jobs = [(point, layers, f"{run_prefix}{i:02d}") for i, (point, layers) in
            enumerate((p, s) for p in points for s in names)]
    cells: dict[tuple[CrashPoint, str], MatrixCell] = {}
    lock = threading.Lock()
    try:
        with ProviderProcess(provider_dsn) as provider:
            def run_one(job: tuple[CrashPoint, str, str]) -> MatrixCell:
                point, layers, run_id = job
                cell = MatrixCell(point, layers, keys_expired=expire_keys)
                try:
                    cell.report = run_scenario(
                        stack, point, layers, messages, seed=seed, provider=provider, shop_dsn=shop_dsn,
                        run_id=run_id, expire_keys=expire_keys, exit_when_idle=0.5, timeout=timeout,
                        consumer_options={"step": step, "api": api})
                except Exception as exc:  # recorded in the cell: the table says which scenario failed and why
                    cell.error = f"{type(exc).__name__}: {exc}"
                _read_cell(cell, _msg_ids(messages, seed, run_id), shop_dsn, provider.dsn)
                with lock:
                    cells[(point, layers)] = cell
                    done = len(cells)
                if progress:
                    progress(f"{done}/{len(jobs)} crash at {point:<20} layers {layers:<21} {cell.outcome}")
                return cell

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                list(pool.map(run_one, jobs))
    finally:
        stack.drop_database(provider_db)
        stack.drop_database(shop_db)
    ordered = {(p, s): cells[(p, s)] for p in points for s in names}
    return CrashMatrix(points, names, ordered, messages, time.monotonic() - started, step, expire_keys, api)


# -- a step written in a notebook, plugged into the real consumer ----------------------------
STEP_HEADER = '''"""A per-message step written by hand, plugged into the consumer with --step."""
from effectively_once.payments.messages import ChargeMessage, idempotency_key_for
from effectively_once.payments.steps import Outcome

'''


class PluggedStep:
    """A step function written to a module that consumer processes import (``--step module:function``).

        with PluggedStep(charge_once) as step:
            run_matrix(stack, CRASH_POINTS, ["both"], step=step.spec)

    The module holds the function as written (a notebook cell's, too) and
    everything it uses from its notebook or file, so that it runs in the
    consumer as it ran in the kernel: the modules and names it imported (in
    its own cell or an earlier one), the functions it calls that are defined
    beside it, and the plain values it reads (``payments.plugged`` says how).
    A header imports ``ChargeMessage``, ``idempotency_key_for`` and
    ``Outcome`` first. The file lives in a temporary directory, put on
    ``PYTHONPATH`` for the child processes started while the step is plugged
    in; ``close()`` (or leaving the ``with`` block, or interpreter exit)
    removes both.
    """

    def __init__(self, function: Callable) -> None:
        if not callable(function) or not hasattr(function, "__code__"):
            raise TypeError(f"{function!r} is not a function defined with def")
        text = STEP_HEADER + step_module_source(function)
        compile(text, f"<step {function.__name__}>", "exec")  # a syntax error here, not in a child process
        self.directory = runs.temp_dir("eo-step-")
        self.module = f"plugged_step_{self.directory.name.replace('-', '_').lower()}"
        (self.directory / f"{self.module}.py").write_text(text)
        self.spec = f"{self.module}:{function.__name__}"
        self._previous = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.directory), self._previous) if p)
        self._closed = False
        atexit.register(self.close)

    def close(self) -> None:
        """Take the directory off ``PYTHONPATH`` and delete the module file."""
        if self._closed:
            return
        self._closed = True
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(self.directory)]
        if parts:
            os.environ["PYTHONPATH"] = os.pathsep.join(parts)
        else:
            os.environ.pop("PYTHONPATH", None)
        runs.remove_dir(self.directory)
        atexit.unregister(self.close)

    def __enter__(self) -> PluggedStep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PluggedStep {self.spec}{' (closed)' if self._closed else ''}>"
