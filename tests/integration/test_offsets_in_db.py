"""The offsets_in_db layer (payments/offsets.py): offsets stored with the charge, on the real stack."""

from __future__ import annotations

import psycopg
import pytest

from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.matrix import CHARGED_ONCE, CHARGED_TWICE, KEY, NOTHING, OFFSETS, run_matrix
from effectively_once.payments.offsets import store_offsets, stored_offsets
from effectively_once.protocol import CRASH_POINTS


@pytest.fixture(scope="module")
def offsets_matrix(stack):
    """Every crash point against the offsets layer with and without the key, run once for the module."""
    return run_matrix(stack, CRASH_POINTS, ["offsets_in_db", "offsets_only"], seed=2, run_prefix="to")


def test_offsets_with_the_key_charge_once_at_every_crash_point(offsets_matrix):
    assert offsets_matrix.holds("offsets_in_db"), offsets_matrix.problems()
    absorbed = {p: c.absorbed_by for p, c in offsets_matrix.column("offsets_in_db").items()}
    assert absorbed == {"before_dedup_insert": NOTHING, "after_dedup_insert": NOTHING,
                        "after_provider_call": KEY, "after_status_update": OFFSETS}, absorbed


def test_offsets_without_the_key_charge_twice_after_the_provider_call(offsets_matrix):
    outcomes = {p: c.outcome for p, c in offsets_matrix.column("offsets_only").items()}
    assert outcomes == {"before_dedup_insert": CHARGED_ONCE, "after_dedup_insert": CHARGED_ONCE,
                        "after_provider_call": CHARGED_TWICE, "after_status_update": CHARGED_ONCE}, outcomes
    # The message whose transaction committed was never read again: no row of it in consumer_events.
    assert offsets_matrix.cell("after_status_update", "offsets_only").results == []


def test_the_consumer_starts_from_the_stored_offset_not_from_kafkas(stack):
    """Store an offset past the first records by hand: a new consumer must skip them, though Kafka has none."""
    with PaymentLab(stack, "offsets_in_db", partitions=1) as lab:
        lab.start_provider()
        ids = lab.produce(4, seed=3)
        with psycopg.connect(lab.shop_dsn, autocommit=True) as conn:
            store_offsets(conn, lab.group, lab.topic, {0: 2})
            store_offsets(conn, lab.group, lab.topic, {0: 1})  # a late writer cannot move it back
            assert stored_offsets(conn, lab.group, lab.topic) == {0: 2}
        lab.run_until_settled(60)
        charged = lab.ledger_rows().column("msg_id")
        assert sorted(charged) == sorted(ids[2:]), charged
        with psycopg.connect(lab.shop_dsn) as conn:
            assert stored_offsets(conn, lab.group, lab.topic) == {0: 4}
        assert lab.lag() == 0


