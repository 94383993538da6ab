"""The crash matrix (payments/matrix.py): real crashes on the real stack, against the package's EXPECTED_MATRIX.

Its pieces that need no stack are tested in tests/unit/test_matrix.py.
"""

from __future__ import annotations

import copy

import psycopg
import pytest

from effectively_once.payments.matrix import (
    CHARGED_TWICE,
    DID_NOT_RUN,
    PluggedStep,
    expected_outcomes,
    run_matrix,
)
from tests.integration.test_pipeline import step_that_forgets_the_key
from tests.unit.test_matrix import step_that_raises


def _existing(stack, names: list[str]) -> set[str]:
    with psycopg.connect(stack.postgres_dsn("postgres")) as conn:
        return {name for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                                 ([stack.database(n) for n in names],))}


@pytest.fixture(scope="module")
def small(stack):
    """Two crash points x three layer sets, run once for the module; the databases it made must be gone.

    It counts the databases this run made (another module's matrix may run beside it under xdist).
    """
    made: list[str] = []
    watched = copy.copy(stack)
    watched.create_database = lambda name, **kw: made.append(name) or stack.create_database(name, **kw)
    lines: list[str] = []
    matrix = run_matrix(watched, ["after_dedup_insert", "after_provider_call"],
                        ["both", "dedup_only", "dedup_as_written"], seed=1, progress=lines.append, run_prefix="tm",
                        api="charges")
    assert made and _existing(stack, made) == set(), "run_matrix must drop the databases it created"
    return matrix, lines


def test_the_matrix_says_what_happened_to_the_money(small):
    matrix, lines = small
    expected = expected_outcomes()
    assert matrix.outcomes() == {key: expected[key] for key in matrix.cells}, matrix.problems()
    assert len(lines) == 6 and lines[-1].startswith("6/6")
    assert matrix.holds("both") and not matrix.holds("dedup_only")


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


def test_the_matrix_renders_as_a_coloured_table(small):
    matrix, _ = small
    page = matrix._repr_html_()
    assert page.count("<tr>") == 1 + 2 and "#ffd8d3" in page and "#ffe7b3" in page and "#dafbe1" in page
    assert "charged twice" in page and "lost" in page and "dedup_as_written" in page
    assert repr(matrix).splitlines()[2].split() == ["after_provider_call", "charged", "once", "charged", "twice",
                                                     "charged", "once"]


def test_a_plugged_in_step_is_the_one_the_consumers_run(stack):
    """Without its key, the course's step double-charges after the provider call, and only there."""
    with PluggedStep(step_that_forgets_the_key) as step:
        matrix = run_matrix(stack, ["after_provider_call", "after_status_update"], ["both"], step=step.spec,
                            run_prefix="tk")
    assert matrix.cell("after_provider_call", "both").outcome == CHARGED_TWICE
    assert matrix.cell("after_status_update", "both").absorbed_by == "dedup"
    assert "step_that_forgets_the_key" in matrix._repr_html_()


def test_a_step_that_raises_is_reported_not_raised(stack):
    with PluggedStep(step_that_raises) as step:
        matrix = run_matrix(stack, ["before_dedup_insert"], ["both"], step=step.spec, run_prefix="tr")
    cell = matrix.cell("before_dedup_insert", "both")
    assert cell.outcome == DID_NOT_RUN and not cell.ok
    assert cell.how == "NotImplementedError: write the dedup insert first"
    assert "did not run" in cell.problem() and "before_dedup_insert" in cell.problem()


