"""The offsets_in_db layer (payments/offsets.py): offsets stored with the charge, on the real stack."""

from __future__ import annotations

import psycopg
import pytest

from effectively_once.payments.lab import PaymentLab
from effectively_once.payments.matrix import CHARGED_ONCE, CHARGED_TWICE, KEY, NOTHING, OFFSETS, run_matrix
from effectively_once.payments.offsets import store_offsets, stored_offsets
from effectively_once.payments.settings import NAMED_LAYER_SETS, OFFSETS_STEP, ConsumerSettings, resolve_layers
from effectively_once.protocol import CRASH_POINTS, HANDLED_LAYERS, LAYERS

SETTINGS = dict(bootstrap="127.0.0.1:9092", topic="t", group="g", shop_dsn="postgresql://u@h/db",
                provider_url="http://127.0.0.1:8000")


def test_offsets_in_db_is_a_layer_and_two_named_sets():
    assert "offsets_in_db" in LAYERS and "offsets_in_db" in HANDLED_LAYERS
    assert resolve_layers("offsets_in_db") == ("offsets_in_db", "idempotency_key")
    assert resolve_layers("offsets_only") == ("offsets_in_db",)
    assert resolve_layers("offsets_in_db,idempotency_key") == NAMED_LAYER_SETS["offsets_in_db"]


@pytest.mark.parametrize("layers", ["offsets_in_db,dedup", "dedup_as_written,offsets_in_db,idempotency_key"])
def test_offsets_in_db_beside_a_dedup_table_is_refused(layers):
    with pytest.raises(ValueError, match=r"^layers: .*offsets_in_db.*pick one"):
        resolve_layers(layers)


def test_the_offsets_layer_picks_its_step_and_refuses_the_batch_step():
    assert ConsumerSettings(**SETTINGS, layers="offsets_in_db").step_spec == OFFSETS_STEP
    assert ConsumerSettings(**SETTINGS, layers="offsets_in_db", step="m:f").step_spec == "m:f"
    assert ConsumerSettings(**SETTINGS, layers="both").stores_offsets is False
    with pytest.raises(ValueError, match=r"^batch_dedup: .*offsets_in_db"):
        ConsumerSettings(**SETTINGS, layers="offsets_in_db", batch_dedup=True)
    argv = ConsumerSettings(**SETTINGS, layers="offsets_only").to_argv()
    assert ConsumerSettings.from_argv(argv).layers == ("offsets_in_db",)


@pytest.fixture(scope="module")
def offsets_matrix(stack):
    """Every crash point against the offsets layer with and without the key, run once for the module."""
    return run_matrix(stack, CRASH_POINTS, ["offsets_in_db", "offsets_only"], seed=2, run_prefix="to")


@pytest.mark.integration
def test_offsets_with_the_key_charge_once_at_every_crash_point(offsets_matrix):
    assert offsets_matrix.holds("offsets_in_db"), offsets_matrix.problems()
    absorbed = {p: c.absorbed_by for p, c in offsets_matrix.column("offsets_in_db").items()}
    assert absorbed == {"before_dedup_insert": NOTHING, "after_dedup_insert": NOTHING,
                        "after_provider_call": KEY, "after_status_update": OFFSETS}, absorbed


@pytest.mark.integration
def test_offsets_without_the_key_charge_twice_after_the_provider_call(offsets_matrix):
    outcomes = {p: c.outcome for p, c in offsets_matrix.column("offsets_only").items()}
    assert outcomes == {"before_dedup_insert": CHARGED_ONCE, "after_dedup_insert": CHARGED_ONCE,
                        "after_provider_call": CHARGED_TWICE, "after_status_update": CHARGED_ONCE}, outcomes
    # The message whose transaction committed was never read again: no row of it in consumer_events.
    assert offsets_matrix.cell("after_status_update", "offsets_only").results == []


@pytest.mark.integration
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


@pytest.mark.parametrize("layers", [("offsets_in_db",), ("dedup_as_written",), ("offsets_in_db", "idempotency_key")])
def test_a_lone_layer_named_like_a_set_reads_back_as_itself(layers):
    argv = ConsumerSettings(**SETTINGS, layers=layers).to_argv()
    assert ConsumerSettings.from_argv(argv).layers == layers
