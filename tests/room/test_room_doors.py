"""A room's fairness and its doors, on a secured stack of three learners.

- One learner's flood (a producer at full speed under their prefix) does not
  push another learner's run past twice its time alone: the broker's per-user
  quotas throttle the flood.
- A learner at their PostgreSQL CONNECTION LIMIT gets one sentence naming it
  and the fix, never a traceback from the provider's start.
- ``workshop remove-learner`` leaves nothing of theirs, and the removed
  learner is refused at every door: Kafka's login, PostgreSQL's login, the
  connections they held, and the commands their file runs.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effectively_once.connections import LEARNER_CONNECTION_LIMIT
from effectively_once.kafka import client_settings
from effectively_once.stack.room import LEARNER_QUOTA, read_room
from tests.conftest import ROOT, run_cli
from tests.room.room_helpers import (
    charged_exactly_once,
    finish_demo,
    load_average,
    secured_room,
    start_demo,
    timed_demo,
)

pytestmark = pytest.mark.timeout(1800)

FLOODER = r"""
import json, os, signal, sys, time
from confluent_kafka import Producer
from effectively_once.kafka import client_settings, ensure_topic, quiet_logger

stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
bootstrap = os.environ["EO_KAFKA_BOOTSTRAP"]
topic = ensure_topic(bootstrap, os.environ["EO_NAMESPACE"] + ".flood", 3)
producer = Producer({"bootstrap.servers": bootstrap, **client_settings(), "acks": "1", "linger.ms": 5,
                     "queue.buffering.max.kbytes": 8192, "logger": quiet_logger()})
acked = [0]
def delivered(error, message):
    if error is None:
        acked[0] += len(message.value())
value = os.urandom(100_000)
started = time.monotonic()
print("flooding", flush=True)
while not stop:
    try:
        producer.produce(topic, value, on_delivery=delivered)
    except BufferError:
        producer.poll(0.05)
    producer.poll(0)
# What the broker took while the flood ran: the records still queued here are not counted.
taken, seconds = acked[0], time.monotonic() - started
producer.purge()
producer.flush(10)
print(json.dumps({"bytes": taken, "seconds": seconds}), flush=True)
"""


@pytest.fixture(scope="module")
def room():
    with secured_room(3, prefix="eo-room-doors-") as secured:
        yield secured


def start_flood(env: dict[str, str]) -> subprocess.Popen:
    """A producer at full speed under the learner's prefix, until SIGTERM; it prints the bytes the broker took."""
    proc = subprocess.Popen([sys.executable, "-c", FLOODER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "flooding", f"the flood did not start: {line}{proc.stderr.read() if proc.stderr else ''}"
    return proc


# Commits the end of the learner's `.runs` topic in a group of theirs, as a reader that is done would:
# a group that stays (a demo's own groups go with its run, when the run's watchdog cleans up after it).
COMMITTED_READER = r"""
import os
from confluent_kafka import Consumer, TopicPartition
from effectively_once.kafka import client_settings, quiet_logger

ns = os.environ["EO_NAMESPACE"]
consumer = Consumer({"bootstrap.servers": os.environ["EO_KAFKA_BOOTSTRAP"], **client_settings(),
                     "group.id": ns + ".status-check", "enable.auto.commit": False, "logger": quiet_logger()})
topic = ns + ".runs"
partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1])
        for p in partitions]
consumer.commit(offsets=ends, asynchronous=False)
consumer.close()
print(sum(tp.offset for tp in ends))
"""


def test_one_learners_flood_does_not_double_anothers_run(room):
    runner = room.learner_env(2)
    first_alone, report = timed_demo(runner)
    assert charged_exactly_once(report), report
    flood = start_flood(room.learner_env(1))
    try:
        time.sleep(5)  # the flood is at full speed when the run starts
        flooded, report = timed_demo(runner)
        assert charged_exactly_once(report), report
    finally:
        flood.send_signal(signal.SIGTERM)
        out, err = flood.communicate(timeout=120)
    second_alone, report = timed_demo(runner)
    assert charged_exactly_once(report), report
    alone = statistics.mean([first_alone, second_alone])
    taken = json.loads(out.strip().splitlines()[-1])
    rate = taken["bytes"] / taken["seconds"]
    print(f"\nlearner02's demo alone {first_alone:.1f} s and {second_alone:.1f} s, during learner01's flood "
          f"{flooded:.1f} s: {flooded / alone:.2f}x (load average {load_average()}); the flood got "
          f"{rate / 2**20:.2f} MiB/s through, its quota is {LEARNER_QUOTA.producer_byte_rate / 2**20:.0f} MiB/s")
    assert rate <= 3 * LEARNER_QUOTA.producer_byte_rate, "the broker did not throttle the flood to its quota"
    assert flooded <= 2 * alone, f"the flood pushed the run to {flooded / alone:.2f}x its time alone"

    reader = subprocess.run([sys.executable, "-c", COMMITTED_READER], capture_output=True, text=True,
                            env=runner, cwd=ROOT, timeout=120)
    assert reader.returncode == 0 and int(reader.stdout.split()[-1]) >= 3, reader.stderr
    status = run_cli("workshop", "status", "--json", env=room.env)
    assert status.returncode == 0, status.stderr
    learners = {s["name"]: s for s in map(json.loads, status.stdout.splitlines())}
    assert "learner01.flood" in learners["learner01"]["topics"]
    runs = learners["learner02"]
    assert runs["last_run"]["ok"] and runs["last_run"]["charges"] == 10, runs
    assert "learner02.runs" in runs["topics"], runs
    assert "learner02.status-check" in [group["group"] for group in runs["groups"]], runs["groups"]
    assert all(group["lag"] == 0 and group["members"] == 0 for group in runs["groups"]), runs["groups"]
    assert learners["learner03"]["last_run"] is None


def test_a_learner_at_their_connection_limit_gets_one_sentence(room):
    import psycopg

    env = room.learner_env(2)
    held = [psycopg.connect(env["EO_POSTGRES_DSN"]) for _ in range(LEARNER_CONNECTION_LIMIT - 3)]
    try:
        proc = start_demo(env)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        for conn in held:
            conn.close()
    assert proc.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr, stderr
    assert f"the role learner02 has all {LEARNER_CONNECTION_LIMIT} of its PostgreSQL connections in use " \
           "(its CONNECTION LIMIT)" in stderr, stderr
    assert "shut down the kernels of the notebooks you are not using" in stderr


def test_a_removed_learner_leaves_nothing_and_is_refused_at_every_door(room):
    import psycopg
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    from effectively_once.kafka import quiet_logger

    name, env = "learner03", room.learner_env(3)
    finish_demo(start_demo(env, 10, 900.0, "--keep"))  # leaves its databases, topics and group behind
    kafka = {"bootstrap.servers": env["EO_KAFKA_BOOTSTRAP"], **client_settings(env["EO_KAFKA_CONFIG"]),
             "logger": quiet_logger()}
    instructor = room.instructor()
    admin = instructor.admin()
    assert [t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{name}.")]
    held_pg = psycopg.connect(env["EO_POSTGRES_DSN"], autocommit=True)
    held_producer = Producer({**kafka, "message.timeout.ms": 15000})
    held_producer.produce(f"{name}.runs", b"before")
    assert held_producer.flush(30) == 0

    removed = run_cli("workshop", "remove-learner", name, env=room.env)
    assert removed.returncode == 0, removed.stdout + removed.stderr

    # Nothing of theirs is left: topics, groups, ACLs, SCRAM credential, quotas, role, databases, pg_hba line.
    assert not [t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{name}.")]
    groups = admin.list_consumer_groups(request_timeout=30).result().valid
    assert not [g.group_id for g in groups if g.group_id.startswith(f"{name}.")]
    anything: str = None  # type: ignore[assignment]
    acls = admin.describe_acls(AclBindingFilter(ResourceType.ANY, anything, ResourcePatternType.ANY, f"User:{name}",
                                                anything, AclOperation.ANY, AclPermissionType.ANY),
                               request_timeout=30).result()
    assert acls == []
    with pytest.raises(KafkaException):
        next(iter(admin.describe_user_scram_credentials([name], request_timeout=30).values())).result()
    with instructor.quotas() as quotas:
        assert quotas.describe([name]) == {}
        assert set(quotas.describe(["learner01", "learner02"])) == {"learner01", "learner02"}
    with psycopg.connect(instructor.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                            (f"{name}\\_%",)).fetchone() == (0,)
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0]).read_text()
    assert f" {name} " not in hba and " learner02 " in hba
    assert read_room(Path(room.env["EO_HOME"]) / "secure-stack").learners == 2

    # Every door is shut: the connections they held, a new login on each server, and their file's commands.
    with pytest.raises(psycopg.OperationalError):
        held_pg.execute("SELECT 1")
    delivered: list = []
    held_producer.produce(f"{name}.runs", b"after", on_delivery=lambda error, _m: delivered.append(error))
    held_producer.flush(30)
    assert delivered and delivered[0] is not None, "a producer logged in before the removal still writes"
    with pytest.raises(KafkaException):
        AdminClient(kafka).list_topics(timeout=10)
    with pytest.raises(psycopg.OperationalError, match=f'password authentication failed for user "{name}"'):
        psycopg.connect(env["EO_POSTGRES_DSN"], connect_timeout=10)
    proc = start_demo(env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in stderr, stdout + stderr
    again = run_cli("workshop", "remove-learner", name, env=room.env)
    assert again.returncode == 2 and f"no learner {name} on this stack" in again.stderr
