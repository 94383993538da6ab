"""The stack against real services: the run's broker, real PostgreSQL, the CLI.

These run in make test, on Apache Kafka (embedded), and again in make test-tansu. The
stack's own life (`up`, a killed process, `down`) is in test_faults.py, on its
disposable stack.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from effectively_once import stack as stack_mod
from tests.conftest import run_cli

pytestmark = pytest.mark.tansu_pass


def _consume(stack, topic: str, group: str, expected: int, timeout: float = 30.0) -> list:
    consumer = Consumer(stack.consumer_config(**{"group.id": group}))
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            got.append(msg)
    finally:
        consumer.close()
    return got


def test_produce_and_consume_through_the_broker(stack):
    topic = stack.create_topic(f"roundtrip.{stack_mod.new_run_id()}", partitions=3)
    producer = Producer(stack.producer_config())
    for i in range(30):
        producer.produce(topic, key=f"c{i % 4}", value=f"v{i}".encode(), headers={"msg_id": f"m{i}"})
    assert producer.flush(15) == 0
    got = _consume(stack, topic, stack.group(f"g.{stack_mod.new_run_id()}"), 30)
    assert sorted(m.value().decode() for m in got) == sorted(f"v{i}" for i in range(30))
    assert all(dict(m.headers())["msg_id"].decode().startswith("m") for m in got)
    stack.delete_topics(topic)


def test_sql_through_postgres(stack):
    dsn = stack.create_database(f"sqltest_{stack_mod.new_run_id()}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table t (k text primary key, v int)")
        conn.execute("insert into t values ('a', 1) on conflict do nothing")
        inserted = conn.execute("insert into t values ('a', 2) on conflict do nothing").rowcount
        assert inserted == 0, "ON CONFLICT DO NOTHING must insert nothing for an existing key"
        assert conn.execute("select v from t where k = 'a'").fetchone() == (1,)
        assert conn.execute("select version()").fetchone()[0].startswith("PostgreSQL")
    stack.drop_database(dsn.rsplit("/", 1)[1].removeprefix(f"{stack.namespace}_"))


def test_flavor_is_detected_from_the_broker(stack):
    assert stack_mod.detect_broker_flavor(stack.kafka_bootstrap) == stack.broker_flavor
    expected = {"tansu": "tansu", "embedded": "apache-kafka", "docker": "apache-kafka"}.get(stack.backend)
    assert expected is None or stack.broker_flavor == expected


def test_consumer_config_suits_the_broker(stack):
    config = stack.consumer_config()
    from effectively_once.stack.kafka_settings import BROKER_SETTINGS

    if stack.backend == "external":
        assert config["session.timeout.ms"] >= 6000  # a cluster we did not configure: Kafka's minimum
    elif config.get("group.protocol") == "consumer":
        # KIP-848: the broker owns the session; ours lets a killed consumer go in about 2 s.
        assert "session.timeout.ms" not in config
        assert int(BROKER_SETTINGS["group.consumer.session.timeout.ms"]) <= 2000
    else:
        assert config["session.timeout.ms"] <= 2000
        assert config["heartbeat.interval.ms"] < config["session.timeout.ms"]
        if stack.broker_flavor == "apache-kafka":
            assert config["session.timeout.ms"] >= int(BROKER_SETTINGS["group.min.session.timeout.ms"])
    assert stack.consumer_config(**{"group.id": "x"})["group.id"] == "x"


def test_namespaces_do_not_see_each_other(stack):
    alice = stack_mod.attach(stack_mod.running_record())
    bob = stack_mod.attach(stack_mod.running_record())
    alice.namespace, bob.namespace = "alice", "bob"
    run = stack_mod.new_run_id()
    a_topic, b_topic = alice.create_topic(f"iso.{run}"), bob.create_topic(f"iso.{run}")
    assert a_topic != b_topic
    assert a_topic in alice.list_topics() and a_topic not in bob.list_topics()
    assert b_topic in bob.list_topics() and b_topic not in alice.list_topics()
    a_dsn, b_dsn = alice.create_database(f"iso_{run}"), bob.create_database(f"iso_{run}")
    assert a_dsn != b_dsn
    with psycopg.connect(a_dsn, autocommit=True) as conn:
        conn.execute("create table charges (msg_id text primary key)")
        conn.execute("insert into charges values ('only-alice')")
    with psycopg.connect(b_dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('charges')").fetchone() == (None,)
    producer = Producer(alice.producer_config())
    producer.produce(a_topic, value=b"alice's message")
    producer.flush(10)
    got = _consume(bob, b_topic, bob.group(f"iso.{run}"), 1, timeout=3)
    assert got == [], "bob's topic must not hold alice's message"
    alice.delete_topics(a_topic)
    bob.delete_topics(b_topic)
    alice.drop_database(f"iso_{run}")
    bob.drop_database(f"iso_{run}")


def test_status_json_reports_a_healthy_stack(stack):
    result = run_cli("status", "--json")
    report = json.loads(result.stdout)
    for key in ("backend", "broker_flavor", "kafka_bootstrap", "postgres_dsn", "healthy", "pids"):
        assert key in report
    assert report["healthy"] is True
    assert set(report["pids"]) >= ({"keeper", "broker", "postgres"} if stack.backend in ("embedded", "tansu")
                                   else {"keeper"})
    assert report["broker_version"], "status --json names the broker's version"
    if stack.backend == "embedded":
        from effectively_once.stack.kafka_settings import KAFKA_VERSION

        assert report["broker_version"] == KAFKA_VERSION and report["java"]


def test_up_twice_says_so_and_exits_zero(stack):
    result = run_cli("up", "--backend", stack.backend)
    assert result.returncode == 0
    assert "already running" in result.stdout


def test_docker_backend_without_docker_gives_one_sentence_and_the_fix(private_home):
    ok, _ = stack_mod.docker_available()
    if ok:
        pytest.skip("Docker is available here; the no-Docker message cannot be shown")
    result = run_cli("up", "--backend", "docker", env=private_home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Docker is not running" in result.stderr and "EO_BACKEND=embedded" in result.stderr
    from effectively_once.stack.docker import start_docker

    with pytest.raises(stack_mod.StackError, match="--backend embedded"):
        start_docker(progress=lambda *_: None)


def test_external_backend_attaches_to_given_servers(stack, monkeypatch):
    monkeypatch.setenv("EO_KAFKA_BOOTSTRAP", stack.kafka_bootstrap)
    monkeypatch.setenv("EO_POSTGRES_DSN", stack.postgres_dsn("postgres"))
    with stack_mod.start("external", progress=lambda *_: None) as external:
        assert external.backend == "external" and external.broker_flavor == stack.broker_flavor
        assert external.health()["healthy"]
    assert stack.health()["healthy"], "stopping an external stack must not stop the servers"


def test_doctor_reports_each_check():
    result = run_cli("doctor")
    assert "python" in result.stdout and "auto backend" in result.stdout and "free disk" in result.stdout
    for check in ("java", "kafka jars", "kafka version"):
        assert f" {check} " in result.stdout, f"doctor does not report {check}"


