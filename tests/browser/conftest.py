"""The browser lane: JupyterLab in headless Chromium, on the run's stack (see tests/services.py)."""

from tests.services import (  # noqa: F401  (fixtures and hooks this lane uses)
    pytest_configure,
    pytest_unconfigure,
    stack,
)
