"""The detached stack that ``python -m effectively_once up`` records, and attaching to it.

``up`` starts a keeper process that records the running stack in
``$EO_HOME/stack.json`` (a ``StackRecord``, see ``record``); ``attach`` and
``attach_or_start`` read that record.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from effectively_once.settings import eo_home
from effectively_once.stack.backends import start
from effectively_once.stack.core import Stack, StackError
from effectively_once.stack.processes import pid_alive, stop_pid
from effectively_once.stack.record import StackFailure, StackRecord, StaleRecord, read_record

STATE_FILE = "stack.json"


def state_path() -> Path:
    """Where ``up`` records the running stack: ``$EO_HOME/stack.json``."""
    return eo_home() / STATE_FILE


def read_state() -> StackRecord | StackFailure | None:
    """The record ``up`` wrote, or None when nothing was started.

    Raises ``StaleRecord`` (a ``StackError``: one sentence with the fix) when
    the file is not a record this version of the course wrote.
    """
    return read_record(state_path())


def running_record() -> StackRecord | None:
    """The record of the stack ``up`` started, or None when none is running (or it failed to start)."""
    record = read_state()
    return record if isinstance(record, StackRecord) else None


def attach(record: StackRecord | None = None) -> Stack:
    """A ``Stack`` for the stack ``up`` started; stopping it leaves the processes running."""
    record = record or running_record()
    if record is None:
        raise StackError("No stack is running: start one with `python -m effectively_once up`.")
    base_dsn = record.postgres_dsn
    if record.credentials_file:
        # A secured stack (`up --secure`): this process logs in as the instructor.
        from effectively_once.stack.secure import use_instructor_login

        try:
            base_dsn = use_instructor_login(Path(record.credentials_file))["EO_POSTGRES_DSN"]
        except (OSError, KeyError) as exc:
            raise StackError(f"The secured stack's credentials file {record.credentials_file} cannot be read "
                             f"({exc}): run `python -m effectively_once down` then `up --secure`.") from exc
    return Stack(
        backend=record.backend,
        kafka_bootstrap=record.kafka_bootstrap,
        base_dsn=base_dsn,
        broker_flavor=record.broker_flavor,
        broker_version=record.broker_version,
        java=record.java,
        pids=dict(record.pids),
        containers=dict(record.containers),
        images=dict(record.images),
        owned=False,
        credentials_file=record.credentials_file,
        root=record.root,
    )


def attach_or_start(backend: str = "auto", progress: Callable[..., None] = print) -> Stack:
    """Attach to the stack ``up`` started, else start one that stops when this kernel exits."""
    record = running_record()
    if record is not None:
        stack = attach(record)
        if stack.health()["healthy"]:
            progress(f"attached to the running {stack.backend} stack ({stack.broker_flavor})")
            return stack
        progress("the recorded stack is not healthy; starting a private one "
                 "(fix the shared one with `python -m effectively_once down` then `up`)")
    return start(backend, progress=progress)


def to_stderr(*parts: Any, **_: Any) -> None:
    """Progress for command-line tools: on stderr, so ``--json`` output on stdout stays clean."""
    print(*parts, file=sys.stderr, flush=True)


@contextmanager
def command_stack(backend: str = "auto", progress: Callable[..., None] = to_stderr) -> Iterator[Stack]:
    """The stack a command runs on: the one ``up`` started, else a private one stopped at the end.

    Raises ``StackError`` (one sentence with the fix) when neither can be had.
    """
    running = attach_or_start(backend, progress=progress)
    try:
        yield running
    finally:
        running.stop()  # a no-op for an attached stack: it belongs to `up`


def stop_recorded(record: StackRecord | StackFailure, purge: bool = False) -> list[str]:
    """Stop every process listed in an ``up`` record, keeper first, and remove its containers; say what went.

    The keeper removes a docker stack's containers when it stops; what is
    still there after it (a keeper that was SIGKILLed) is removed here. The
    stack's files (Kafka's log, PostgreSQL's data) stay for the next ``up``
    unless ``purge``.
    """
    stopped = []
    keeper = record.keeper
    if keeper and stop_pid(keeper, timeout=30):
        stopped.append(f"keeper (pid {keeper})")
    for name, pid in record.pids.items():
        if name != "keeper" and stop_pid(pid, timeout=10):
            stopped.append(f"{name} (pid {pid})")
    if not isinstance(record, StackRecord):
        return stopped
    containers = record.containers
    if containers:
        from effectively_once.stack.engine import remove_containers

        try:
            # The keeper removed them when it stopped, unless it was SIGKILLed: then they go here.
            removed = remove_containers(list(containers.values()))
            stopped.append(f"its {len(containers)} containers" + (f" ({len(removed)} left by the keeper)"
                                                                  if removed else ""))
        except Exception as exc:  # no engine answers: nothing of ours can be running there
            stopped.append(f"(its containers could not be checked: {exc})")
    if record.root and purge:
        shutil.rmtree(record.root, ignore_errors=True)
    return stopped


def stop_stale(stale: StaleRecord) -> list[str]:
    """Stop the processes a record that cannot be read still lists, keeper first; say what went."""
    return stop_recorded(StackFailure(stale.problem, stale.pids))


def wait_for_state(timeout: float, keeper_pid: int) -> StackRecord:
    """Wait until the keeper process records a ready stack (or dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_state()
        if isinstance(record, StackRecord) and record.keeper == keeper_pid:
            return record
        if isinstance(record, StackFailure) and record.error:
            raise StackError(record.error)
        if not pid_alive(keeper_pid):
            raise StackError("The stack's keeper process exited while starting; see "
                             f"{eo_home() / 'keeper.log'} for why.")
        time.sleep(0.1)
    raise StackError(f"The stack was not ready after {timeout:.0f} s; see {eo_home() / 'keeper.log'}.")


def revive_recorded(record: StackRecord, timeout: float = 180.0) -> StackRecord | None:
    """Ask the keeper of a running stack to restart its dead processes; the healthy record, or None.

    The keeper restarts each dead process (or stopped container) on its files
    and ports (a broker with its log, PostgreSQL with its data), so clients
    only reconnect. None when the keeper cannot do it (an external stack, an
    old keeper): the caller then restarts the whole stack.
    """
    keeper = record.keeper
    if (record.backend not in ("embedded", "tansu", "docker") or keeper is None or not pid_alive(keeper)
            or not hasattr(signal, "SIGUSR1")):
        return None
    before = record.revived
    os.kill(keeper, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = running_record()
        if current is not None and current.revived > before:
            if current.revive_error:
                return None
            return current if attach(current).health()["healthy"] else None
        if not pid_alive(keeper):
            return None
        time.sleep(0.2)
    return None
