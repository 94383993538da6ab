"""The crash matrix (payments/matrix.py): real crashes on the real stack, and the pieces around them."""

from __future__ import annotations

import os

import psycopg
import pytest

from effectively_once.payments.lab import PaymentReport, Table
from effectively_once.payments.matrix import (
    CHARGED_ONCE,
    CHARGED_TWICE,
    DID_NOT_RUN,
    LOST,
    CrashMatrix,
    MatrixCell,
    PluggedStep,
    SideBySide,
    run_matrix,
    view,
)
from tests.test_pipeline import step_that_forgets_the_key


def step_that_raises(ctx, msg):
    """A step that was never finished."""
    raise NotImplementedError("write the dedup insert first")


def _matrix_databases(stack) -> set[str]:
    with psycopg.connect(stack.postgres_dsn("postgres")) as conn:
        return {name for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                 (f"{stack.namespace}_matrix_%",))}


@pytest.fixture(scope="module")
def small(stack):
    """Two crash points x three layer sets, run once for the module; the databases it used must be gone."""
    before = _matrix_databases(stack)
    lines: list[str] = []
    matrix = run_matrix(stack, ["after_dedup_insert", "after_provider_call"],
                        ["both", "dedup_only", "dedup_as_written"], seed=1, progress=lines.append, run_prefix="tm",
                        api="charges")
    assert _matrix_databases(stack) == before, "run_matrix must drop the databases it created"
    return matrix, lines


@pytest.mark.integration
def test_the_matrix_says_what_happened_to_the_money(small):
    matrix, lines = small
    assert matrix.outcomes() == {
        ("after_dedup_insert", "both"): CHARGED_ONCE,
        ("after_dedup_insert", "dedup_only"): CHARGED_ONCE,
        ("after_dedup_insert", "dedup_as_written"): LOST,
        ("after_provider_call", "both"): CHARGED_ONCE,
        ("after_provider_call", "dedup_only"): CHARGED_TWICE,
        ("after_provider_call", "dedup_as_written"): CHARGED_ONCE,
    }, matrix.problems()
    assert len(lines) == 6 and lines[-1].startswith("6/6")
    assert matrix.holds("both") and not matrix.holds("dedup_only")


@pytest.mark.integration
def test_each_cell_keeps_its_rows_and_names_the_absorbing_layer(small):
    matrix, _ = small
    lost = matrix.cell("after_dedup_insert", "dedup_as_written")
    assert lost.shop.rows == [("msg-tm02-00000", "pending", 1)] and len(lost.ledger) == 0
    assert lost.absorbed_by is None and "never charged" in lost.problem()
    twice = matrix.cell("after_provider_call", "dedup_only")
    # No key of ours: the SDK made up one for each call, so the provider saw two different requests.
    keys = [(r["msg_id"], r["idempotency_key"]) for r in twice.ledger]
    assert [m for m, _ in keys] == ["msg-tm04-00000"] * 2 and len({k for _, k in keys}) == 2, keys
    assert twice.how == "'pending' row charged again: a different key each time", twice.how
    assert twice.report.duplicated == ["msg-tm04-00000"]
    assert len(set(twice.ledger.column("charge_id"))) == 2, "two charges, each with its own id"
    assert matrix.cell("after_provider_call", "both").absorbed_by == "idempotency_key"
    assert matrix.cell("after_dedup_insert", "both").absorbed_by == "nothing needed"
    assert matrix.cell("after_dedup_insert", "both").shop.rows == [("msg-tm00-00000", "done", 2)]


@pytest.mark.integration
def test_the_matrix_renders_as_a_coloured_table(small):
    matrix, _ = small
    page = matrix._repr_html_()
    assert page.count("<tr>") == 1 + 2 and "#ffd8d3" in page and "#ffe7b3" in page and "#dafbe1" in page
    assert "charged twice" in page and "lost" in page and "dedup_as_written" in page
    assert repr(matrix).splitlines()[2].split() == ["after_provider_call", "charged", "once", "charged", "twice",
                                                     "charged", "once"]


@pytest.mark.integration
def test_a_plugged_in_step_is_the_one_the_consumers_run(stack):
    """Without its key, the course's step double-charges after the provider call, and only there."""
    with PluggedStep(step_that_forgets_the_key) as step:
        matrix = run_matrix(stack, ["after_provider_call", "after_status_update"], ["both"], step=step.spec,
                            run_prefix="tk")
    assert matrix.cell("after_provider_call", "both").outcome == CHARGED_TWICE
    assert matrix.cell("after_status_update", "both").absorbed_by == "dedup"
    assert "step_that_forgets_the_key" in matrix._repr_html_()


@pytest.mark.integration
def test_a_step_that_raises_is_reported_not_raised(stack):
    with PluggedStep(step_that_raises) as step:
        matrix = run_matrix(stack, ["before_dedup_insert"], ["both"], step=step.spec, run_prefix="tr")
    cell = matrix.cell("before_dedup_insert", "both")
    assert cell.outcome == DID_NOT_RUN and not cell.ok
    assert cell.how == "NotImplementedError: write the dedup insert first"
    assert "did not run" in cell.problem() and "before_dedup_insert" in cell.problem()


# -- without the stack -----------------------------------------------------------------------
def test_plugged_step_writes_a_module_and_cleans_up():
    before = os.environ.get("PYTHONPATH")
    step = PluggedStep(step_that_raises)
    module, function = step.spec.split(":")
    path = step.directory / f"{module}.py"
    assert function == "step_that_raises" and path.exists()
    assert "from effectively_once.payments.steps import Outcome" in path.read_text()
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(step.directory)
    step.close()
    assert not path.exists() and os.environ.get("PYTHONPATH") == before
    with pytest.raises(TypeError):
        PluggedStep(len)


def test_bad_names_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="unknown crash point"):
        run_matrix(None, ["after_lunch"], ["both"])
    with pytest.raises(ValueError, match="unknown layer"):
        run_matrix(None, ["after_provider_call"], ["dedupe"])
    with pytest.raises(ValueError, match="at least 1"):
        run_matrix(None, ["after_provider_call"], ["both"], messages=0)


def _report(duplicates=0, lost=0):
    return PaymentReport(messages=1, charges=1 + duplicates - lost, duplicate_charges=duplicates, lost_charges=lost,
                         dedup_hits=0, key_replays=0, dlq=0)


def test_cell_outcomes_follow_the_report_and_the_events():
    assert MatrixCell("after_status_update", "both", _report(), results=["skipped"], dedup_hits=1).how == \
        "row 'done': skipped"
    expired = MatrixCell("after_provider_call", "both", _report(duplicates=1), results=["charged"], dedup_hits=1,
                         keys_expired=True)
    assert expired.outcome == CHARGED_TWICE and expired.how == "'pending' row charged again: key expired"
    assert MatrixCell("after_dedup_insert", "none", _report()).absorbed_by == "nothing needed"
    assert MatrixCell("after_dedup_insert", "none", None, error="RuntimeError: x\nlog\nValueError: y").how == \
        "ValueError: y"
    matrix = CrashMatrix(("after_dedup_insert",), ("none",), {("after_dedup_insert", "none"): expired}, 1)
    with pytest.raises(KeyError, match="the crash points are after_dedup_insert"):
        matrix.cell("after_provider_call", "none")


def test_view_keeps_only_the_named_columns():
    table = Table("t", ["a", "b", "c"], [(1, 2, 3), (4, 5, 6)])
    assert view(table, "c", "a").rows == [(3, 1), (6, 4)] and view(table, title="u").title == "u"
    with pytest.raises(ValueError, match="no column"):
        view(table, "d")
    assert SideBySide(table, table)._repr_html_().count("<table>") == 2
