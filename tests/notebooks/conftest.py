"""The notebooks lane: every notebook and solution under nbval, and every lab, on the run's stack.

The stack comes from tests/services.py; the notebooks' kernels attach to it
through EO_HOME. Each notebook runs in a kernel of its own, with names of its
own on the stack, so under xdist any two may run side by side.
"""

from tests.services import (  # noqa: F401  (fixtures and hooks this lane uses)
    pytest_configure,
    pytest_unconfigure,
    stack,
)
