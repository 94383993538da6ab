"""Crash points, layers and results: typed at the seams, and still the plain strings a learner types."""

from __future__ import annotations

import re
import typing

import pytest

from effectively_once import protocol
from effectively_once.payments.consumer_settings import ConsumerSettings
from effectively_once.payments.steps import Outcome
from effectively_once.schemas import load


def test_each_name_is_the_plain_string_a_learner_types():
    """A notebook prints CRASH_POINTS and compares a result with "charged": no enum repr may show there."""
    for values, literal in ((protocol.ALL_CRASH_POINTS, protocol.CrashPoint), (protocol.LAYERS, protocol.Layer),
                            (protocol.RESULTS, protocol.Result)):
        assert all(type(v) is str for v in values) and values == typing.get_args(literal)
    assert set(protocol.CRASH_POINTS) < set(protocol.ALL_CRASH_POINTS) == set(protocol.INTENT_CRASH_POINTS)
    assert repr(protocol.CRASH_POINTS[0]) == "'before_dedup_insert'"


def test_the_shop_refuses_the_results_the_code_does_not_write():
    """consumer_events.result's CHECK constraint lists exactly protocol.RESULTS."""
    checks = re.findall(r"CHECK \(result IN \(([^)]*)\)\)", load("shop.sql"))
    assert len(checks) == 1, "one CHECK constraint on consumer_events.result"
    assert tuple(re.findall(r"'(\w+)'", checks[0])) == protocol.RESULTS


@pytest.mark.parametrize("result", protocol.RESULTS)
def test_a_step_returns_any_known_result(result):
    assert Outcome(result).result == result


def test_a_step_that_returns_an_unknown_result_is_told_the_known_ones():
    """Refused where the step made it, with the list, not later as a CHECK violation in the consumer."""
    with pytest.raises(ValueError, match="unknown result 'done'; a step returns one of charged, replayed"):
        Outcome("done")  # type: ignore[arg-type]


def test_settings_take_the_strings_and_refuse_the_rest():
    base = dict(bootstrap="127.0.0.1:9092", topic="t", group="g", shop_dsn="postgresql://x/y",
                provider_url="http://127.0.0.1:1")
    settings = ConsumerSettings(**base, layers="dedup,idempotency_key", crash_at="after_provider_call")
    assert settings.layers == ("dedup", "idempotency_key") and settings.crash_at == "after_provider_call"
    with pytest.raises(ValueError, match="crash_at: unknown crash point 'after_lunch'"):
        ConsumerSettings(**base, crash_at="after_lunch")
    with pytest.raises(ValueError, match="layers: unknown layer"):
        ConsumerSettings(**base, layers="dedup,retry")
