"""The idempotence cost measurement's arithmetic, without a broker (tests/integration/test_measure.py runs it)."""

from __future__ import annotations

import json

import pytest

from effectively_once import measure
from effectively_once.measure import IDEMPOTENT, PLAIN, IdempotenceCost, ProducerRun


def _run(mode: str, round_no: int, seconds: float, sent: int = 1000, acknowledged: int | None = None,
         errors: list[str] | None = None) -> ProducerRun:
    return ProducerRun(mode, round_no, sent, sent if acknowledged is None else acknowledged, errors or [], seconds)


def test_ratio_is_taken_between_medians_and_rounds_show_the_spread():
    cost = IdempotenceCost("tansu", 1000, 3, [
        _run(IDEMPOTENT, 1, 0.5), _run(PLAIN, 1, 0.4),
        _run(PLAIN, 2, 0.5), _run(IDEMPOTENT, 2, 0.4),
        _run(IDEMPOTENT, 3, 1.0), _run(PLAIN, 3, 0.25),
    ])
    # Medians: idempotent 2000 msg/s (runs at 2000, 2500, 1000), not idempotent 2500 msg/s (2500, 2000, 4000).
    assert cost.median_per_second(IDEMPOTENT) == pytest.approx(2000)
    assert cost.median_per_second(PLAIN) == pytest.approx(2500)
    assert cost.ratio == pytest.approx(0.8)
    assert cost.cost_percent == pytest.approx(20.0)
    assert cost.round_ratios() == pytest.approx([0.8, 1.25, 0.25])
    assert cost.all_acknowledged
    text = cost.as_text()
    assert "ratio idempotent / not idempotent = 0.800" in text and "from 0.250 to 1.250" in text
    assert json.loads(json.dumps(cost.as_dict()))["median_per_second"] == {IDEMPOTENT: 2000, PLAIN: 2500}


def test_a_missing_ack_or_an_error_is_not_hidden_by_the_ratio():
    short = IdempotenceCost("tansu", 1000, 1, [_run(IDEMPOTENT, 1, 0.5, acknowledged=999), _run(PLAIN, 1, 0.5)])
    assert not short.all_acknowledged
    failed = IdempotenceCost("tansu", 1000, 1,
                             [_run(IDEMPOTENT, 1, 0.5), _run(PLAIN, 1, 0.5, errors=["_MSG_TIMED_OUT"])])
    assert not failed.all_acknowledged


@pytest.mark.parametrize("kwargs, word", [({"messages": 0}, "messages"), ({"rounds": 0}, "rounds")])
def test_bad_arguments_are_refused_before_touching_the_broker(kwargs, word):
    with pytest.raises(ValueError, match=word):
        measure.measure_idempotence_cost(None, **kwargs)


