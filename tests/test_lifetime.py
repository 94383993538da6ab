"""Liveness, stopping by pid, and children that die with their owner (effectively_once.lifetime).

No services: plain child processes (``sleep``, small Python scripts), real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
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


# -- children that die with their owner --------------------------------------------------------------
OWNER = textwrap.dedent("""
    import sys, threading, time
    from effectively_once.lifetime import SIGKILL, spawn

    die = SIGKILL if sys.argv[1] == "bound" else None
    started = {}

    def start():
        started["child"] = spawn(["sleep", "120"], die_signal=die, start_new_session=True)

    # Started from a thread that ends at once: Linux sends the parent-death signal when the
    # forking thread exits, so spawn() must fork from a thread that lives as long as the process.
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    print(started["child"].pid, flush=True)
    time.sleep(120)
""")


def _owner_with_a_child(mode: str) -> tuple[subprocess.Popen, int]:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, mode], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line.strip().isdigit(), f"the owner did not start its child: {line!r}"
    return owner, int(line)


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_spawned_child_outlives_the_thread_that_started_it_and_dies_with_its_owner():
    owner, child = _owner_with_a_child("bound")
    try:
        time.sleep(1.0)
        assert pid_alive(child), "the child died with the short-lived thread that asked for it"
        owner.kill()
        owner.wait()
        assert _wait_for(lambda: not pid_alive(child), 5), "the child outlived its owner's SIGKILL"
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
        owner.stdout.close()


@pytest.mark.integration
def test_a_child_spawned_unbound_outlives_its_owner():
    """The control for the test above: without a parent-death signal the same child survives."""
    owner, child = _owner_with_a_child("unbound")
    try:
        owner.kill()
        owner.wait()
        time.sleep(1.0)
        assert pid_alive(child)
    finally:
        stop_pid(child, signal.SIGKILL, timeout=5)
        owner.stdout.close()


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
