"""The integration lane: real broker, PostgreSQL, HTTP and SIGKILL, on the run's stack (see tests/services.py).

Under xdist (``tools/lanes.py`` runs this lane with three workers and
``--dist loadscope``) each test module runs whole, in order, on one worker, so
a module's fixtures (a matrix run, a provider, the disposable stack of
test_faults.py) start once. Modules run side by side, so a test counts only
what it made itself on the run's stack, never all of a kind.
"""

from tests.services import (  # noqa: F401  (fixtures and hooks this lane uses)
    private_home,
    provider,
    pytest_configure,
    pytest_unconfigure,
    stack,
)
