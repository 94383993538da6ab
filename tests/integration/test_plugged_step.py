"""A step written in a notebook runs in the consumer process as written: its imports, helpers and constants
go with it (payments/plugged.py), and a key made fresh on each attempt is called "a different key"."""

from __future__ import annotations

import pytest

from effectively_once.payments.exercises import check_charge_step
from effectively_once.payments.matrix import CHARGED_TWICE, PluggedStep, run_matrix
from tests.unit.test_plugged_step import _CELLS, SOLVED_WITH_AN_IMPORT, kernel, notebook_cell  # noqa: F401

# The same step with a fresh key per attempt: every attempt is a new charge to the provider.
RANDOM_KEY = SOLVED_WITH_AN_IMPORT.replace("str(uuid.uuid5(uuid.NAMESPACE_URL, msg.msg_id))", "uuid.uuid4().hex")


def test_a_fresh_key_per_attempt_is_called_a_different_key(stack):
    ns = notebook_cell(RANDOM_KEY, kernel())
    with PluggedStep(ns["charge_once"]) as step:
        matrix = run_matrix(stack, ["after_provider_call"], ["both"], messages=2, seed=4, step=step.spec,
                            run_prefix="rk")
    cell = matrix.cell("after_provider_call", "both")
    assert cell.outcome == CHARGED_TWICE, cell
    assert cell.how == "'pending' row charged again: a different key each time", cell.how
    keys = cell.ledger.column("idempotency_key")
    assert len(keys) == 3 and len(set(keys)) == 3, keys
    with pytest.raises(AssertionError, match="a different key each time. Hint: .*the same Idempotency-Key"):
        check_charge_step(matrix)
