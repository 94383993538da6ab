"""The docker backend runs what embedded runs, chooses its images honestly, and leaves no container behind.

These talk to a real Docker engine; ``make test-docker`` runs them with
``EO_BACKEND=docker``, and they skip when no engine answers. That the
container runs what embedded runs is checked without Docker, in
tests/unit/test_docker_backend.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from effectively_once.stack.engine import docker_available
from tests.conftest import ROOT, containers_of, run_cli

# -- against a real Docker engine --------------------------------------------------------------
needs_docker = pytest.mark.skipif(not docker_available()[0], reason="no Docker engine answers here")


PRIVATE_STACK = """
import sys
from effectively_once.stack import start
stack = start("docker", progress=lambda *_: None)
print("ready", stack.kafka_bootstrap, flush=True)
if sys.argv[1] == "exit":
    raise SystemExit(0)
sys.stdin.read()  # until killed
"""


@needs_docker
def test_auto_with_no_image_obtainable_chooses_embedded_says_why_and_up_succeeds(private_home):
    env = {**private_home, "EO_KAFKA_IMAGE": "apache/kafka:0.0.0-eo-absent"}
    env.pop("EO_BACKEND", None)
    started = time.monotonic()
    up = run_cli("up", "--backend", "auto", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert ("starting the embedded stack (Docker answers but apache/kafka:0.0.0-eo-absent is not here and could "
            "not be pulled") in up.stdout, up.stdout
    assert "; using embedded" in up.stdout
    report = json.loads(run_cli("status", "--json", env=env).stdout)
    assert report["healthy"] and report["backend"] == "embedded"
    print(f"\n[docker] auto decided and started embedded in {time.monotonic() - started:.1f} s")
    assert run_cli("down", env=env).returncode == 0
    assert containers_of(env["EO_HOME"]) == []


@needs_docker
def test_up_then_down_leaves_no_container(private_home):
    env = {**private_home, "EO_BACKEND": "docker"}
    assert run_cli("up", "--backend", "docker", env=env).returncode == 0
    report = json.loads(run_cli("status", "--json", env=env).stdout)
    assert report["healthy"] and set(report["containers"]) == {"broker", "postgres"}
    running = containers_of(env["EO_HOME"])
    assert len(running) == 2 and all(" Up " in f" {line} " for line in running), running
    down = run_cli("down", env=env)
    assert down.returncode == 0, down.stderr
    assert containers_of(env["EO_HOME"]) == [], "down left a container, running or stopped"


@needs_docker
@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_a_kernel_private_stack_leaves_no_container_however_it_ends(private_home, end):
    """A kernel with no `up` stack starts its own; its exit (normal, or SIGKILL) removes the containers."""
    proc = subprocess.Popen([sys.executable, "-c", PRIVATE_STACK, end], env=private_home, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line + (proc.stderr.read() if proc.stderr else "")
    if end == "sigkill":
        assert len(containers_of(private_home["EO_HOME"])) == 2
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 45  # Ryuk waits 10 s for its owner to reconnect; the course's reaper 0.5 s
    while containers_of(private_home["EO_HOME"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert containers_of(private_home["EO_HOME"]) == [], f"a container outlived its kernel ({end})"
