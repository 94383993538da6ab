"""A running stack: a Kafka-protocol broker and a PostgreSQL server, the names in them, and how to stop it.

``Stack`` is what every backend returns (see ``backends.start``); it owns the
processes it started and stops them by pid.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from effectively_once import runs
from effectively_once.kafka import admin_client, client_settings, ensure_topic
from effectively_once.lifetime import pid_alive
from effectively_once.settings import namespace


class StackError(RuntimeError):
    """A stack could not be started or reached; the message says what to do."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the learner needs the sentence and the fix,
        # not the frames of the package.
        return [f"StackError: {self}"]



def new_run_id() -> str:
    """A short random id for names that must not collide between runs."""
    return uuid.uuid4().hex[:8]



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
    # The docker backend's servers: name -> container id, and the image each runs.
    containers: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    owned: bool = True
    # A secured stack (``up --secure``): the instructor's 0600 file of logins.
    credentials_file: str | None = None
    # Where a local stack (embedded, tansu) keeps its files: what names it in the runs' records. Out of the
    # repr: a notebook that shows its stack would store a path of the machine that ran it.
    root: str | None = field(default=None, repr=False)
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    # name -> restart that process on its files and ports, returning its new pid (local backends only)
    _revivers: dict[str, Callable[[], int]] = field(default_factory=dict, repr=False)
    _stopped: bool = field(default=False, repr=False)
    _groups: set[str] = field(default_factory=set, repr=False)

    @property
    def ref(self) -> str:
        """Which servers this stack's topics, groups and databases live on, as the runs' records name them.

        A stack that keeps its files in a directory (embedded, tansu, docker) is
        named by it: its servers come back on other ports after a restart, with
        the same files. Any other by its broker's address.
        """
        return f"files:{self.root}" if self.root else f"{self.backend}:{self.kafka_bootstrap}"

    def _record(self, kind: runs.ResourceKind, name: str, *, keep: bool = False) -> None:
        runs.record(runs.Resource(kind, name, stack=self.ref, keep=keep))

    def _release(self, kind: runs.ResourceKind, name: str) -> None:
        runs.release(runs.Resource(kind, name, stack=self.ref))

    # -- names -------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        """The namespaced name of topic ``name`` (e.g. ``alice.payments.charges``)."""
        return f"{self.namespace}.{name}"

    def group(self, name: str) -> str:
        """The namespaced name of consumer group ``name``, recorded as this run's (see ``runs``)."""
        full = f"{self.namespace}.{name}"
        if full not in self._groups:
            self._groups.add(full)
            self._record("group", full)
        return full

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
        from psycopg import sql

        from effectively_once.connections import connect

        db = self.database(name)
        with connect(self.postgres_dsn("postgres"), autocommit=True) as conn:
            if fresh:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            exists = conn.execute("select 1 from pg_database where datname = %s", (db,)).fetchone()
            self._record("database", db)
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        return self.postgres_dsn(db)

    def drop_database(self, name: str) -> None:
        """Drop the namespaced database ``name`` if it exists."""
        self.drop_databases(self.database(name))

    def drop_databases(self, *full_names: str) -> None:
        """Drop databases by their full names, if they exist."""
        from psycopg import sql

        from effectively_once.connections import connect

        if not full_names:
            return
        with connect(self.postgres_dsn("postgres"), autocommit=True) as conn:
            for db in full_names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
                self._release("database", db)

    # -- Kafka -------------------------------------------------------------------------
    def admin(self):
        """A confluent-kafka AdminClient for this broker."""
        return admin_client(self.kafka_bootstrap)

    def create_topic(self, name: str, partitions: int = 3) -> str:
        """Create the namespaced topic ``name`` (if missing) and return its full name."""
        return self.ensure_topic(self.topic(name), partitions)

    def ensure_topic(self, full_name: str, partitions: int = 1) -> str:
        """Create topic ``full_name`` (its full name) unless it exists, recorded as this run's; return it."""
        self._record("topic", full_name)
        return ensure_topic(self.kafka_bootstrap, full_name, partitions)

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
        for name in full_names:
            self._release("topic", name)

    def keep_for_inspection(self, *, topics: tuple[str, ...] = (), databases: tuple[str, ...] = ()) -> None:
        """Mark topics and databases (full names) as kept after the run, to inspect.

        The run's watchdog leaves them when the run ends; ``clean`` and
        ``reset`` remove them.
        """
        for name in topics:
            self._record("topic", name, keep=True)
        for name in databases:
            self._record("database", name, keep=True)

    def list_topics(self) -> list[str]:
        """Every topic on the broker this learner can see (namespaced ones only)."""
        md = self.admin().list_topics(timeout=10)
        prefix = f"{self.namespace}."
        return sorted(t for t in md.topics if t.startswith(prefix))

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Producer settings of the course's producer: idempotent (``enable.idempotence=true``), ``acks=all``."""
        config = {
            "bootstrap.servers": self.kafka_bootstrap,
            **client_settings(),
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
        timing: dict[str, Any]
        if self.broker_flavor == "tansu":
            timing = {"session.timeout.ms": 1000, "heartbeat.interval.ms": 250}
        elif self.backend in ("embedded", "docker"):
            from effectively_once.stack.kafka_settings import consumer_group_settings

            timing = consumer_group_settings()
        else:
            timing = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
        config = {
            "bootstrap.servers": self.kafka_bootstrap,
            **client_settings(),
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
        result["containers"] = {name: self.alive(name) for name in self.containers}
        result["healthy"] = bool(result["broker"] and result["postgres"] and all(result["processes"].values())
                                 and all(result["containers"].values()))
        return result

    def alive(self, name: str) -> bool:
        """Whether this stack's server ``name`` runs: its container (docker) or its process."""
        if name in self.containers:
            from effectively_once.stack.engine import container_running

            try:
                return container_running(self.containers[name])
            except Exception:  # the engine itself is gone: so is the container, for a learner
                return False
        return pid_alive(self.pids.get(name))

    def describe(self) -> dict[str, Any]:
        """What this stack is, as plain data (what ``status --json`` prints)."""
        dsn = self.postgres_dsn("postgres")
        if self.credentials_file:  # the password is in the credentials file, not in status
            from effectively_once.stack.secure import hide_password

            dsn = hide_password(dsn)
        return {
            "backend": self.backend,
            "broker_flavor": self.broker_flavor,
            "broker_version": self.broker_version,
            "java": self.java,
            "kafka_bootstrap": self.kafka_bootstrap,
            "postgres_dsn": dsn,
            "namespace": self.namespace,
            "pids": dict(self.pids),
            **({"containers": dict(self.containers), "images": dict(self.images)} if self.containers else {}),
            **({"secure": True, "credentials_file": self.credentials_file} if self.credentials_file else {}),
        }

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'><code>{v}</code></td></tr>"
                       for k, v in self.describe().items() if k not in ("pids", "java", "containers", "images"))
        return f"<table>{rows}</table>"

    def revive(self) -> list[str]:
        """Start again, on its files and ports, each process of this stack that died; return their names.

        A killed broker comes back with its log (topics, records, committed
        offsets), a killed PostgreSQL with its data after crash recovery; the
        processes still alive are left alone, so their clients only reconnect.
        """
        revived = []
        for name, restart in self._revivers.items():
            if not self.alive(name):
                pid = restart()  # a container keeps its id: only a process gets a new pid
                if name not in self.containers:
                    self.pids[name] = pid
                revived.append(name)
        return revived

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

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

