"""The integration lane: real broker, PostgreSQL, HTTP and SIGKILL, on the run's stack (see tests/services.py).

Under xdist (``tools/lanes.py`` runs this lane with three workers and
``--dist loadscope``) each test module runs whole, in order, on one worker, so
a module's fixtures (a matrix run, a provider, the disposable stack of
test_faults.py) start once. Modules run side by side, so a test counts only
what it made itself on the run's stack, never all of a kind. The longest
modules are handed out first (``LONGEST_FIRST``), so that the short ones fill
in behind them and no worker is left with a long module at the end.
"""

from pathlib import Path

import pytest

from tests.services import (  # noqa: F401  (fixtures and hooks this lane uses)
    private_home,
    provider,
    pytest_configure,
    pytest_unconfigure,
    stack,
)

# The modules that take longest, longest first (``python tools/slowest_tests.py`` after a run); the others
# follow in their usual order.
LONGEST_FIRST = ("test_faults", "test_pipeline", "test_payment_intents", "test_kernel_death", "test_jar_fetch",
                 "test_cleanup", "test_churn", "test_secure")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the longest modules first: xdist's loadscope hands modules out in the order collected."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.nodeid.split("::")[0]).stem, len(rank)))
