"""How long a process lives: is it alive, stop it by pid, and start a child that dies with its owner.

Liveness and signals go through psutil, so they mean the same on Linux, macOS
and Windows: ``os.kill(pid, 0)``, the probe POSIX code uses, terminates the
process on Windows, and ``/proc`` exists only on Linux.

``spawn`` starts a child that dies when the process that started it dies,
however it dies (a graceful exit, a kernel restart, SIGKILL). On Linux the
child asks the kernel for a parent-death signal (``prctl(PR_SET_PDEATHSIG)``):
a Python child first thing, through ``effectively_once.die_with_parent``;
any other (the JVM, PostgreSQL) in a ``preexec_fn`` between fork and exec.
Linux sends that signal when the *thread* that forked the child exits, not
the process, so every such child is forked by one thread that lives as long
as the process (``_Spawner``). Elsewhere, and as a second line on Linux, the
owner's watchdog (``effectively_once.watchdog``) stops what the owner recorded.

This module uses only the standard library at import time (psutil is imported
where it is used), so the command line's ``doctor`` still runs before ``make setup``.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

# Windows has no SIGKILL; its nearest equivalent (TerminateProcess) goes through psutil's kill().
SIGKILL: int = getattr(signal, "SIGKILL", 9)
SIGQUIT: int = getattr(signal, "SIGQUIT", signal.SIGTERM)

T = TypeVar("T")

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` names a running process (a zombie counts as dead)."""
    if not pid:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists; someone else's
        return True


def process_started(pid: int | None) -> float | None:
    """When process ``pid`` started (seconds since the epoch, as psutil reads it), None if there is none.

    With the pid, it names one process for good: a pid is reused once its process is gone.
    """
    if not pid:
        return None
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_process(pid: int | None, started: float | None) -> bool:
    """True when ``pid`` is alive and is still the process that started at ``started`` (not a reused pid)."""
    if not pid_alive(pid):
        return False
    if started is None:
        return True
    now = process_started(pid)
    return now is not None and abs(now - started) < 0.05


def _reap(pid: int) -> None:
    """Collect the exit status of our own child so it does not linger as a zombie (POSIX only)."""
    if not hasattr(os, "WNOHANG"):
        return  # Windows keeps no zombies
    try:
        os.waitpid(pid, os.WNOHANG)
    except OSError:  # not our child (ChildProcessError), or already collected
        pass


def _signal(pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` (SIGKILL as psutil's kill(), which Windows has too); False if it is gone."""
    import psutil

    try:
        process = psutil.Process(pid)
        if sig == SIGKILL:
            process.kill()
        else:
            process.send_signal(sig)
    except psutil.NoSuchProcess:
        return False
    return True


def kill_now(pid: int) -> None:
    """SIGKILL ``pid`` now (TerminateProcess on Windows): no handler runs, as in a crash."""
    if hasattr(signal, "SIGKILL"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    _signal(pid, SIGKILL)


def stop_pid(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send ``sig`` to ``pid``, wait up to ``timeout`` s, then SIGKILL. True if it was running."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    if not _signal(pid, sig):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            _reap(pid)  # it may have exited after the first look: a zombie counts as dead, and is collected here
            return True
        time.sleep(0.05)
    if not _signal(pid, SIGKILL):
        _reap(pid)
        return True
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid):
            _reap(pid)
            break
        time.sleep(0.05)
    return True


# -- children that die with their owner --------------------------------------------------------------
class _Spawner:
    """One thread per process that forks every child bound to the process's life.

    Linux delivers a child's parent-death signal when the thread that forked it
    exits. A notebook starts children from short-lived threads (a thread pool
    that starts PostgreSQL and the broker side by side, the crash matrix's
    workers), so they are all forked here, by a daemon thread that ends only
    with the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def _loop(self) -> None:
        while True:
            job, result = self._jobs.get()
            if not result.set_running_or_notify_cancel():
                continue
            try:
                result.set_result(job())
            except BaseException as exc:  # handed to the caller, in its own thread
                result.set_exception(exc)

    def call(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the spawner thread and return its result (its exception is raised here)."""
        if threading.current_thread() is self._thread:
            return job()
        with self._lock:
            # After a fork the thread belongs to the parent: start one of our own.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._loop, name="eo-spawner", daemon=True)
                self._pid = os.getpid()
                self._thread.start()
        result: Future = Future()
        self._jobs.put((job, result))
        return result.result()


_SPAWNER = _Spawner()


def _parent_death_signal(sig: int) -> Callable[[], None]:
    """The ``preexec_fn`` that asks Linux to send ``sig`` to the child when its parent dies."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the forked child only calls it
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return die_with_parent


def spawn(argv: list[str], *, die_signal: int | None = SIGKILL, **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` for a child that dies with this process (Linux: ``die_signal``).

    ``die_signal`` is what the child gets when this process dies: SIGKILL for
    a child that keeps nothing worth a clean shutdown; SIGTERM or SIGQUIT for
    one that should shut down by itself. None starts a child that outlives
    this process (the stack ``up`` leaves running, the watchdog).
    """
    if die_signal is None or not sys.platform.startswith("linux"):
        return subprocess.Popen(argv, **popen)
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] in ("-m", "-c"):
        # A Python child asks for the signal itself: no preexec_fn, so Popen keeps its vfork(),
        # where a preexec_fn forces a fork() of the whole kernel for each consumer of a crash
        # matrix (benchmarks/spawn.py measures both).
        bound = [sys.executable, "-m", "effectively_once.die_with_parent", str(die_signal), str(os.getpid()),
                 *argv[1:]]
        return _SPAWNER.call(lambda: subprocess.Popen(bound, **popen))
    preexec = _parent_death_signal(die_signal)
    return _SPAWNER.call(lambda: subprocess.Popen(argv, preexec_fn=preexec, **popen))
