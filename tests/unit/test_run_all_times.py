"""The browser lane's Run All times travel with each test's report, so xdist workers lose none of them."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.browser import run_all


def _report(name: str | None, seconds: float | None, when: str = "call", passed: bool = True):
    props: list[tuple[str, object]] = []
    stack = SimpleNamespace(broker_flavor="apache-kafka", backend="embedded")
    if name is not None and seconds is not None:
        run_all.record(lambda key, value: props.append((key, value)), name, seconds, stack)
    return SimpleNamespace(when=when, passed=passed, user_properties=props)


def test_times_from_reports_of_two_workers_are_written_and_summed_up_once(tmp_path):
    times = run_all.Times()
    for report in (_report("01_two_generals", 12.34), _report(None, None), _report("06_incidents", 51.72),
                   _report("02_message_loss", 99.0, when="setup"), _report("03_kafka_guarantees", 99.0, passed=False)):
        times.add(report)
    assert times.seconds == {"01_two_generals": 12.3, "06_incidents": 51.7}, "only passed calls with a time count"
    written = json.loads(times.write(tmp_path).read_text())
    assert written == {"broker": "apache-kafka", "backend": "embedded", "goal": run_all.GOAL,
                       "seconds": {"01_two_generals": 12.3, "06_incidents": 51.7}}
    lines = times.summary()
    assert lines[0].endswith("06_incidents  (over the goal)") and lines[1].endswith("01_two_generals")
    assert lines[-1] == "1 of 2 under 45 s; over: 06_incidents"


def test_nothing_timed_writes_nothing_and_says_nothing(tmp_path):
    times = run_all.Times()
    assert times.write(tmp_path) is None and times.summary() == [] and not list(tmp_path.iterdir())
