"""``ConsumerSettings``: one declaration of what a consumer process is told, checked in the parent.

Unit tests (no services): the command line round-trips, bad values are
refused with the field's name, and a layer conflict is refused before any
process or topic exists.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import sys

import pytest

from effectively_once.payments.consumer_settings import (
    DEFAULT_BATCH_STEP,
    DEFAULT_STEP,
    LAYER_SETS,
    ConsumerSettings,
    build_parser,
    resolve_layers,
)
from effectively_once.protocol import CRASH_POINTS

REQUIRED = dict(bootstrap="127.0.0.1:9092", topic="payments.charges.t1", group="payments.g1",
                shop_dsn="postgresql://postgres@127.0.0.1:5432/shop", provider_url="http://127.0.0.1:8000")


def settings(**changes) -> ConsumerSettings:
    return ConsumerSettings(**{**REQUIRED, **changes})


def test_the_command_line_gives_the_same_settings_back():
    original = settings(api_key="sk_other", layers="dedup_as_written", step="my_steps:charge_once",
                        batch_dedup=True, crash_at="after_status_update", crash_on=3, exit_when_idle=0.5,
                        batch_size=7, poll_timeout=0.25, max_retries=0,
                        consumer_config={"session.timeout.ms": 1000, "group.protocol": "consumer"},
                        metrics_port=0, metrics_window=5.0, spans_file="/tmp/spans.jsonl")
    argv = original.to_argv()
    assert ConsumerSettings.from_argv(argv) == original
    assert "--layers=dedup_as_written,idempotency_key" in argv
    assert "--batch-dedup" in argv and argv.count("--batch-dedup") == 1


def test_round_trip_over_many_combinations():
    """Property-style: every crash point x every layer set x a seeded sample of the other settings."""
    rng = random.Random(10)
    checked = 0
    for crash_at, layer_set in itertools.product((None, *CRASH_POINTS), LAYER_SETS):
        for _ in range(4):
            original = settings(
                layers=layer_set, crash_at=crash_at, crash_on=rng.randint(1, 20),
                batch_dedup=rng.random() < 0.5, step=rng.choice([None, "pkg.mod:fn", "a:b"]),
                exit_when_idle=rng.choice([None, 0.0, 1.0, 2.5]), batch_size=rng.randint(1, 500),
                poll_timeout=rng.choice([0.05, 0.1, 1.0]), max_retries=rng.randint(0, 9),
                consumer_config=rng.choice([{}, {"session.timeout.ms": rng.randint(1000, 9000)}]),
                metrics_port=rng.choice([None, 0, rng.randint(1024, 65535)]),
                metrics_window=rng.choice([1.0, 30.0, 60.5]), spans_file=rng.choice([None, "/tmp/x y/spans.jsonl"]),
                api_key=rng.choice(["sk_test_effectively_once", "sk_wrong", "sk with space", "-sk-dash"]))
            back = ConsumerSettings.from_argv(original.to_argv())
            assert back == original, (original, back)
            assert back.to_argv() == original.to_argv()
            checked += 1
    assert checked == (len(CRASH_POINTS) + 1) * len(LAYER_SETS) * 4


def test_the_parser_has_one_option_per_field():
    options = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert options == set(ConsumerSettings.names())


def test_the_default_step_follows_batch_dedup():
    assert settings().step_spec == DEFAULT_STEP
    assert settings(batch_dedup=True).step_spec == DEFAULT_BATCH_STEP
    assert settings(batch_dedup=True, step="m:f").step_spec == "m:f"


@pytest.mark.parametrize("layers", [("dedup", "dedup_as_written"), "dedup,dedup_as_written",
                                    ["dedup_as_written", "idempotency_key", "dedup"]])
def test_dedup_and_dedup_as_written_are_refused(layers):
    with pytest.raises(ValueError, match=r"^layers: dedup and dedup_as_written .*pick one"):
        settings(layers=layers)
    with pytest.raises(ValueError, match="pick one"):
        resolve_layers(layers)


@pytest.mark.parametrize("field,value,message", [
    ("bootstrap", "", "bootstrap: must be a non-empty string"),
    ("topic", None, "topic: must be a non-empty string"),
    ("provider_url", "127.0.0.1:8000", "provider_url: must start with http://"),
    ("layers", "dedup,bogus", "layers: unknown layer"),
    ("layers", [3], "layers: each layer is a name"),
    ("step", "no_colon", "step: must look like module:function"),
    ("batch_dedup", "yes", "batch_dedup: must be True or False"),
    ("crash_at", "after_lunch", "crash_at: unknown crash point 'after_lunch'"),
    ("crash_on", 0, r"crash_on: must be at least 1 \(counts from 1\)"),
    ("crash_on", 1.5, "crash_on: must be an integer"),
    ("exit_when_idle", -1, "exit_when_idle: must be at least 0"),
    ("batch_size", 0, "batch_size: must be at least 1"),
    ("poll_timeout", 0, "poll_timeout: must be more than 0"),
    ("max_retries", True, "max_retries: must be an integer"),
    ("metrics_port", 70000, "metrics_port: must be between 0 and 65535"),
    ("metrics_window", 0.0, "metrics_window: must be more than 0"),
    ("consumer_config", "{}", "consumer_config: must be a dict"),
    ("consumer_config", {"x": object()}, "consumer_config: must be plain JSON data"),
])
def test_a_bad_setting_is_refused_with_its_name(field, value, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        settings(**{field: value})


def test_settings_are_frozen():
    chosen = settings()
    with pytest.raises(AttributeError):
        chosen.crash_at = "after_provider_call"  # type: ignore[misc]


def test_a_layer_conflict_is_refused_before_the_lab_touches_the_stack():
    """``object()`` has no broker: anything that reached for a topic or a database would fail otherwise."""
    from effectively_once.payments.lab import PaymentLab, run_scenario

    with pytest.raises(ValueError, match="pick one"):
        PaymentLab(object(), layers=("dedup", "dedup_as_written"))
    with pytest.raises(ValueError, match="pick one"):
        run_scenario(object(), "after_provider_call", layers="dedup,dedup_as_written")


def test_the_consumer_command_reports_a_setting_error_with_exit_2():
    argv = settings().to_argv() + ["--crash-on", "0"]
    result = subprocess.run([sys.executable, "-m", "effectively_once.payments.consumer", *argv],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "crash_on: must be at least 1" in result.stderr, result.stderr


def test_the_lab_names_keep_working():
    from effectively_once.payments.lab import CRASH_POINTS as lab_points
    from effectively_once.payments.lab import LAYER_SETS as lab_sets
    from effectively_once.payments.lab import resolve_layers as r

    assert lab_points == CRASH_POINTS and lab_sets is LAYER_SETS and r is resolve_layers
