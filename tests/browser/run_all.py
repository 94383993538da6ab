"""Each notebook's Run All time in JupyterLab: measured in a test, reported once for the whole lane.

A test records its time as JUnit properties (``run_all_seconds``, with the
broker it ran on), so the times travel with the test's report: from an xdist
worker to the controller, and into ``test-results/browser.xml``. The process
that saw every report (the controller under xdist, the only one without)
prints them against the goal and writes ``run_all_times_<broker>.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("EO_ARTIFACTS") or ROOT / "tests" / "artifacts")
# What a learner should wait for one notebook's Run All on two cores; the lane reports each time against it
# (a report, not an assertion: a shared CI machine's load decides the last seconds).
GOAL = 45.0
SECONDS, NOTEBOOK, BROKER, BACKEND = "run_all_seconds", "run_all_notebook", "run_all_broker", "run_all_backend"


def record(record_property, name: str, seconds: float, stack) -> None:
    """Attach one notebook's Run All time to the test's report."""
    record_property(NOTEBOOK, name)
    record_property(SECONDS, round(seconds, 1))
    record_property(BROKER, stack.broker_flavor)
    record_property(BACKEND, stack.backend)


class Times:
    """The Run All times of the reports this process has seen, by notebook."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.broker = self.backend = ""

    def add(self, report) -> None:
        if report.when != "call" or not report.passed:
            return
        props = dict(report.user_properties)
        if SECONDS in props:
            self.seconds[props[NOTEBOOK]] = float(props[SECONDS])
            self.broker, self.backend = props[BROKER], props[BACKEND]

    def write(self, artifacts: Path = ARTIFACTS) -> Path | None:
        """``run_all_times_<broker>.json``: one file per broker, so a run on Tansu keeps Apache Kafka's times."""
        if not self.seconds:
            return None
        artifacts.mkdir(parents=True, exist_ok=True)
        path = artifacts / f"run_all_times_{self.broker}.json"
        path.write_text(json.dumps({"broker": self.broker, "backend": self.backend, "goal": GOAL,
                                    "seconds": dict(sorted(self.seconds.items()))}, indent=2) + "\n")
        return path

    def summary(self) -> list[str]:
        """The lines of the lane's closing report, slowest first (none when nothing was timed)."""
        if not self.seconds:
            return []
        over = [name for name, seconds in self.seconds.items() if seconds > GOAL]
        lines = [f"{seconds:7.1f} s  {name}{'  (over the goal)' if seconds > GOAL else ''}"
                 for name, seconds in sorted(self.seconds.items(), key=lambda item: -item[1])]
        return lines + [f"{len(self.seconds) - len(over)} of {len(self.seconds)} under {GOAL:.0f} s"
                        + (f"; over: {', '.join(over)}" if over else "")]
