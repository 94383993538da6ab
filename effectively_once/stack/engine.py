"""Talking to a Docker engine: is one there, which images it has, pulling one, our containers.

Everything here goes through the ``docker`` Python package (testcontainers
brings it), so no ``docker`` command needs to be on PATH. The engine is the
one ``DOCKER_HOST`` names, else the default socket.

The course's containers carry labels (``LABEL_*``): the state directory and
the namespace that started them and the stack they belong to, so a cleanup
finds exactly ours and nobody else's.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LABEL_PREFIX = "org.effectively-once"
LABEL_HOME = f"{LABEL_PREFIX}.home"
LABEL_NAMESPACE = f"{LABEL_PREFIX}.namespace"
LABEL_STACK = f"{LABEL_PREFIX}.stack"
LABEL_ROLE = f"{LABEL_PREFIX}.role"

# A registry that answers starts sending within this; one that is unreachable fails at
# once (no DNS) or never answers (a firewall that drops packets).
PULL_ANSWER_SECONDS = 5.0


def docker_host() -> str | None:
    """The engine to use: ``DOCKER_HOST``, else the current docker context's (Docker Desktop sets one), else None.

    None means the default socket. testcontainers finds its engine the same way.
    """
    try:
        from testcontainers.core.docker_client import get_docker_host
    except ImportError:
        return os.environ.get("DOCKER_HOST") or None
    try:
        return get_docker_host()
    except Exception:  # an unreadable docker configuration: the default socket, as docker itself would
        return os.environ.get("DOCKER_HOST") or None


def docker_client(timeout: float = 60.0) -> Any:
    """A client of the engine ``docker_host()`` names (else the default socket)."""
    import docker

    host = docker_host()
    return docker.DockerClient(base_url=host, timeout=timeout) if host else docker.from_env(timeout=timeout)


def docker_available(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether a Docker engine answers a ping within ``timeout`` s, and why not if it does not."""
    try:
        import docker  # noqa: F401
    except ImportError:
        return False, "the docker Python package is not installed"
    if not docker_host() and not Path("/var/run/docker.sock").exists():
        return False, ("no Docker engine found: DOCKER_HOST is unset, no docker context names one, and "
                       "/var/run/docker.sock does not exist")
    try:
        client = docker_client(timeout)
        client.ping()
        client.close()
        return True, "a Docker engine answered"
    except Exception as exc:
        return False, f"no Docker engine answered ({first_line(exc)[:120]})"


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (the engine's own words, for its API errors), or its type."""
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def image_present(name: str, client: Any = None) -> bool:
    """True when the engine has the image ``name`` (a name with a tag, or an id)."""
    import docker

    client = client or docker_client()
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def pull_image(name: str, answer_within: float = PULL_ANSWER_SECONDS,
               progress: Callable[..., None] = print) -> str | None:
    """Pull ``name``: None once it is here, else why not, in a few words.

    A registry must start answering within ``answer_within`` s; once it does,
    the pull goes on to the end (a large image takes a while on any network),
    with a line of progress now and then. No answer in time, or an error, and
    the image is not here.
    """
    from docker.utils import parse_repository_tag

    repository, tag = parse_repository_tag(name)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pull() -> None:
        try:
            client = docker_client(timeout=600)
            for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                events.put(("event", event))
            events.put(("done", None))
        except Exception as exc:
            events.put(("error", exc))

    # A daemon thread: a pull that never answers must not keep this process alive.
    threading.Thread(target=pull, name=f"pull {name}", daemon=True).start()
    try:
        kind, payload = events.get(timeout=answer_within)
    except queue.Empty:
        return f"no registry answered within {answer_within:.0f} s"
    shown = time.monotonic()
    while kind == "event":
        if payload.get("error"):
            return str(payload["error"]).splitlines()[0][:200]
        if time.monotonic() - shown > 10:
            progress(f"pulling {name}: {payload.get('status', '')} {payload.get('progress', '')}".rstrip())
            shown = time.monotonic()
        try:
            kind, payload = events.get(timeout=300)
        except queue.Empty:
            return f"the pull of {name} stalled for 300 s"
    if kind == "error":
        return first_line(payload)[:200]
    return None


def container_running(container_id: str) -> bool:
    """True when the container exists and runs (a stopped, killed or removed one is not running)."""
    import docker

    try:
        return bool(docker_client(10).containers.get(container_id).attrs["State"]["Running"])
    except docker.errors.NotFound:
        return False


def labelled_containers(labels: dict[str, str]) -> list[Any]:
    """Every container, running or stopped, that carries all of ``labels``."""
    wanted = [f"{key}={value}" for key, value in labels.items()]
    return docker_client(30).containers.list(all=True, filters={"label": wanted})


def remove_containers(ids_or_labels: list[str] | dict[str, str]) -> list[str]:
    """Remove (force, with their anonymous volumes) the containers named by id, or all carrying the labels.

    Returns the names of those removed; a container already gone is skipped.
    """
    import docker

    client = docker_client(30)
    if isinstance(ids_or_labels, dict):
        found = labelled_containers(ids_or_labels)
    else:
        found = []
        for container_id in ids_or_labels:
            try:
                found.append(client.containers.get(container_id))
            except docker.errors.NotFound:
                pass
    removed = []
    for container in found:
        try:
            container.remove(force=True, v=True)
            removed.append(container.name)
        except docker.errors.NotFound:
            pass
    return removed
