"""The docker backend: Apache Kafka (KRaft, one node) and PostgreSQL through testcontainers.

Kafka runs from the ``apache/kafka`` image at the version the embedded backend
runs, with the same broker settings (``kafka_settings``), passed as the image's
``KAFKA_*`` variables. testcontainers' ``KafkaContainer`` knows only Confluent
images, so this is a generic container: it listens on a host port chosen
before it starts, so the address it advertises is the one clients reach. The
wait is real: until the broker answers a metadata request. The containers live
as long as the process that started them: testcontainers' reaper removes them
when it exits (``up`` keeps that process alive).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from effectively_once.stack.core import Stack, StackError
from effectively_once.stack.kafka_broker import answers_metadata, cluster_id
from effectively_once.stack.kafka_settings import DOCKER_IMAGE, KAFKA_VERSION, docker_environment
from effectively_once.stack.processes import free_port

KAFKA_IMAGE = DOCKER_IMAGE
POSTGRES_IMAGE = "postgres:16-alpine"
BROKER_PORT = 9092  # inside the container
READY_TIMEOUT = 120.0

DOCKER_MISSING = (
    "Docker is not running ({why}): start Docker, or use the Docker-free backend "
    "with `EO_BACKEND=embedded` (or `--backend embedded`)."
)


def docker_available(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether a Docker daemon answers a ping within ``timeout`` s, and why not if it does not."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not Path("/var/run/docker.sock").exists():
        return False, "no Docker engine found: DOCKER_HOST is unset and /var/run/docker.sock does not exist"
    try:
        import docker
    except ImportError:
        return False, "the docker Python package is not installed"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        client.close()
        return True, "a Docker daemon answered"
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return False, f"no Docker daemon answered ({reason[:120]})"



def kafka_container_env(host_port: int) -> dict[str, str]:
    """The image's environment: one KRaft node advertising 127.0.0.1:``host_port``, plus the shared settings."""
    node = {
        "CLUSTER_ID": cluster_id(),
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{BROKER_PORT},CONTROLLER://localhost:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{host_port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
    }
    return {**node, **docker_environment()}


def kafka_container(host_port: int) -> Any:
    """One KRaft node (broker and controller) reachable at 127.0.0.1:``host_port``."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(KAFKA_IMAGE).with_bind_ports(BROKER_PORT, host_port)
    for name, value in kafka_container_env(host_port).items():
        container = container.with_env(name, value)
    return container


def postgres_container() -> Any:
    """The PostgreSQL container; ``driver=None`` gives a plain libpq URI for psycopg 3."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer

    return PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres", dbname="postgres",
                             driver=None)


def wait_for_metadata(bootstrap: str, container: Any, timeout: float = READY_TIMEOUT) -> None:
    """Wait until the broker in ``container`` answers a metadata request, or say where to look."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers_metadata(bootstrap):
            return
        time.sleep(0.25)
    raise StackError(f"Apache Kafka in {KAFKA_IMAGE} did not answer a metadata request at {bootstrap} within "
                     f"{timeout:.0f} s; see `docker logs {container.get_wrapped_container().short_id}`.")


def start_docker(progress: Callable[..., None] = print) -> Stack:
    """Start both containers and return a ``Stack`` that removes them on ``stop()``."""
    ok, why = docker_available()
    if not ok:
        raise StackError(DOCKER_MISSING.format(why=why))
    progress(f"pulling and starting {KAFKA_IMAGE} (KRaft) and {POSTGRES_IMAGE}; the first run downloads images...")
    port = free_port()
    kafka = kafka_container(port)
    postgres = postgres_container()
    try:
        kafka.start()
        postgres.start()
        wait_for_metadata(f"127.0.0.1:{port}", kafka)
    except Exception as exc:
        for container in (postgres, kafka):
            try:
                container.stop()
            except Exception:
                pass
        if isinstance(exc, StackError):
            raise
        raise StackError(f"Docker could not start the containers ({exc}); "
                         "check `docker ps`, or use `--backend embedded`.") from exc
    stack = Stack(
        backend="docker",
        kafka_bootstrap=f"127.0.0.1:{port}",
        base_dsn=postgres.get_connection_url(driver=None),
        broker_version=KAFKA_VERSION,
    )
    stack._stoppers.append(kafka.stop)
    stack._stoppers.append(postgres.stop)
    progress(f"Apache Kafka {KAFKA_VERSION} and PostgreSQL containers are up.")
    return stack
