"""``python -m effectively_once workshop add-learners|remove-learner|status``: a room of learners on one stack.

``add-learners N --out DIR`` hands out logins, one file per learner;
``remove-learner NAME`` takes everything of one learner away; ``status``
shows the instructor who is connected, what each learner has, and how their
last run went.

On the secured stack (``up --backend embedded --secure``), each learner gets:

- a Kafka user (SASL/SCRAM) with prefixed ACLs: every operation on the
  topics, consumer groups and transactional ids that start with
  ``<learner>.``, and nothing else but reading the broker's configuration
  (the course asks it which broker it talks to). The course names everything
  it creates with that prefix (``EO_NAMESPACE``), so its producers,
  transactions and consumers work, and another learner's names are refused;
- a PostgreSQL role with a password and CREATEDB: it may connect to the
  ``postgres`` database (to create its own) and to the databases whose names
  start with ``<learner>_``, which is what the course creates; a line in
  pg_hba.conf says so, and CONNECT is revoked from PUBLIC;
- ``DIR/<learner>.env``: ``EO_BACKEND=external``, ``EO_NAMESPACE``,
  ``EO_KAFKA_BOOTSTRAP``, ``EO_KAFKA_CONFIG`` and ``EO_POSTGRES_DSN`` (mode 0600).

The room is sized as it grows (``stack.room``): each role gets a ``CONNECTION
LIMIT`` its runs fit in, each Kafka user its quotas, and PostgreSQL's
``max_connections`` makes room for every learner's limit (a restart of
PostgreSQL when it must grow: do it before the learners start).

Names run ``learner01``, ``learner02``, ...; a second run continues after the
highest file already in DIR.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from effectively_once.connections import LEARNER_CONNECTION_LIMIT
from effectively_once.kafka import CLIENT_CONFIG_ENV
from effectively_once.run_results import RunRecord
from effectively_once.stack.kafka_broker import SCRAM_MECHANISM, scram_client_settings
from effectively_once.stack.record import StackRecord
from effectively_once.stack.room import LEARNER_QUOTA, Quota

HELP = "hand out logins for a workshop room on the secured stack (`workshop add-learners N --out DIR`)"
PREFIX = "learner"
LEARNER_NAME = re.compile(rf"{PREFIX}\d+")
SCRAM_ITERATIONS = 8192


@dataclass(frozen=True)
class Learner:
    """One learner's logins: the name is also the namespace, the Kafka user and the PostgreSQL role."""

    name: str
    password: str

    @property
    def kafka_prefix(self) -> str:
        """What their topics, groups and transactional ids start with (``Stack.topic``: ``<ns>.<name>``)."""
        return f"{self.name}."

    @property
    def database_prefix(self) -> str:
        """What their databases start with (``Stack.database``: ``<ns>_<name>``)."""
        return f"{self.name}_"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``workshop`` command's subcommands."""
    sub = parser.add_subparsers(dest="workshop_command", required=True)
    add = sub.add_parser("add-learners", help="create N learners (Kafka user and ACLs, PostgreSQL role) "
                                              "and write DIR/<name>.env for each")
    add.add_argument("count", type=int, help="how many learners to add")
    add.add_argument("--out", required=True, type=Path, help="the directory the .env files go to")
    remove = sub.add_parser("remove-learner", help="remove one learner: Kafka user, ACLs, quotas, topics and "
                                                   "groups; PostgreSQL role and databases")
    remove.add_argument("name", help="the learner's name, e.g. learner07")
    status = sub.add_parser("status", help="each learner: connected or not, topics and groups with their lag, "
                                           "databases, last run")
    status.add_argument("--json", action="store_true", help="one JSON object per learner, a line each")


def run(args: argparse.Namespace) -> int:
    """Run a ``workshop`` subcommand; 0 when it did all it was asked, 1 when the stack is missing or refused,
    2 on bad input."""
    if args.workshop_command == "add-learners" and args.count < 1:
        print("workshop add-learners: N must be at least 1.", file=sys.stderr)
        return 2
    if args.workshop_command == "remove-learner" and not LEARNER_NAME.fullmatch(args.name):
        print(f"workshop remove-learner: {args.name!r} is not a learner's name (they are {PREFIX}01, "
              f"{PREFIX}02, ...; `workshop status` lists them).", file=sys.stderr)
        return 2
    from effectively_once.stack.state import attach, running_record

    record = running_record()
    if record is None or not record.secure:
        print("No secured stack is running: start one with "
              "`python -m effectively_once up --backend embedded --secure`.", file=sys.stderr)
        return 1
    stack = attach(record)  # logs this process in as the instructor
    if args.workshop_command == "remove-learner":
        return remove_learner(record, stack, args.name)
    if args.workshop_command == "status":
        return show_status(stack, as_json=args.json)
    return add_learners(record, stack, args.out, args.count)


def add_learners(record: StackRecord, stack, out: Path, count: int) -> int:
    """``add-learners``: create ``count`` learners, size the room for them, write their files."""
    learners = new_learners(out, count)
    taken = existing_roles(stack.base_dsn, [learner.name for learner in learners])
    if taken:
        print(f"workshop add-learners: on this stack already: {', '.join(taken)}. Pass the --out directory "
              "that holds their files, so the new names continue after them.", file=sys.stderr)
        return 2
    try:
        for learner in learners:
            add_kafka_user(stack.kafka_bootstrap, learner)
        set_quotas(stack.kafka_bootstrap, {learner.name: LEARNER_QUOTA for learner in learners})
        add_postgres_roles(stack.base_dsn, learners)
        size_room(record, stack)
    except Exception as exc:
        print(f"workshop add-learners: the stack refused a change ({exc}); check `python -m effectively_once "
              "status`, then run the command again (it makes new names).", file=sys.stderr)
        return 1
    for learner in learners:
        path = write_learner_file(out, learner, stack.kafka_bootstrap, stack.base_dsn)
        print(f"{learner.name}: {path}")
    print(f"{len(learners)} learner(s) added. Hand each one their file; they load it with "
          "`set -a; . ./<name>.env; set +a` before starting Jupyter.")
    return 0


def new_learners(out: Path, count: int) -> list[Learner]:
    """``count`` learners named after the highest ``learnerNN.env`` already in ``out``, with new passwords."""
    from effectively_once.stack.secure import new_password

    taken = [int(m.group(1)) for p in (out.glob(f"{PREFIX}*.env") if out.exists() else [])
             if (m := re.fullmatch(rf"{PREFIX}(\d+)\.env", p.name))]
    first = max(taken, default=0) + 1
    width = max(2, len(str(first + count - 1)))
    return [Learner(f"{PREFIX}{n:0{width}d}", new_password()) for n in range(first, first + count)]


def learner_acls(learner: Learner) -> list:
    """The ACL bindings of one learner: all operations under their prefix, and reading the broker's config."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    principal = f"User:{learner.name}"
    bindings = [AclBinding(kind, learner.kafka_prefix, ResourcePatternType.PREFIXED, principal, "*",
                           AclOperation.ALL, AclPermissionType.ALLOW)
                for kind in (ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID)]
    # The course asks the broker for its configuration to tell Apache Kafka from other brokers.
    bindings.append(AclBinding(ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, principal, "*",
                               AclOperation.DESCRIBE_CONFIGS, AclPermissionType.ALLOW))
    return bindings


def add_kafka_user(bootstrap: str, learner: Learner, timeout: float = 30.0) -> None:
    """Create the learner's SCRAM credential and ACLs (the caller is logged in as the instructor)."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    from effectively_once.kafka import admin_client

    admin = admin_client(bootstrap)
    mechanism = ScramMechanism[SCRAM_MECHANISM.replace("-", "_")]
    upsert = UserScramCredentialUpsertion(learner.name, ScramCredentialInfo(mechanism, SCRAM_ITERATIONS),
                                          learner.password.encode())
    for future in admin.alter_user_scram_credentials([upsert], request_timeout=timeout).values():
        future.result()
    for future in admin.create_acls(learner_acls(learner), request_timeout=timeout).values():
        future.result()


def existing_roles(superuser_dsn: str, names: list[str]) -> list[str]:
    """Which of ``names`` are PostgreSQL roles already (a learner added before, from another directory)."""
    import psycopg

    with psycopg.connect(superuser_dsn) as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1", (names,)).fetchall()
    return [row[0] for row in rows]


def hba_line(learner: Learner) -> str:
    """The pg_hba.conf line that lets ``learner`` reach their own databases (PostgreSQL 16+ regex)."""
    return f"host    /^{re.escape(learner.database_prefix)}  {learner.name}  127.0.0.1/32  scram-sha-256\n"


def add_postgres_roles(superuser_dsn: str, learners: list[Learner]) -> None:
    """Create each learner's role (LOGIN, CREATEDB, its CONNECTION LIMIT, a password), let it into ``postgres``,
    and reload pg_hba.conf."""
    import psycopg
    from psycopg import sql

    from effectively_once.stack.secure import lock_databases

    lock_databases(superuser_dsn)
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        for learner in learners:
            role = sql.Identifier(learner.name)
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CONNECTION LIMIT {} PASSWORD {}").format(
                role, sql.Literal(LEARNER_CONNECTION_LIMIT), sql.Literal(learner.password)))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE postgres TO {}").format(role))
        hba_row = conn.execute("SHOW hba_file").fetchone()
        assert hba_row is not None
        with open(hba_row[0], "a") as hba:
            hba.writelines(hba_line(learner) for learner in learners)
        conn.execute("SELECT pg_reload_conf()")


def learner_dsn(superuser_dsn: str, learner: Learner) -> str:
    """The learner's libpq URI: the superuser's server and ``postgres`` database, the learner's login."""
    parts = urlsplit(superuser_dsn)
    server = parts.netloc.rsplit("@", 1)[-1]  # host and port as written ([::1] keeps its brackets)
    return urlunsplit(parts._replace(netloc=f"{learner.name}:{learner.password}@{server}", path="/postgres"))


def write_learner_file(out: Path, learner: Learner, bootstrap: str, superuser_dsn: str) -> Path:
    """Write ``out/<name>.env`` (0600) and return its path."""
    from effectively_once.stack.secure import client_config_text, env_text, write_private

    values = {
        "EO_BACKEND": "external",
        "EO_NAMESPACE": learner.name,
        "EO_KAFKA_BOOTSTRAP": bootstrap,
        CLIENT_CONFIG_ENV: client_config_text(scram_client_settings(learner.name, learner.password)),
        "EO_POSTGRES_DSN": learner_dsn(superuser_dsn, learner),
    }
    header = (f"The workshop's Kafka and PostgreSQL, as {learner.name}.\n"
              f"Load it before starting Jupyter: set -a; . ./{learner.name}.env; set +a\n"
              f"You may use the topics, groups and databases whose names start with {learner.name}.")
    return write_private(out / f"{learner.name}.env", env_text(values, header))


# -- the room's size -------------------------------------------------------------------------------
def set_quotas(bootstrap: str, quotas: dict[str, Quota | None]) -> None:
    """Set (or, with None, remove) each user's Kafka quotas, in one request (the caller is the instructor)."""
    from effectively_once.stack.kafka_quotas import instructor_quota_client

    with instructor_quota_client(bootstrap) as client:
        client.alter(quotas)


def learner_roles(superuser_dsn: str) -> list[str]:
    """The learners on this stack: their PostgreSQL roles, in order."""
    import psycopg

    with psycopg.connect(superuser_dsn) as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname ~ %s ORDER BY 1",
                            (f"^{LEARNER_NAME.pattern}$",)).fetchall()
    return [row[0] for row in rows]


def size_room(record: StackRecord, stack, progress=print) -> int:
    """Record how many learners the stack has and grow PostgreSQL's ``max_connections`` to fit them.

    PostgreSQL reads ``max_connections`` only when it starts: when the room
    outgrows it, PostgreSQL is stopped and the stack's keeper starts it again
    on its files (clients reconnect). Returns ``max_connections`` now.
    """
    import signal

    import psycopg

    from effectively_once.stack.processes import stop_pid
    from effectively_once.stack.room import read_room, write_room
    from effectively_once.stack.state import revive_recorded

    root = Path(record.root or stack.root)
    room = write_room(root, read_room(root).with_learners(len(learner_roles(stack.base_dsn))))
    with psycopg.connect(stack.base_dsn) as conn:
        current = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
    if current >= room.max_connections:
        return current
    progress(f"PostgreSQL restarts to make room for {room.sized_for} learners (max_connections {current} -> "
             f"{room.max_connections}); connections open now are closed.")
    stop_pid(record.pids["postgres"], signal.SIGINT, timeout=30)
    if revive_recorded(record) is None:
        raise RuntimeError("PostgreSQL did not come back after its restart: run `python -m effectively_once up` "
                           "(it restarts it on its files)")
    return room.max_connections


# -- removing a learner ----------------------------------------------------------------------------
def remove_learner(record: StackRecord, stack, name: str) -> int:
    """``remove-learner``: refuse ``name`` at every door, then delete everything of theirs."""
    import psycopg

    if name not in learner_roles(stack.base_dsn) and not kafka_user_exists(stack.kafka_bootstrap, name):
        print(f"workshop remove-learner: no learner {name} on this stack (`workshop status` lists them).",
              file=sys.stderr)
        return 2
    learner = Learner(name, "")
    try:
        # The doors first: no new Kafka request is authorised, no PostgreSQL login accepted.
        remove_kafka_user(stack.kafka_bootstrap, learner)
        dropped = remove_postgres_role(stack.base_dsn, learner)
        gone = remove_kafka_data(stack, learner)
    except (psycopg.Error, RuntimeError, OSError) as exc:
        print(f"workshop remove-learner: the stack refused a change ({exc}); run the command again, it picks up "
              "where it stopped.", file=sys.stderr)
        return 1
    from effectively_once.stack.room import read_room, write_room

    root = Path(record.root or stack.root)
    write_room(root, read_room(root).with_learners(len(learner_roles(stack.base_dsn))))
    print(f"{name} removed: Kafka user, ACLs and quotas; {gone}; PostgreSQL role and "
          f"{len(dropped)} database(s){': ' + ', '.join(dropped) if dropped else ''}. Their file no longer logs in.")
    return 0


def kafka_user_exists(bootstrap: str, name: str) -> bool:
    """Whether the broker holds a SCRAM credential for ``name``."""
    from effectively_once.kafka import admin_client

    admin = admin_client(bootstrap)
    try:
        described = admin.describe_user_scram_credentials([name], request_timeout=30)
        return bool(next(iter(described.values())).result())
    except Exception:  # ResourceNotFound: no such user
        return False


def remove_kafka_user(bootstrap: str, learner: Learner, timeout: float = 30.0) -> None:
    """Delete the learner's ACLs, SCRAM credential and quotas (each only if there)."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
        ScramMechanism,
        UserScramCredentialDeletion,
    )

    from effectively_once.kafka import admin_client

    admin = admin_client(bootstrap)
    # None matches any resource name and any host (the library's stubs say str).
    anything: str = None  # type: ignore[assignment]
    everything = AclBindingFilter(ResourceType.ANY, anything, ResourcePatternType.ANY, f"User:{learner.name}",
                                  anything, AclOperation.ANY, AclPermissionType.ANY)
    for future in admin.delete_acls([everything], request_timeout=timeout).values():
        future.result()
    if kafka_user_exists(bootstrap, learner.name):
        deletion = UserScramCredentialDeletion(learner.name, ScramMechanism[SCRAM_MECHANISM.replace("-", "_")])
        for future in admin.alter_user_scram_credentials([deletion], request_timeout=timeout).values():
            future.result()
    set_quotas(bootstrap, {learner.name: None})


def remove_postgres_role(superuser_dsn: str, learner: Learner) -> list[str]:
    """Lock the learner's role, end their sessions, drop their databases and the role; return the databases."""
    import psycopg
    from psycopg import sql

    role = sql.Identifier(learner.name)
    dropped = []
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (learner.name,)).fetchone()
        if exists:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                         (learner.name,))
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (learner.database_prefix,))]
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            dropped.append(name)
        if exists:
            # DROP OWNED also revokes what the role was granted here and on shared objects (its CONNECT).
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
            conn.execute(sql.SQL("DROP ROLE {}").format(role))
        hba_row = conn.execute("SHOW hba_file").fetchone()
        assert hba_row is not None
        hba = Path(hba_row[0])
        kept = [line for line in hba.read_text().splitlines(keepends=True) if line != hba_line(learner)]
        hba.write_text("".join(kept))
        conn.execute("SELECT pg_reload_conf()")
    return dropped


def remove_kafka_data(stack, learner: Learner, timeout: float = 60.0) -> str:
    """Delete the learner's topics and consumer groups; say how many went.

    A group is deleted once it has no member: the learner's consumers, refused
    since their ACLs went, leave it within their session timeout.
    """
    import time

    admin = stack.admin()
    topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(learner.kafka_prefix)]
    stack.delete_topics(*topics)
    deadline = time.monotonic() + timeout
    groups = learner_groups(admin, learner.kafka_prefix)
    while groups and time.monotonic() < deadline:
        for future in admin.delete_consumer_groups(groups, request_timeout=15).values():
            try:
                future.result()
            except Exception:
                pass  # still has members: asked again below
        groups = learner_groups(admin, learner.kafka_prefix)
        if groups:
            time.sleep(1)
    if groups:
        raise RuntimeError(f"consumer group(s) {', '.join(groups)} still have members after {timeout:.0f} s")
    left = [t for t in admin.list_topics(timeout=30).topics if t.startswith(learner.kafka_prefix)]
    if left:
        raise RuntimeError(f"topic(s) {', '.join(left)} were not deleted")
    return f"{len(topics)} topic(s) and their consumer groups"


def learner_groups(admin, prefix: str) -> list[str]:
    """The consumer groups whose ids start with ``prefix``."""
    listed = admin.list_consumer_groups(request_timeout=30).result()
    return sorted(g.group_id for g in listed.valid if g.group_id.startswith(prefix))


# -- status ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupLag:
    """A consumer group of a learner: its state, how many members, and how far behind it is."""

    group: str
    state: str
    members: int
    lag: int                                # records not committed past, over every partition it committed in
    topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class LearnerStatus:
    """One learner as ``workshop status`` shows them."""

    name: str
    connected: bool                         # a PostgreSQL session now, or a member in one of their groups
    postgres_sessions: int
    topics: tuple[str, ...]
    groups: tuple[GroupLag, ...]
    databases: tuple[str, ...]
    last_run: RunRecord | None = None


def room_status(stack) -> list[LearnerStatus]:
    """Every learner's status, read live from PostgreSQL and the broker as the instructor."""
    import psycopg

    from effectively_once.run_results import last_runs

    names = learner_roles(stack.base_dsn)
    with psycopg.connect(stack.base_dsn) as conn:
        sessions: dict[str, int] = dict(conn.execute(
            "SELECT usename, count(*) FROM pg_stat_activity WHERE usename = ANY(%s) GROUP BY usename",
            (names,)).fetchall())
        databases = conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()
    admin = stack.admin()
    topics = sorted(admin.list_topics(timeout=30).topics)
    groups = group_lags(admin, [g for name in names for g in learner_groups(admin, f"{name}.")])
    runs = last_runs(stack.kafka_bootstrap, names)
    report = []
    for name in names:
        learner = Learner(name, "")
        mine = tuple(g for g in groups if g.group.startswith(learner.kafka_prefix))
        used = int(sessions.get(name, 0))
        report.append(LearnerStatus(
            name=name, connected=used > 0 or any(g.members for g in mine), postgres_sessions=used,
            topics=tuple(t for t in topics if t.startswith(learner.kafka_prefix)), groups=mine,
            databases=tuple(row[0] for row in databases if row[0].startswith(learner.database_prefix)),
            last_run=runs.get(name)))
    return report


def group_lags(admin, group_ids: list[str], timeout: float = 30.0) -> list[GroupLag]:
    """Each group's state, members and lag (the log end offset minus its committed offset, summed)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    if not group_ids:
        return []
    described = {g: f.result() for g, f in admin.describe_consumer_groups(group_ids, request_timeout=timeout).items()}
    committed: dict[str, list] = {}
    for group in group_ids:  # the call takes one group at a time
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)
        committed[group] = [tp for tp in next(iter(futures.values())).result().topic_partitions if tp.offset >= 0]
    partitions = {(tp.topic, tp.partition) for tps in committed.values() for tp in tps}
    ends: dict[tuple[str, int], int] = {}
    if partitions:
        asked = {TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions}
        for tp, future in admin.list_offsets(asked, request_timeout=timeout).items():
            try:
                ends[(tp.topic, tp.partition)] = future.result().offset
            except Exception:
                pass  # a topic deleted meanwhile: no lag to count
    lags = []
    for group in group_ids:
        description = described[group]
        lag = sum(max(0, ends.get((tp.topic, tp.partition), tp.offset) - tp.offset) for tp in committed[group])
        lags.append(GroupLag(group=group, state=str(description.state).rsplit(".", 1)[-1].lower(),
                             members=len(description.members), lag=lag,
                             topics=tuple(sorted({tp.topic for tp in committed[group]}))))
    return lags


def show_status(stack, as_json: bool = False) -> int:
    """Print the room's status: a paragraph per learner, or a JSON object per learner."""
    import json
    from dataclasses import asdict

    report = room_status(stack)
    if as_json:
        for learner in report:
            print(json.dumps(asdict(learner)))
        return 0
    if not report:
        print("No learner on this stack yet: `workshop add-learners N --out DIR` adds them.")
        return 0
    connected = sum(1 for learner in report if learner.connected)
    print(f"{len(report)} learner(s), {connected} connected now.")
    for learner in report:
        state = f"connected ({learner.postgres_sessions} PostgreSQL session(s))" if learner.connected else \
            "not connected"
        print(f"{learner.name}: {state}")
        print(f"  topics     {', '.join(learner.topics) or '-'}")
        for group in learner.groups:
            print(f"  group      {group.group}: {group.state}, {group.members} member(s), lag {group.lag}")
        print(f"  databases  {', '.join(learner.databases) or '-'}")
        print(f"  last run   {learner.last_run.summary() if learner.last_run else '-'}")
    return 0
