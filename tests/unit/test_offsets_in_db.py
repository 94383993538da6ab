"""The offsets_in_db layer's settings and refusals, without a broker."""

from __future__ import annotations

import pytest

from effectively_once.payments.consumer_settings import NAMED_LAYER_SETS, OFFSETS_STEP, ConsumerSettings, resolve_layers
from effectively_once.protocol import HANDLED_LAYERS, LAYERS

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


@pytest.mark.parametrize("layers", [("offsets_in_db",), ("dedup_as_written",), ("offsets_in_db", "idempotency_key")])
def test_a_lone_layer_named_like_a_set_reads_back_as_itself(layers):
    argv = ConsumerSettings(**SETTINGS, layers=layers).to_argv()
    assert ConsumerSettings.from_argv(argv).layers == layers
