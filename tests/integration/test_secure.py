"""The workshop stack with a lock on each door: `up --secure`, `workshop add-learners`, and what a learner may reach.

These tests bring up their own secured stack in a private EO_HOME (the run's
stack is left alone), add two learners, run `demo` as the first through the
external backend, and check every door the second finds shut. The pieces that
need no stack are in tests/unit/test_secure.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from effectively_once.kafka import client_settings
from effectively_once.stack.secure import read_env_file
from tests.conftest import run_cli

# What a learner's shell must not carry into the tests' own commands.
CLIENT_ENV = ("EO_BACKEND", "EO_NAMESPACE", "EO_KAFKA_BOOTSTRAP", "EO_KAFKA_CONFIG", "EO_POSTGRES_DSN")


# -- a secured stack -----------------------------------------------------------------------------
def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["EO_HOME"] = str(home)
    return env


def _up(env: dict[str, str], *extra: str) -> None:
    result = run_cli("up", "--backend", "embedded", *extra, env=env)
    assert result.returncode == 0, f"`up {' '.join(extra)}` failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def room():
    """A secured stack in a private EO_HOME and two learners' files.

    What the lock costs at start-up is benchmarks/stack_start.py --secure's to measure, side by side.
    """
    base = Path(tempfile.mkdtemp(prefix="eo-secure-"))
    secure_env = _clean_env(base / "secure")
    try:
        _up(secure_env, "--secure")
        added = run_cli("workshop", "add-learners", "2", "--out", str(base / "room"), env=secure_env)
        assert added.returncode == 0, added.stdout + added.stderr
        yield {"env": secure_env, "room": base / "room", "base": base,
               "learners": [read_env_file(base / "room" / f"learner0{n}.env") for n in (1, 2)]}
    finally:
        run_cli("down", "--purge", env=secure_env)
        shutil.rmtree(base, ignore_errors=True)


def _kafka(learner: dict[str, str], **settings) -> dict:
    return {"bootstrap.servers": learner["EO_KAFKA_BOOTSTRAP"], **client_settings(learner["EO_KAFKA_CONFIG"]),
            "logger": _silent(), **settings}


def _learner_env(room: dict, learner: dict[str, str], name: str) -> dict[str, str]:
    env = _clean_env(room["base"] / f"home-{name}")
    env.update(learner)
    return env


def test_status_shows_the_instructors_private_credentials_file(room):
    report = json.loads(run_cli("status", "--json", env=room["env"]).stdout)
    assert report["healthy"] and report["secure"], report
    path = Path(report["credentials_file"])
    assert path.parent == Path(room["env"]["EO_HOME"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ":" not in report["postgres_dsn"].split("//", 1)[1].split("@", 1)[0], "status shows no password"
    instructor = read_env_file(path)
    assert client_settings(instructor["EO_KAFKA_CONFIG"])["sasl.username"] == "instructor"
    for name in ("learner01", "learner02"):
        learner_file = room["room"] / f"{name}.env"
        assert stat.S_IMODE(learner_file.stat().st_mode) == 0o600
        values = read_env_file(learner_file)
        assert set(CLIENT_ENV) <= set(values)
        assert values["EO_BACKEND"] == "external" and values["EO_NAMESPACE"] == name


def test_adding_learners_again_elsewhere_is_refused_before_any_change(room):
    again = run_cli("workshop", "add-learners", "1", "--out", str(room["base"] / "elsewhere"), env=room["env"])
    assert again.returncode == 2
    assert "on this stack already: learner01. Pass the --out directory" in again.stderr
    assert not (room["base"] / "elsewhere").exists()


def test_no_login_no_broker(room):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    learner = room["learners"][0]
    anonymous = AdminClient({"bootstrap.servers": learner["EO_KAFKA_BOOTSTRAP"], "logger": _silent()})
    with pytest.raises(KafkaException):
        anonymous.list_topics(timeout=3)
    wrong = AdminClient(_kafka(learner, **{"sasl.password": "not-the-password"}))
    with pytest.raises(KafkaException):
        wrong.list_topics(timeout=3)


def test_a_learner_runs_the_demo_through_the_external_backend(room):
    learner = room["learners"][0]
    result = run_cli("demo", "--json", "--messages", "6", env=_learner_env(room, learner, "learner01"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend: external" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["charges"] == report["messages"] == 6, report
    assert report["lost_charges"] == 0 and report["duplicate_charges"] == 0, report


def test_a_second_learner_finds_every_door_of_the_first_shut(room):
    import psycopg
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    first, second = room["learners"]
    topic, group, database = "learner01.private", "learner01.private-group", "learner01_private"

    # The first learner makes a topic with a record, a group with a committed offset, and a database.
    first_admin = AdminClient(_kafka(first))  # an admin client must outlive its futures
    for future in first_admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=30)
    producer = Producer(_kafka(first, **{"enable.idempotence": True, "acks": "all"}))
    producer.produce(topic, b"the first learner's record")
    assert producer.flush(30) == 0
    owner = Consumer(_kafka(first, **{"group.id": group, "auto.offset.reset": "earliest",
                                      "enable.auto.commit": False}))
    owner.subscribe([topic])
    record = None
    deadline = time.monotonic() + 30
    while record is None and time.monotonic() < deadline:
        polled = owner.poll(0.5)
        if polled is not None and polled.error() is None:
            record = polled
    assert record is not None and record.value() == b"the first learner's record"
    owner.commit(record, asynchronous=False)
    owner.close()
    with psycopg.connect(first["EO_POSTGRES_DSN"], autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database}")
        conn.execute(f"CREATE DATABASE {database}")
    own_dsn = first["EO_POSTGRES_DSN"].rsplit("/", 1)[0] + f"/{database}"
    with psycopg.connect(own_dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    # List: the topic is not in the second learner's metadata, and asking for it by name is refused.
    admin = AdminClient(_kafka(second))
    assert not [t for t in admin.list_topics(timeout=10).topics if t.startswith("learner01.")]
    assert admin.list_topics(topic, timeout=10).topics[topic].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # Read: subscribing to it is refused.
    reader = Consumer(_kafka(second, **{"group.id": "learner02.reader", "auto.offset.reset": "earliest"}))
    reader.subscribe([topic])
    refusal = _first_error(reader)
    reader.close()
    assert refusal is not None and refusal.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refusal

    # Write: the record is refused.
    delivered: list = []
    writer = Producer(_kafka(second))
    writer.produce(topic, b"intruder", on_delivery=lambda error, _msg: delivered.append(error))
    writer.flush(30)
    assert delivered and delivered[0] is not None
    assert delivered[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, delivered

    # Join the group: refused, even on a topic of the second learner's own.
    for future in admin.create_topics([NewTopic("learner02.own", 1, 1)]).values():
        future.result(timeout=30)
    joiner = Consumer(_kafka(second, **{"group.id": group, "auto.offset.reset": "earliest"}))
    joiner.subscribe(["learner02.own"])
    refusal = _first_error(joiner)
    joiner.close()
    assert refusal is not None and refusal.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, refusal

    # A transactional id under the first learner's prefix: refused.
    fencer = Producer(_kafka(second, **{"transactional.id": "learner01.tx"}))
    with pytest.raises(KafkaException) as refused:
        fencer.init_transactions(30)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED

    # Connect to the database: refused by pg_hba.conf, before any password is asked.
    second_dsn = second["EO_POSTGRES_DSN"].rsplit("/", 1)[0]
    for other in (database, "template1"):
        with pytest.raises(psycopg.OperationalError, match=f'no pg_hba.conf entry .* user "learner02", '
                                                          f'database "{other}"'):
            psycopg.connect(f"{second_dsn}/{other}", connect_timeout=5)
    # ...nor does the first learner's role name open it with the second learner's password.
    second_password = client_settings(second["EO_KAFKA_CONFIG"])["sasl.password"]
    server = own_dsn.split("@", 1)[1]
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "learner01"'):
        psycopg.connect(f"postgresql://learner01:{second_password}@{server}", connect_timeout=5)


def _first_error(consumer, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        polled = consumer.poll(0.5)
        if polled is not None and polled.error() is not None:
            return polled.error()
    return None


def _silent():
    import logging

    logger = logging.getLogger("tests.secure.silent")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def test_down_and_up_keep_the_room(room):
    """The users, ACLs and roles live in the stack's files, so `up --secure` again keeps them (run last)."""
    import psycopg
    from confluent_kafka.admin import AdminClient, NewTopic

    first, second = room["learners"]
    admin = AdminClient(_kafka(first))
    for future in admin.create_topics([NewTopic("learner01.kept", 1, 1)]).values():
        future.result(timeout=30)
    assert run_cli("down", env=room["env"]).returncode == 0
    up = run_cli("up", "--backend", "embedded", "--secure", env=room["env"])
    assert up.returncode == 0, up.stdout + up.stderr
    assert "learner01.kept" in AdminClient(_kafka(first)).list_topics(timeout=30).topics
    assert not [t for t in AdminClient(_kafka(second)).list_topics(timeout=30).topics if t.startswith("learner01.")]
    with psycopg.connect(first["EO_POSTGRES_DSN"], connect_timeout=5) as conn:
        assert conn.execute("select current_user").fetchone() == ("learner01",)
