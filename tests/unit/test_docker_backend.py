"""The docker backend runs what embedded runs, chooses its images honestly, and leaves no container behind.

These need no Docker: they compare the container's command and
configuration with the embedded broker's, and the images' names. The tests
that talk to a real Docker engine are tests/docker/test_docker_backend.py's,
which ``make test-docker`` runs with ``EO_BACKEND=docker``.
"""

from __future__ import annotations

import os
import shlex

from effectively_once.stack import jars
from effectively_once.stack.docker import (
    CONTAINER_BIND,
    POSTGRES_ROOT,
    kafka_spec,
    postgres_container_command,
    postgres_spec,
)
from effectively_once.stack.embedded import initdb_command, postgres_bin_dir, postgres_command, postgres_major
from effectively_once.stack.engine import LABEL_HOME
from effectively_once.stack.images import LOCAL_REPOSITORY, local_image, official_image
from effectively_once.stack.java import JavaRuntime
from effectively_once.stack.kafka_broker import IMAGE_CLASSPATH, IMAGE_JAVA, KafkaBroker, KafkaNode
from effectively_once.stack.kafka_settings import KAFKA_VERSION

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
    major = postgres_major()
    assert major.isdigit() and int(major) >= 16
    assert official_image("kafka") == f"apache/kafka:{KAFKA_VERSION}"
    assert official_image("postgres") == f"postgres:{major}"
    # Built here: a name no registry serves, never an official one.
    assert local_image("kafka") == f"{LOCAL_REPOSITORY}/kafka:{KAFKA_VERSION}"
    assert local_image("postgres") == f"{LOCAL_REPOSITORY}/postgres:{major}"
    assert LOCAL_REPOSITORY.startswith("localhost/")
