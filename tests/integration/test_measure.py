"""The side-by-side measurement of the idempotent producer against the real broker."""

from __future__ import annotations

import json
import subprocess
import sys

from effectively_once import measure
from effectively_once.measure import IDEMPOTENT, PLAIN
from tests.conftest import ROOT


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


def test_command_line_prints_json_with_the_ratio(stack):
    result = subprocess.run([sys.executable, "-m", "effectively_once.measure", "--messages", "200", "--rounds", "1",
                             "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["broker_flavor"] == stack.broker_flavor
    assert data["all_acknowledged"] is True
    assert [r["acknowledged"] for r in data["runs"]] == [200, 200]
    assert data["ratio"] > 0
