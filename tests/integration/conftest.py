"""The integration lane: real broker, PostgreSQL, HTTP and SIGKILL, on the run's stack (see tests/services.py).

Under xdist (``tools/lanes.py`` runs this lane with two workers) each test
module runs whole on one worker, so a module's fixtures (a matrix run, a
provider, a disposable stack) start once.
"""

from tests.services import (  # noqa: F401  (fixtures and hooks this lane uses)
    one_worker_per_module,
    private_home,
    provider,
    pytest_configure,
    pytest_unconfigure,
    stack,
)


def pytest_collection_modifyitems(config, items):
    one_worker_per_module(items, "integration")
