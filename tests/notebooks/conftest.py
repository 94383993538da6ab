"""The notebooks lane: every notebook and solution under nbval, and every lab, on the run's stack.

The stack comes from tests/services.py; the notebooks' kernels attach to it
through EO_HOME.
"""

from tests.services import (  # noqa: F401  (fixtures and hooks this lane uses)
    one_worker_per_module,
    pytest_configure,
    pytest_unconfigure,
    stack,
)


def pytest_collection_modifyitems(config, items):
    one_worker_per_module(items, "notebooks")
