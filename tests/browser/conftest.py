"""The browser lane: JupyterLab in headless Chromium, on the run's stack (see tests/services.py)."""

import sys

from tests.services import (  # noqa: F401  (fixtures and hooks this lane uses)
    pytest_configure,
    pytest_unconfigure,
    stack,
)


def pytest_terminal_summary(terminalreporter) -> None:
    """Every Run All the lane timed, slowest first, against the goal a learner should wait."""
    module = sys.modules.get("tests.browser.test_browser")
    times = getattr(module, "RUN_ALL_TIMES", None)
    if not times:
        return
    goal = module.RUN_ALL_GOAL
    over = [name for name, seconds in times.items() if seconds > goal]
    terminalreporter.section(f"Run All in JupyterLab, {len(times)} notebooks (goal {goal:.0f} s each)")
    for name, seconds in sorted(times.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:7.1f} s  {name}{'  (over the goal)' if seconds > goal else ''}")
    terminalreporter.write_line(f"{len(times) - len(over)} of {len(times)} under {goal:.0f} s"
                                + (f"; over: {', '.join(over)}" if over else ""))
