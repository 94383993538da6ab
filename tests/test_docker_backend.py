"""The docker backend runs what embedded runs, chooses its images honestly, and leaves no container behind.

The first tests need no Docker: they compare the container's command and
configuration with the embedded broker's. The others (marked ``docker``)
talk to a real Docker engine; ``make test-docker`` runs them with
``EO_BACKEND=docker``, and they skip when no engine answers.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from effectively_once.stack import jars
from effectively_once.stack.docker import (
    CONTAINER_BIND,
    POSTGRES_ROOT,
    kafka_spec,
    postgres_container_command,
    postgres_spec,
)
from effectively_once.stack.embedded import initdb_command, postgres_bin_dir, postgres_command
from effectively_once.stack.engine import LABEL_HOME, docker_available
from effectively_once.stack.images import LOCAL_REPOSITORY, local_image, official_image
from effectively_once.stack.java import JavaRuntime
from effectively_once.stack.kafka_broker import IMAGE_CLASSPATH, IMAGE_JAVA, KafkaBroker, KafkaNode
from effectively_once.stack.kafka_settings import KAFKA_VERSION
from tests.conftest import ROOT, containers_of, run_cli

JAVA = JavaRuntime("/opt/some-jdk/bin/java", "21.0.5", "JAVA_HOME")
CLUSTER = "MkU3OEVBNTcwNTJENDM2Qg"


def _script_lines(command: tuple[str, ...]) -> list[str]:
    assert command[:2] == ("sh", "-c"), command
    return [line for line in command[2].splitlines() if line.strip()]


def _as_in_the_image(argv: list[str]) -> list[str]:
    """An embedded argv with the image's Java and jars in place of this machine's."""
    swapped = [IMAGE_JAVA if arg == JAVA.path else arg for arg in argv]
    return [IMAGE_CLASSPATH if arg == jars.classpath() else arg for arg in swapped]


# -- one broker command in every place (no Docker needed) ------------------------------------
def test_the_kafka_container_gets_the_configuration_embedded_runs(tmp_path):
    embedded = KafkaBroker(tmp_path / "kafka", java=JAVA, port=19092, controller_port=19093)
    in_container = KafkaNode(tmp_path / "kafka", 19092, 19093, bind_host=CONTAINER_BIND)
    ours, theirs = embedded.properties(), in_container.properties()
    assert set(ours) == set(theirs)
    differing = {key for key in ours if ours[key] != theirs[key]}
    # Only where the client listener binds: a container must listen on its own network's interface.
    assert differing == {"listeners"}
    assert theirs["listeners"] == ours["listeners"].replace("PLAINTEXT://127.0.0.1:", f"PLAINTEXT://{CONTAINER_BIND}:")
    assert theirs["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    # The file the container reads is the one written on the host, at the same path.
    in_container.write_config()
    text = in_container.config_file.read_text()
    assert f"log.dirs={embedded.data_dir}\n" in text and "transaction.state.log.min.isr=1\n" in text
    spec = kafka_spec("some/kafka:1", in_container, "stack1", CLUSTER)
    assert spec.mount == str(in_container.root) and str(in_container.config_file).startswith(spec.mount)


def test_the_kafka_container_runs_embedded_format_then_start_commands(tmp_path):
    node = KafkaNode(tmp_path / "kafka", 19092, 19093, bind_host=CONTAINER_BIND)
    spec = kafka_spec("some/kafka:1", node, "stack1", CLUSTER)
    first, second = _script_lines(spec.command)[1:]
    marker, _, format_line = first.partition(" || ")
    assert shlex.split(marker) == ["test", "-f", str(node.data_dir / "meta.properties")]
    embedded = KafkaBroker(tmp_path / "kafka", java=JAVA, port=19092, controller_port=19093).node
    assert shlex.split(format_line) == _as_in_the_image(embedded.format_command(JAVA.path, jars.classpath(), CLUSTER))
    assert second.startswith("exec ")
    assert shlex.split(second)[1:] == _as_in_the_image(embedded.start_command(JAVA.path, jars.classpath()))
    assert "-Xmx512m" in second and "kafka.Kafka" in second and "'/opt/kafka/libs/*'" in second
    assert spec.port == 19092 and spec.user == f"{os.getuid()}:{os.getgid()}"


def test_the_postgres_container_runs_embedded_initdb_and_postgres():
    lines = _script_lines(tuple(postgres_container_command(15432)))
    data = f"{POSTGRES_ROOT}/pgdata"
    create = lines[1].split(" || { ", 1)[1].split(";")[0]
    assert shlex.split(create) == initdb_command("initdb", data, ["--auth=trust"])
    assert shlex.split(lines[2]) == ["exec", *postgres_command("postgres", data, 15432, "*", "/tmp")]
    embedded = initdb_command(str(postgres_bin_dir() / "initdb"), "/d", ["--auth=trust"])
    assert embedded[1:] == initdb_command("initdb", "/d", ["--auth=trust"])[1:]
    spec = postgres_spec("postgres:18", 15432, "stack1")
    assert spec.port == 15432 and spec.mount is None and spec.labels[LABEL_HOME]


def test_default_images_are_the_official_ones_at_embedded_versions():
    wheel = subprocess.run([str(postgres_bin_dir() / "postgres"), "--version"], capture_output=True, text=True)
    major = wheel.stdout.split()[-1].split(".")[0]
    assert official_image("kafka") == f"apache/kafka:{KAFKA_VERSION}"
    assert official_image("postgres") == f"postgres:{major}"
    # Built here: a name no registry serves, never an official one.
    assert local_image("kafka") == f"{LOCAL_REPOSITORY}/kafka:{KAFKA_VERSION}"
    assert local_image("postgres") == f"{LOCAL_REPOSITORY}/postgres:{major}"
    assert LOCAL_REPOSITORY.startswith("localhost/")


# -- against a real Docker engine --------------------------------------------------------------
needs_docker = pytest.mark.skipif(not docker_available()[0], reason="no Docker engine answers here")


@pytest.mark.docker
@pytest.mark.integration
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


@pytest.mark.docker
@pytest.mark.integration
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


PRIVATE_STACK = """
import sys
from effectively_once.stack import start
stack = start("docker", progress=lambda *_: None)
print("ready", stack.kafka_bootstrap, flush=True)
if sys.argv[1] == "exit":
    raise SystemExit(0)
sys.stdin.read()  # until killed
"""


@pytest.mark.docker
@pytest.mark.integration
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
