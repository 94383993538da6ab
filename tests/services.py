"""The stack the integration, notebooks and browser lanes share, started once per run and attached by everyone.

A run's stack lives in a private state directory, ``EO_TEST_HOME``. Whoever
starts the run starts the stack before the first test, once: ``tools/lanes.py``
(what ``make test`` calls) for all the lanes it runs, or pytest's controller
when it runs with xdist workers, or else the first test that asks for it.
Every test process attaches to it through that directory, which is exported
as ``EO_HOME`` too, so notebook kernels attach with ``attach_or_start()``. The
one that started it stops it with ``down --purge`` and checks that no process
of it is left.

The lanes' conftests import the fixtures and hooks they need from here; the unit
lane imports ``SERVICE_FIXTURES`` only, to refuse them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import containers_of, run_cli

TEST_HOME = "EO_TEST_HOME"
BACKEND = os.environ.get("EO_BACKEND", "embedded")
# The fixtures that start or need a service; tests/unit refuses each of them by name.
SERVICE_FIXTURES = ("stack", "provider", "private_home")
_OWNED = pytest.StashKey[Path]()


def start_test_stack(backend: str = BACKEND) -> Path:
    """`up` in a new private state directory; returns the directory.

    Outside pytest's tmp_path: as root, PostgreSQL runs as its own system user
    and must traverse every parent of its data directory, and each new pytest
    session resets pytest's base directory to mode 0700.
    """
    home = Path(tempfile.mkdtemp(prefix="eo-test-home-"))
    result = run_cli("up", "--backend", backend, env={**os.environ, "EO_HOME": str(home)})
    if result.returncode != 0:
        run_cli("down", "--purge", env={**os.environ, "EO_HOME": str(home)})
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"`up --backend {backend}` failed:\n{result.stdout}\n{result.stderr}")
    return home


def stop_test_stack(home: Path) -> list[str]:
    """`down --purge` the stack of ``home`` and remove it; returns what went wrong (empty when all is well)."""
    from effectively_once.stack.processes import pid_alive
    from effectively_once.stack.record import StackRecord, read_record

    record = read_record(home / "stack.json")
    pids = record.pids if record else {}
    down = run_cli("down", "--purge", env={**os.environ, "EO_HOME": str(home)})
    problems = [] if down.returncode == 0 else [f"`down --purge` failed: {down.stderr.strip()}"]
    problems += [f"{name} (pid {pid}) is still running after `down`" for name, pid in pids.items() if pid_alive(pid)]
    if isinstance(record, StackRecord) and record.containers:
        problems += [f"container {c} is left after `down`" for c in containers_of(home)]
    shutil.rmtree(home, ignore_errors=True)
    return problems


def _export(home: Path) -> None:
    os.environ[TEST_HOME] = str(home)
    os.environ["EO_HOME"] = str(home)


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, the controller starts the run's stack before its workers, which inherit EO_TEST_HOME."""
    xdist_controller = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
    if not xdist_controller or os.environ.get(TEST_HOME) or config.option.collectonly:
        return
    home = start_test_stack()
    config.stash[_OWNED] = home
    _export(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_OWNED, None)
    if home is not None:
        problems = stop_test_stack(home)
        del config.stash[_OWNED]
        if problems:
            raise pytest.UsageError("the tests' stack did not stop cleanly: " + "; ".join(problems))


@pytest.fixture(scope="session")
def stack():
    """The run's stack (embedded unless EO_BACKEND says otherwise), shared by every test and every worker."""
    from effectively_once import stack as stack_mod

    home = Path(os.environ[TEST_HOME]) if os.environ.get(TEST_HOME) else None
    owned = None
    if home is None:
        home = owned = start_test_stack()
    _export(home)
    running = stack_mod.attach(stack_mod.StackRecord.from_json(json.loads((home / "stack.json").read_text())))
    yield running
    if owned is not None:
        os.environ.pop(TEST_HOME, None)
        problems = stop_test_stack(owned)
        assert not problems, problems


@pytest.fixture(scope="module")
def provider(stack):
    """A payment provider process on a new database of the run's stack, one per test module."""
    from effectively_once import stack as stack_mod
    from effectively_once.payments.children import ProviderProcess

    name = f"provider_{stack_mod.new_run_id()}"
    with ProviderProcess(stack.create_database(name)) as running:
        yield running
    stack.drop_database(name)


@pytest.fixture
def private_home():
    """The environment of a second, private EO_HOME for a test that brings a stack up itself; purged at the end."""
    home = Path(tempfile.mkdtemp(prefix="eo-private-home-"))
    env = os.environ.copy()
    env["EO_HOME"] = str(home / "home")
    yield env
    run_cli("down", "--purge", env=env)
    shutil.rmtree(home, ignore_errors=True)
