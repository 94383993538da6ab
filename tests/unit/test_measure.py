"""The idempotence cost measurement: its arithmetic, and a short real run on the session's broker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from effectively_once import measure
from effectively_once.measure import IDEMPOTENT, PLAIN, IdempotenceCost, ProducerRun
from tests.conftest import ROOT


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


@pytest.mark.integration
def test_both_modes_alternate_and_every_record_is_acknowledged(stack):
    seen: list[str] = []
    cost = measure.measure_idempotence_cost(stack, messages=300, rounds=2, progress=seen.append)
    assert [(r.round, r.mode) for r in cost.runs] == [(1, IDEMPOTENT), (1, PLAIN), (2, PLAIN), (2, IDEMPOTENT)]
    assert all(r.sent == 300 and r.acknowledged == 300 and not r.errors for r in cost.runs), cost.runs
    assert cost.all_acknowledged
    assert all(r.seconds > 0 and r.per_second > 0 for r in cost.runs)
    assert len(cost.round_ratios()) == 2
    assert cost.broker_flavor == stack.broker_flavor
    assert len(seen) == 4 and "round 2/2" in seen[-1]
    assert not [t for t in stack.list_topics() if ".idempotence-cost-" in t], "the measurement's topic was left behind"


@pytest.mark.integration
def test_command_line_prints_json_with_the_ratio(stack):
    result = subprocess.run([sys.executable, "-m", "effectively_once.measure", "--messages", "200", "--rounds", "1",
                             "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["broker_flavor"] == stack.broker_flavor
    assert data["all_acknowledged"] is True
    assert [r["acknowledged"] for r in data["runs"]] == [200, 200]
    assert data["ratio"] > 0
