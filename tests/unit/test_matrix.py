"""The crash matrix's pieces without a stack: plugged steps, refusals, cell outcomes, views."""

from __future__ import annotations

import os

import pytest

from effectively_once.payments.lab import LAYER_SETS, PaymentReport, Table
from effectively_once.payments.matrix import (
    CHARGED_TWICE,
    EXPECTED_MATRIX,
    CrashMatrix,
    MatrixCell,
    PluggedStep,
    SideBySide,
    run_matrix,
    view,
)
from effectively_once.protocol import CRASH_POINTS


def step_that_raises(ctx, msg):
    """A step that was never finished."""
    raise NotImplementedError("write the dedup insert first")


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


def test_the_expected_matrix_covers_every_crash_point_and_layer_set():
    """Notebook 04 and the tests assert against EXPECTED_MATRIX: it must have a cell for every pair."""
    assert {p for p, _ in EXPECTED_MATRIX} == set(CRASH_POINTS)
    assert {layers for _, layers in EXPECTED_MATRIX} == set(LAYER_SETS)
    assert len(EXPECTED_MATRIX) == len(CRASH_POINTS) * len(LAYER_SETS)


def test_unexpected_names_the_cells_that_differ_from_the_expected_matrix():
    key = ("after_provider_call", "both")
    twice = MatrixCell(*key, _report(duplicates=1), results=["charged"], dedup_hits=1)
    once = MatrixCell(*key, _report(), results=["replayed"], dedup_hits=1)
    assert CrashMatrix(key[:1], key[1:], {key: twice}, 1).unexpected() == {key: CHARGED_TWICE}
    assert CrashMatrix(key[:1], key[1:], {key: once}, 1).unexpected() == {}


def test_the_counted_matrix_ends_as_expected_outcome_says():
    """EXPECTED_MATRIX counts the Charges path's cells; what each ends with is expected_outcome's, stated once."""
    from effectively_once.payments.matrix import expected_outcome, expected_outcomes

    assert {key: cell.outcome for key, cell in EXPECTED_MATRIX.items()} == {
        (point, layers): expected_outcome("charges", point, layers) for point, layers in EXPECTED_MATRIX}
    assert expected_outcomes() == {key: cell.outcome for key, cell in EXPECTED_MATRIX.items()}
