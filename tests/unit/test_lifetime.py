"""Liveness, stopping by pid, and children that die with their owner (effectively_once.lifetime).

No services: plain child processes (``sleep``, small Python scripts), real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from effectively_once.lifetime import (
    SIGKILL,
    kill_now,
    pid_alive,
    process_started,
    same_process,
    spawn,
    stop_pid,
)

PYTHON_SLEEPS = [sys.executable, "-c", "import time; time.sleep(120)"]


IGNORES_SIGTERM = [sys.executable, "-c",
                   "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(120)"]


def _wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_pid_alive_knows_a_running_process_from_nothing():
    assert pid_alive(os.getpid())
    assert not pid_alive(None) and not pid_alive(0)
    child = subprocess.Popen(PYTHON_SLEEPS)
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid), "a reaped child's pid is free"


def test_a_zombie_counts_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # Exited, not yet waited for: a zombie. Wait for the exit without reaping it.
    assert _wait_for(lambda: not pid_alive(child.pid), 15), "an exited child that nobody reaped still counts as alive"
    assert child.poll() is not None  # it is there to reap: it was a zombie, not gone


def test_stop_pid_stops_with_the_signal_given_and_reaps_its_own_child():
    child = subprocess.Popen(PYTHON_SLEEPS)
    assert stop_pid(child.pid, signal.SIGTERM, timeout=10) is True
    assert not pid_alive(child.pid)
    assert _reaped(child.pid), "stop_pid left its own child a zombie"


def test_stop_pid_escalates_to_sigkill_when_the_signal_is_ignored():
    child = subprocess.Popen(IGNORES_SIGTERM, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert stop_pid(child.pid, signal.SIGTERM, timeout=1.0) is True
    assert not pid_alive(child.pid), "a process that ignores SIGTERM was left running"
    assert time.monotonic() - started < 8
    child.stdout.close()


def test_stop_pid_of_a_process_that_is_gone_says_so():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert stop_pid(child.pid) is False


def test_kill_now_is_a_sigkill():
    child = subprocess.Popen(PYTHON_SLEEPS)
    kill_now(child.pid)
    assert child.wait(10) == -SIGKILL


def test_a_pid_names_one_process_with_its_start_time():
    started = process_started(os.getpid())
    assert started is not None and same_process(os.getpid(), started)
    assert not same_process(os.getpid(), started - 100), "another start time is another process (a reused pid)"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_started(child.pid) is None and not same_process(child.pid, None)


def test_spawn_passes_popen_options_and_errors_through():
    with spawn([sys.executable, "-c", "print('hi')"], stdout=subprocess.PIPE, text=True) as child:
        assert child.communicate(timeout=30)[0] == "hi\n"
    with pytest.raises(FileNotFoundError):
        spawn(["/nonexistent/program"])


@pytest.mark.parametrize("argv", [
    [sys.executable, "-c", "import sys; print(sys.argv[1:], __name__); sys.exit(3)", "a", "b"],
    [sys.executable, "-m", "json.tool", "--no-ensure-ascii", "--compact"],
])
def test_a_python_child_runs_as_python_would_run_it(argv):
    """A Python child bound to its parent runs its -c code or -m module in the same way: argv, __main__, exit code."""
    plain = subprocess.run(argv, input='{"a": 1}', capture_output=True, text=True, timeout=60)
    with spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        out, err = child.communicate('{"a": 1}', timeout=60)
    assert (child.returncode, out, err) == (plain.returncode, plain.stdout, plain.stderr)
