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
    pid_alive,
    stop_pid,
)
from tests.unit.test_lifetime import _wait_for  # noqa: F401

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
