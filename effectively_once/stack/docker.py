"""The docker backend: Apache Kafka (KRaft, one node) and PostgreSQL in containers, through testcontainers.

One broker command in every place. The Kafka container runs exactly what
the embedded backend runs (``kafka_broker.KafkaNode``): the same
``server.properties``, written on the host and mounted at the same path,
and the same format-then-start commands, on the image's Java and
``/opt/kafka/libs``. Its log directory lies beside it, under the stack's
root, so a killed container restarts on its log and ``up`` after ``down``
finds its topics, as on embedded. The PostgreSQL container runs the
embedded backend's ``initdb`` and ``postgres`` commands with the image's
binaries; its databases live in the container.

Each container listens on the same port number inside as the one published
on the host's 127.0.0.1, so the one difference from embedded is the
address a server binds inside its container (every interface of the
container's own network, where embedded binds 127.0.0.1).

Which images: ``images.py``. No leftovers: each container carries labels
naming the state directory, the namespace and the stack (``engine.py``).
testcontainers' reaper (Ryuk) removes them when their owner exits; when its
image cannot be had, the course's own reaper (``reaper.py``) does, and
``stop()`` and ``down`` remove them in any case.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effectively_once import runs
from effectively_once.settings import eo_home, namespace
from effectively_once.stack.core import Stack, StackError, new_run_id
from effectively_once.stack.embedded import initdb_command, postgres_command
from effectively_once.stack.engine import (
    LABEL_HOME,
    LABEL_NAMESPACE,
    LABEL_ROLE,
    LABEL_STACK,
    container_running,
    docker_available,
    first_line,
    image_present,
    pull_image,
    remove_containers,
)
from effectively_once.stack.images import ImageChoice, Role, obtain_images
from effectively_once.stack.kafka_broker import KafkaNode, answers_metadata, choose_ports, cluster_id
from effectively_once.stack.kafka_settings import KAFKA_VERSION
from effectively_once.stack.processes import free_port, stop_pid

__all__ = ["DOCKER_MISSING", "docker_available", "start_docker"]

READY_TIMEOUT = 120.0
# Where the PostgreSQL container keeps its cluster: the image's postgres user owns /var/lib/postgresql.
POSTGRES_ROOT = "/var/lib/postgresql/effectively-once"
# A container binds every interface of its own network: the published port arrives there.
CONTAINER_BIND = "0.0.0.0"

DOCKER_MISSING = (
    "Docker is not running ({why}): start Docker, or use the Docker-free backend "
    "with `EO_BACKEND=embedded` (or `--backend embedded`)."
)
IMAGES_MISSING = (
    "Docker answers but {why}: build local images with `python tools/build_images.py` (Linux, as root), "
    "or name images you have in EO_KAFKA_IMAGE and EO_POSTGRES_IMAGE, or use `EO_BACKEND=embedded`."
)


def kafka_node(root: Path) -> KafkaNode:
    """The node the Kafka container runs: embedded's node, its files under ``root``, bound for a container."""
    port, controller_port = choose_ports(root)
    return KafkaNode(root, port, controller_port, bind_host=CONTAINER_BIND)


def postgres_container_command(port: int) -> list[str]:
    """What the PostgreSQL container runs: embedded's initdb (first start only) and postgres, by the image's PATH."""
    data = f"{POSTGRES_ROOT}/pgdata"
    create = shlex.join(initdb_command("initdb", data, ["--auth=trust"]))
    serve = shlex.join(postgres_command("postgres", data, port, "*", "/tmp"))
    # A published port reaches the server from the container network's gateway, not from
    # 127.0.0.1: let that network in the way initdb lets loopback in. From outside the
    # engine, only the host's 127.0.0.1 reaches the port (see ``_publish``).
    network = shlex.quote("host all all samenet trust")
    hba = shlex.quote(f"{data}/pg_hba.conf")
    marker = shlex.quote(f"{data}/PG_VERSION")
    return ["sh", "-c", f"set -e\ntest -f {marker} || {{ {create}; echo {network} >> {hba}; }}\nexec {serve}\n"]


@dataclass(frozen=True)
class ContainerSpec:
    """One container of the docker backend as plain data: what the engine is asked to run."""

    role: str
    image: str
    command: tuple[str, ...]
    port: int  # published on the host's 127.0.0.1 as the same number
    user: str
    labels: dict[str, str]
    name: str
    mount: str | None = None  # a host directory mounted at the same path, read-write

    def container(self) -> Any:
        """The testcontainers container (not yet started) for this spec."""
        from testcontainers.core.container import DockerContainer

        container = DockerContainer(self.image).with_command(list(self.command))
        # On the host's loopback only, as embedded listens (with_bind_ports takes no address).
        container.ports[f"{self.port}/tcp"] = ("127.0.0.1", self.port)  # type: ignore[assignment]
        if self.mount is not None:
            container = container.with_volume_mapping(self.mount, self.mount, "rw")
        return container.with_name(self.name).with_kwargs(labels=self.labels, user=self.user)


def _spec(role: str, image: str, command: list[str], port: int, stack_id: str, user: str,
          mount: Path | None = None) -> ContainerSpec:
    labels = {LABEL_HOME: str(eo_home().expanduser().resolve()), LABEL_NAMESPACE: namespace(),
              LABEL_STACK: stack_id, LABEL_ROLE: role}
    return ContainerSpec(role, image, tuple(command), port, user, labels, f"eo-{namespace()}-{stack_id}-{role}",
                         str(mount) if mount is not None else None)


def kafka_spec(image: str, node: KafkaNode, stack_id: str, cluster: str) -> ContainerSpec:
    """The Kafka container: ``node``'s commands, its directory mounted, run as this user.

    As this user, so that the files it writes in the mounted directory are the
    learner's (and `down --purge` can remove them).
    """
    return _spec("kafka", image, node.container_command(cluster), node.port, stack_id,
                 f"{os.getuid()}:{os.getgid()}", mount=node.root)


def postgres_spec(image: str, port: int, stack_id: str) -> ContainerSpec:
    """The PostgreSQL container: embedded's commands, as the image's postgres user."""
    return _spec("postgres", image, postgres_container_command(port), port, stack_id, "postgres")


def use_reaper(progress: Callable[..., None]) -> bool:
    """Whether testcontainers' reaper (Ryuk) can run; when its image cannot be had, switch it off."""
    from testcontainers.core.config import testcontainers_config as config

    if config.ryuk_disabled:
        return False
    if image_present(config.ryuk_image) or pull_image(config.ryuk_image, progress=progress) is None:
        return True
    progress(f"testcontainers' reaper ({config.ryuk_image}) is not here and could not be pulled: running "
             "without it (TESTCONTAINERS_RYUK_DISABLED); the course's own reaper removes the containers "
             "when this process exits")
    config.ryuk_disabled = True
    return False


def start_reaper(stack_id: str) -> subprocess.Popen:
    """The course's reaper: it removes this stack's containers once this process is gone, however it ended."""
    return subprocess.Popen(
        [sys.executable, "-m", "effectively_once.stack.reaper", "--owner", str(os.getpid()),
         "--label", f"{LABEL_STACK}={stack_id}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def logs_tail(container: Any, chars: int = 1500) -> str:
    """The end of a container's output (what `docker logs` shows), or a note that it has none."""
    try:
        return container.get_wrapped_container().logs().decode(errors="replace")[-chars:]
    except Exception as exc:
        return f"(no logs: {first_line(exc)})"


def wait_until_ready(check: Callable[[], bool], container: Any, what: str, where: str,
                     timeout: float = READY_TIMEOUT) -> None:
    """Wait until ``check()`` holds, or say why not: the container exited (with its output), or time ran out."""
    deadline = time.monotonic() + timeout
    short_id = container.get_wrapped_container().short_id
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        if not container_running(container.get_wrapped_container().id):
            raise StackError(f"{what} exited while starting; its container {short_id} said:\n{logs_tail(container)}"
                             f"\nSee also {where}.")
        time.sleep(0.25)
    raise StackError(f"{what} did not answer within {timeout:.0f} s; see `docker logs {short_id}` and {where}.")


def postgres_answers(dsn: str) -> bool:
    """True when the server at ``dsn`` answers ``select 1``."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=2) as conn:
        return conn.execute("select 1").fetchone() == (1,)


def require_images(progress: Callable[..., None]) -> dict[Role, ImageChoice]:
    """Both images, pulled if need be (a registry gets longer to answer than `auto` gives it), or the fix."""
    choices, why = obtain_images(pull=True, answer_within=30.0, progress=progress)
    if why is not None:
        raise StackError(IMAGES_MISSING.format(why=why))
    return choices


def start_docker(root: Path | None = None, progress: Callable[..., None] = print) -> Stack:
    """Start both containers and return a ``Stack`` that removes them on ``stop()``.

    Kafka's files (``server.properties``, its log) live under ``root/kafka``;
    by default under a fresh directory of ``$EO_HOME/runs`` that ``stop()``
    removes.
    """
    ok, why = docker_available()
    if not ok:
        raise StackError(DOCKER_MISSING.format(why=why))
    images = require_images(progress)
    remove_root = root is None
    if root is None:  # recorded in this run: its watchdog or `clean` removes it if stop() never runs
        parent = eo_home() / "runs"
        parent.mkdir(parents=True, exist_ok=True)
        root = runs.recorded_dir(Path(os.path.abspath(tempfile.mkdtemp(prefix="docker-", dir=parent))))
    root = Path(os.path.abspath(root))
    node = kafka_node(root / "kafka")
    node.write_config()
    pg_port = free_port()
    stack_id = new_run_id()
    reaper = use_reaper(progress)
    kafka = kafka_spec(images["kafka"].name, node, stack_id, cluster_id()).container()
    postgres = postgres_spec(images["postgres"].name, pg_port, stack_id).container()
    progress(f"starting Apache Kafka {KAFKA_VERSION} ({images['kafka'].describe()}) and PostgreSQL "
             f"({images['postgres'].describe()}) in containers...")
    bootstrap = f"127.0.0.1:{node.port}"
    dsn = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
    started: list[Any] = []
    watcher = None
    try:
        for container in (kafka, postgres):
            container.start()
            started.append(container)
        if not reaper:
            watcher = start_reaper(stack_id)
        wait_until_ready(lambda: answers_metadata(bootstrap), kafka, "Apache Kafka", str(node.log_path))
        wait_until_ready(lambda: postgres_answers(dsn), postgres, "PostgreSQL", "its container's output")
    except Exception as exc:
        remove_containers([c.get_wrapped_container().id for c in started])
        if remove_root:
            runs.remove_dir(root)
        if isinstance(exc, StackError):
            raise
        raise StackError(f"Docker could not start the containers ({first_line(exc)}); "
                         "check `docker ps -a`, or use `--backend embedded`.") from exc
    stack = Stack(
        backend="docker",
        kafka_bootstrap=bootstrap,
        base_dsn=dsn,
        broker_version=KAFKA_VERSION,
        containers={"broker": kafka.get_wrapped_container().id, "postgres": postgres.get_wrapped_container().id},
        images={role: choice.name for role, choice in images.items()},
        root=str(root),
    )

    def remove_ours() -> None:
        remove_containers(list(stack.containers.values()))
        if watcher is not None:  # it exits as soon as it sees them gone
            try:
                watcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_pid(watcher.pid)
        if remove_root:
            runs.remove_dir(root)

    stack._stoppers.append(remove_ours)
    stack._revivers.update(
        broker=_reviver(kafka, lambda: wait_until_ready(lambda: answers_metadata(bootstrap), kafka, "Apache Kafka",
                                                        str(node.log_path))),
        postgres=_reviver(postgres, lambda: wait_until_ready(lambda: postgres_answers(dsn), postgres, "PostgreSQL",
                                                             "its container's output")))
    progress(f"Apache Kafka {KAFKA_VERSION} and PostgreSQL containers are up.")
    return stack


def _reviver(container: Any, ready: Callable[[], None]) -> Callable[[], int]:
    """Start a stopped (killed) container again, on its files and ports, and wait until it answers."""
    def revive() -> int:
        container.get_wrapped_container().start()
        ready()
        return 0

    return revive
