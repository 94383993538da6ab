"""The browser lane: JupyterLab in headless Chromium, on the run's stack (see tests/services.py)."""

from tests.browser.run_all import GOAL, Times
from tests.services import (  # noqa: F401  (fixtures and hooks this lane uses)
    pytest_configure,
    pytest_unconfigure,
    stack,
)

RUN_ALL = Times()


def _reports_every_test(config) -> bool:
    """True where every test's report arrives: the xdist controller, or the one process without xdist."""
    return not hasattr(config, "workerinput")


def pytest_runtest_logreport(report) -> None:
    RUN_ALL.add(report)


def pytest_sessionfinish(session) -> None:
    if _reports_every_test(session.config):
        RUN_ALL.write()


def pytest_terminal_summary(terminalreporter, config) -> None:
    """Every Run All the lane timed, slowest first, against the goal a learner should wait."""
    lines = RUN_ALL.summary() if _reports_every_test(config) else []
    if lines:
        terminalreporter.section(f"Run All in JupyterLab, {len(RUN_ALL.seconds)} notebooks (goal {GOAL:.0f} s each)")
        for line in lines:
            terminalreporter.write_line(line)
        workers = getattr(config.option, "numprocesses", None)
        if workers:
            # The lane's other worker runs another module of browser tests meanwhile: each Run All shares the
            # cores, so these are upper bounds. EO_TEST_WORKERS=0 times them one at a time, as a learner waits.
            terminalreporter.write_line(f"(measured on {workers} xdist workers, beside the lane's other browser "
                                        "tests; EO_TEST_WORKERS=0 make test-browser times each alone)")
