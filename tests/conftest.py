"""What every lane may use: the checkout's root and the package's command line. No fixture starts a service here.

The lanes are folders, each with its own conftest: ``unit/`` (no services: it
refuses the stack's fixtures), ``integration/`` and ``notebooks/`` (one stack
per run, from ``tests/services.py``), ``browser/`` (JupyterLab in Chromium on
that stack). ``tools/lanes.py`` runs them; CONTRIBUTING.md says which to run
for which change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The unit lane checks its own guard (a test asking for the stack fails at once) in a pytest of its own.
pytest_plugins = ["pytester"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m effectively_once ARGS` and return the finished process."""
    return subprocess.run([sys.executable, "-m", "effectively_once", *args], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=timeout, cwd=ROOT)
