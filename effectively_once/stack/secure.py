"""The secured stack (``up --secure``): its passwords, and the ``.env`` files that carry logins.

A secured embedded stack has two passwords, both the instructor's: Kafka's
super user (``instructor``, SCRAM) and PostgreSQL's superuser (``postgres``).
They are made once and kept in ``root/credentials.json`` (mode 0600), so the
stack's files stay usable across ``down`` and ``up``. The instructor's logins
are written to ``$EO_HOME/instructor.env`` (mode 0600), in the same form as a
learner's file, so the instructor can act as any client of the cluster does.

An ``.env`` file here is ``NAME=value`` lines, no quotes, ``#`` comments: a
shell reads it with ``set -a; . ./learner01.env; set +a``, and so do Docker's
``--env-file`` and python-dotenv.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from effectively_once.kafka import CLIENT_CONFIG_ENV
from effectively_once.settings import eo_home
from effectively_once.stack.kafka_broker import INSTRUCTOR, scram_client_settings

INSTRUCTOR_FILE = "instructor.env"
SECURE_ROOT = "secure-stack"


def new_password() -> str:
    """A random password of 24 URL-safe characters (letters, digits, ``-`` and ``_``: no quoting needed)."""
    return secrets.token_urlsafe(18)


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, readable by its owner only (0600) from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an existing file keeps its old mode through os.open
    return path


def stack_passwords(root: Path) -> dict[str, str]:
    """The instructor's passwords of the secured stack kept in ``root``: read, or made on the first start."""
    path = root / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    passwords = {"kafka": new_password(), "postgres": new_password()}
    root.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(passwords, indent=2))
    return passwords


def client_config_text(settings: dict[str, str]) -> str:
    """librdkafka settings as ``EO_KAFKA_CONFIG`` holds them: ``key=value`` pairs joined by commas."""
    return ",".join(f"{key}={value}" for key, value in settings.items())


def env_text(values: dict[str, str], header: str) -> str:
    """An ``.env`` file: ``header`` as comments, then one ``NAME=value`` line per value."""
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comments + "".join(f"{name}={value}\n" for name, value in values.items())


def read_env_file(path: Path) -> dict[str, str]:
    """The ``NAME=value`` lines of an ``.env`` file (comments and blank lines skipped)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def instructor_file() -> Path:
    """Where ``up --secure`` writes the instructor's logins: ``$EO_HOME/instructor.env``."""
    return eo_home() / INSTRUCTOR_FILE


def write_instructor_file(bootstrap: str, postgres_dsn: str, kafka_password: str) -> Path:
    """Write the instructor's ``.env`` file (0600) and return its path."""
    values = {
        "EO_BACKEND": "external",
        "EO_NAMESPACE": INSTRUCTOR,
        "EO_KAFKA_BOOTSTRAP": bootstrap,
        CLIENT_CONFIG_ENV: client_config_text(scram_client_settings(INSTRUCTOR, kafka_password)),
        "EO_POSTGRES_DSN": postgres_dsn,
    }
    header = ("The instructor's logins to the secured workshop stack (`up --secure`).\n"
              "Super user of Kafka and PostgreSQL: keep this file to yourself.")
    return write_private(instructor_file(), env_text(values, header))


def use_instructor_login(path: Path) -> dict[str, str]:
    """Log this process (and its children) in as the instructor: set ``EO_KAFKA_CONFIG`` from ``path``.

    An ``EO_KAFKA_CONFIG`` already set is kept. Returns the file's values.
    """
    values = read_env_file(path)
    if values.get(CLIENT_CONFIG_ENV):
        os.environ.setdefault(CLIENT_CONFIG_ENV, values[CLIENT_CONFIG_ENV])
    return values


def hide_password(dsn: str) -> str:
    """``dsn`` with its password left out (``postgresql://postgres@host:port/db``), for status and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    server = parts.netloc.rsplit("@", 1)[1]  # host and port as written ([::1] keeps its brackets)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{server}"))


def lock_databases(superuser_dsn: str) -> list[str]:
    """Revoke CONNECT (and TEMPORARY) from PUBLIC on every database that takes connections; return their names.

    template1 included: it is what CREATE DATABASE copies. A database's own
    privileges are not copied with it, though, so a learner's new database is
    kept from the others by pg_hba.conf (one line per learner) rather than by this.
    """
    import psycopg
    from psycopg import sql

    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        names = [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")]
        for name in names:
            conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    return names
