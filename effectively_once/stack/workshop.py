"""``python -m effectively_once workshop add-learners N --out DIR``: logins for a room, one file per learner.

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

from effectively_once.kafka import CLIENT_CONFIG_ENV
from effectively_once.stack.kafka_broker import SCRAM_MECHANISM, scram_client_settings

HELP = "hand out logins for a workshop room on the secured stack (`workshop add-learners N --out DIR`)"
PREFIX = "learner"
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


def run(args: argparse.Namespace) -> int:
    """Add the learners; 0 when every one was created, 1 when the stack is missing or refused, 2 on bad input."""
    if args.count < 1:
        print("workshop add-learners: N must be at least 1.", file=sys.stderr)
        return 2
    from effectively_once.stack.state import attach, read_state

    record = read_state()
    if not record or not record.get("ready") or not record.get("secure"):
        print("No secured stack is running: start one with "
              "`python -m effectively_once up --backend embedded --secure`.", file=sys.stderr)
        return 1
    stack = attach(record)  # logs this process in as the instructor
    learners = new_learners(args.out, args.count)
    taken = existing_roles(stack.base_dsn, [learner.name for learner in learners])
    if taken:
        print(f"workshop add-learners: on this stack already: {', '.join(taken)}. Pass the --out directory "
              "that holds their files, so the new names continue after them.", file=sys.stderr)
        return 2
    try:
        for learner in learners:
            add_kafka_user(stack.kafka_bootstrap, learner)
        add_postgres_roles(stack.base_dsn, learners)
    except Exception as exc:
        print(f"workshop add-learners: the stack refused a change ({exc}); check `python -m effectively_once "
              "status`, then run the command again (it makes new names).", file=sys.stderr)
        return 1
    for learner in learners:
        path = write_learner_file(args.out, learner, stack.kafka_bootstrap, stack.base_dsn)
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
    """Create each learner's role (LOGIN, CREATEDB, a password), let it into ``postgres``, and reload pg_hba.conf."""
    import psycopg
    from psycopg import sql

    from effectively_once.stack.secure import lock_databases

    lock_databases(superuser_dsn)
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        for learner in learners:
            role = sql.Identifier(learner.name)
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                role, sql.Literal(learner.password)))
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
