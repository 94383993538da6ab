"""Nothing outlives its kernel: notebook 04 in a real kernel, ended mid-run every way a kernel ends.

A Jupyter kernel (jupyter_client, as JupyterLab starts it) runs notebook 04's
cells until its private stack (Apache Kafka's JVM, PostgreSQL and its
backends), the payment provider and a consumer paused mid-charge are all
running, with no `up` stack. Then the kernel is shut down gracefully, or
killed with SIGKILL; 20 s later no process it started may be alive, and
`clean` finds no directory of that run left. A third test restarts the kernel
while 04's crash matrix runs on an `up` stack (many consumers, a shared
provider, matrix databases): the same must hold, and the `up` stack, which
no kernel owns, must keep running, with no topic or database of the run left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nbformat
import psutil
import psycopg
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from effectively_once import runs
from effectively_once.lifetime import pid_alive, same_process
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
NB04 = ROOT / "notebooks" / "04_kill_the_consumer.ipynb"
GRACE_SECONDS = 20.0


@pytest.fixture
def kernel_home():
    """A private EO_HOME with no stack in it (a notebook then starts its own), and the environment for a kernel."""
    home = Path(tempfile.mkdtemp(prefix="eo-kernel-home-"))
    env = os.environ.copy()
    env.update(EO_HOME=str(home / "home"), EO_BACKEND=os.environ.get("EO_BACKEND", "embedded"),
               JPY_SESSION_NAME=str(NB04))
    yield env
    run_cli("down", "--purge", env=env)
    run_cli("clean", env=env)
    shutil.rmtree(home, ignore_errors=True)


class Kernel:
    """A kernel running a notebook's cells one by one, as JupyterLab would."""

    def __init__(self, env: dict[str, str], notebook: Path = NB04) -> None:
        self.nb = nbformat.read(notebook, as_version=4)
        self.client = NotebookClient(self.nb, kernel_name="python3", timeout=600, startup_timeout=120,
                                     kernel_manager_class=KernelManager,
                                     resources={"metadata": {"path": str(notebook.parent)}})
        self.client.km = self.client.create_kernel_manager()
        self.client.start_new_kernel(env=env)
        self.client.start_new_kernel_client()
        self.km: KernelManager = self.client.km  # type: ignore[assignment]
        self.pid: int = self.km.provisioner.pid  # type: ignore[union-attr]
        self.started = runs.process_started(self.pid)

    def cells(self) -> list[tuple[int, str]]:
        return [(i, c.source) for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]

    def run_through(self, last: Callable[[str], bool]) -> None:
        """Run every code cell up to and including the first one ``last`` picks."""
        for index, source in self.cells():
            self.client.execute_cell(self.nb.cells[index], index)
            if last(source):
                return
        raise AssertionError("no cell of the notebook matched")

    def run_before(self, first: Callable[[str], bool]) -> str:
        """Run every code cell before the first one ``first`` picks; return that cell's source."""
        for index, source in self.cells():
            if first(source):
                return source
            self.client.execute_cell(self.nb.cells[index], index)
        raise AssertionError("no cell of the notebook matched")

    def descendants(self) -> list[tuple[int, float | None, str]]:
        """Every process the kernel started, and theirs: (pid, start time, name)."""
        found = []
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                found.append((child.pid, runs.process_started(child.pid), child.name()))
            except psutil.NoSuchProcess:
                continue
        return found

    def run(self) -> runs.Run:
        found = [run for run in runs.all_runs() if run.owner.pid == self.pid]
        assert len(found) == 1, f"expected the kernel's run in {runs.runs_dir()}, found {found}"
        return found[0]

    def close(self) -> None:
        try:
            self.client.kc.stop_channels()  # type: ignore[union-attr]
        except Exception:
            pass
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)


def _still_alive(processes: list[tuple[int, float | None, str]], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    alive = processes
    while True:
        alive = [p for p in alive if same_process(p[0], p[1])]
        if not alive or time.monotonic() > deadline:
            return [f"{name} (pid {pid})" for pid, _, name in alive]
        time.sleep(0.5)


def _mid_04_with_a_private_stack(env: dict[str, str]) -> tuple[Kernel, list, runs.Run]:
    """A kernel that ran 04 until its consumer paused mid-charge, on a stack of its own."""
    os.environ["EO_HOME"] = env["EO_HOME"]  # to read the kernel's run
    kernel = Kernel(env)
    try:
        kernel.run_through(lambda source: "wait_until_paused(" in source)
        processes = kernel.descendants()
        names = [name for _, _, name in processes]
        assert "java" in names and "postgres" in names, f"no private stack among the kernel's processes: {names}"
        assert sum(name.startswith("python") for name in names) >= 3, f"no provider, consumer and watchdog: {names}"
        run = kernel.run()
        assert run.owner.notebook == "04_kill_the_consumer"
        assert any(r.kind == "directory" and "/runs/embedded-" in r.name for r in run.resources), \
            "the private stack's directory is not recorded"
    except BaseException:
        kernel.close()
        raise
    return kernel, processes, run


def _nothing_of(run: runs.Run, env: dict[str, str]) -> None:
    """After `clean`: no directory the run recorded (the private stack's, the logs') and no record of it."""
    cleaned = run_cli("clean", env=env)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    left = [r.name for r in run.resources if r.kind == "directory" and Path(r.name).exists()]
    assert not left, f"directories of the killed run left after clean: {left}\n{cleaned.stdout}"
    assert not run.path.exists(), f"the run's record is left after clean:\n{run.path.read_text()}"


@pytest.fixture
def restore_home():
    previous = os.environ.get("EO_HOME")
    yield
    if previous is None:
        os.environ.pop("EO_HOME", None)
    else:
        os.environ["EO_HOME"] = previous


def test_a_graceful_shutdown_mid_04_leaves_no_process(kernel_home, restore_home):
    kernel, processes, run = _mid_04_with_a_private_stack(kernel_home)
    try:
        kernel.km.shutdown_kernel(now=False)
        left = _still_alive(processes, GRACE_SECONDS)
        assert not left, f"{GRACE_SECONDS:.0f} s after a graceful shutdown these still run: {left}"
    finally:
        kernel.close()
    _nothing_of(run, kernel_home)


def test_a_kernel_killed_with_sigkill_mid_04_leaves_no_process(kernel_home, restore_home):
    kernel, processes, run = _mid_04_with_a_private_stack(kernel_home)
    try:
        os.kill(kernel.pid, signal.SIGKILL)
        left = _still_alive(processes, GRACE_SECONDS)
        assert not left, f"{GRACE_SECONDS:.0f} s after the kernel's SIGKILL these still run: {left}"
    finally:
        kernel.close()
    _nothing_of(run, kernel_home)


def _namespaced(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """The course's topics and databases on the `up` stack of ``env``."""
    from effectively_once.stack import attach, running_record

    os.environ["EO_HOME"] = env["EO_HOME"]
    stack = attach(running_record())
    topics = sorted(t for t in stack.admin().list_topics(timeout=10).topics if t.startswith(stack.namespace + "."))
    with psycopg.connect(stack.postgres_dsn("postgres")) as conn:
        databases = sorted(row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                          (stack.namespace + "\\_%",)))
    return topics, databases


def test_a_kernel_restarted_while_04s_crash_matrix_runs_leaves_nothing_and_the_up_stack_runs_on(kernel_home,
                                                                                                restore_home):
    up = run_cli("up", "--backend", kernel_home["EO_BACKEND"], env=kernel_home)
    assert up.returncode == 0, up.stdout + up.stderr
    status = run_cli("status", "--json", env=kernel_home)
    stack_pids = json.loads(status.stdout)["pids"]
    os.environ["EO_HOME"] = kernel_home["EO_HOME"]
    kernel = Kernel(kernel_home)
    try:
        matrix_cell = kernel.run_before(lambda source: "run_matrix(" in source)
        kernel.client.kc.execute(matrix_cell)  # type: ignore[union-attr]  # and do not wait for it
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            held = kernel.run().resources
            consumers = [r for r in held if r.kind == "process" and r.name == "consumer"]
            if len(consumers) >= 3 and any(r.kind == "database" and "matrix_" in r.name for r in held):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the crash matrix did not get going: {kernel.run().resources}")
        processes = kernel.descendants()
        names = [name for _, _, name in processes]
        assert "java" not in names and "postgres" not in names, "the kernel should use the `up` stack"
        old_pid, before = kernel.pid, kernel.run()
        kernel.km.restart_kernel(now=False)
        left = _still_alive(processes, GRACE_SECONDS)
        assert not left, f"{GRACE_SECONDS:.0f} s after a kernel restart mid-matrix these still run: {left}"
        assert not pid_alive(old_pid)
    finally:
        kernel.close()
    assert all(pid_alive(pid) for pid in stack_pids.values()), "the `up` stack died with a kernel it does not belong to"
    cleaned = run_cli("clean", env=kernel_home)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    topics, databases = _namespaced(kernel_home)
    assert (topics, databases) == ([], []), f"the restarted kernel's run left on the stack: {topics} {databases}"
    left_dirs = [r.name for r in before.resources if r.kind == "directory" and Path(r.name).exists()]
    assert not left_dirs, f"the restarted kernel's temporary directories are left: {left_dirs}"
    assert not before.path.exists(), f"the restarted kernel's run is left:\n{before.path.read_text()}"
