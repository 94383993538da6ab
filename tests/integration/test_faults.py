"""Faults a production pipeline meets, on one disposable stack: the broker, PostgreSQL, the provider killed.

The module's tests share one disposable stack (its own EO_HOME, started with
`up`), never the run's: killing its broker or PostgreSQL must not break the
tests that share the run's stack. They run in this file's order, which is the
stack's life:

* `up` gives a healthy stack, every process alive;
* a killed broker, and a killed PostgreSQL (on Tansu, a killed broker too), show
  as unhealthy in `status`, and `up` restarts them on their files;
* mid-run, the broker, the shop's PostgreSQL and the provider are killed, and
  every message still ends charged exactly once in the provider's ledger,
  every shop row 'done'; the idle exit does not fire while a consumer waits for
  a rebalance;
* `down` stops every process, and a second `down` says nothing is running.

The stack runs the broker at hand, embedded Apache Kafka or (in make
test-tansu) Tansu; only the tests marked ``tansu_pass`` run on Tansu. Each test
prints its outcome (times to recover, counts charged): run with ``pytest -s``
to see them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from effectively_once import stack as stack_mod
from effectively_once.payments.lab import PaymentLab
from effectively_once.protocol import EXIT_RESTART, EventKind, ProcessEvent, parse_events
from effectively_once.stack.jars import KAFKA_VERSION
from effectively_once.stack.processes import pid_alive
from effectively_once.stack.record import StackRecord, read_record
from tests.conftest import containers_of, run_cli

# Enough provider retries (full jitter, at most 1 s apart) to ride out a restart of the provider
# or its database, instead of dead-lettering the message that was in flight.
PATIENT = {"max_retries": 40}
# Tansu in make test-tansu, the containers in make test-docker; embedded Apache Kafka otherwise.
BACKEND = os.environ.get("EO_BACKEND") if os.environ.get("EO_BACKEND") in ("tansu", "docker") else "embedded"


# -- the disposable stack ------------------------------------------------------------------------
@dataclass
class DisposableStack:
    """The module's stack: its EO_HOME environment and the record `up` wrote."""

    env: dict
    home: Path

    def record(self) -> StackRecord:
        return StackRecord.from_json(json.loads((self.home / "stack.json").read_text()))

    def attach(self):
        return stack_mod.attach(self.record())

    def incarnation(self, name: str) -> str:
        """Which start of server ``name`` runs now: its pid, or (docker) its container's start time."""
        record = self.record()
        if name in record.containers:
            from effectively_once.stack.engine import docker_client

            return docker_client().containers.get(record.containers[name]).attrs["State"]["StartedAt"]
        return str(record.pids[name])

    def sigkill(self, name: str, group: bool = False) -> None:
        """SIGKILL server ``name``: its process (its process group with ``group``), or its container."""
        record = self.record()
        if name in record.containers:
            from effectively_once.stack.engine import docker_client

            docker_client().containers.get(record.containers[name]).kill()  # every process in it
        else:
            (os.killpg if group else os.kill)(record.pids[name], signal.SIGKILL)

    def up(self) -> tuple[float, str]:
        """`python -m effectively_once up` on this home: (seconds it took, its output)."""
        started = time.monotonic()
        result = run_cli("up", "--backend", BACKEND, env=self.env)
        assert result.returncode == 0, f"`up` failed:\n{result.stdout}\n{result.stderr}"
        return time.monotonic() - started, result.stdout

    def status(self) -> dict:
        return json.loads(run_cli("status", "--json", env=self.env).stdout)


@pytest.fixture(scope="module")
def disposable():
    """The module's disposable stack, started with `up`; purged at the end, whatever state the tests left it in.

    Outside pytest's tmp_path for the reason ``private_home`` gives (PostgreSQL,
    run as its own user, must traverse every parent of its data directory).
    """
    base = Path(tempfile.mkdtemp(prefix="eo-disposable-home-"))
    env = os.environ.copy()
    env["EO_HOME"] = str(base / "home")
    env["EO_BACKEND"] = BACKEND
    stack = DisposableStack(env, base / "home")
    seconds, _ = stack.up()
    print(f"\n[faults] disposable {BACKEND} stack up in {seconds:.1f} s")
    yield stack
    left = read_record(stack.home / "stack.json")
    pids = left.pids if left else {}
    down = run_cli("down", "--purge", env=env)
    shutil.rmtree(base, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert not [name for name, pid in pids.items() if pid_alive(pid)], "a process of the disposable stack is left"
    if BACKEND == "docker":
        assert containers_of(stack.home) == [], "a container of the disposable stack is left"


# -- the stack's own life --------------------------------------------------------------------------
@pytest.mark.tansu_pass
def test_up_gives_a_healthy_stack_with_every_process_alive(disposable):
    report = disposable.status()
    assert report["healthy"] and report["backend"] == BACKEND
    assert all(pid_alive(pid) for pid in report["pids"].values())


def test_a_killed_broker_is_unhealthy_and_up_restarts_it_with_its_log(disposable):
    report = disposable.status()
    assert report["broker_flavor"] == "apache-kafka" and report["broker_version"] == KAFKA_VERSION
    assert report["java"] and Path(report["java"]).exists()
    running = stack_mod.attach(StackRecord.from_report(report))
    topic = running.create_topic("survives-restart", partitions=1)
    producer = Producer(running.producer_config())
    for i in range(5):
        producer.produce(topic, value=f"record {i}".encode())
    assert producer.flush(15) == 0

    os.kill(report["pids"]["broker"], signal.SIGKILL)
    time.sleep(0.3)
    status = run_cli("status", env=disposable.env)
    assert status.returncode == 1 and "the broker process" in status.stdout and "not running" in status.stdout

    again = run_cli("up", env=disposable.env)
    assert again.returncode == 0 and "restarting it" in again.stdout, again.stdout + again.stderr
    after = disposable.status()
    assert after["healthy"] and after["pids"]["broker"] != report["pids"]["broker"]
    restarted = stack_mod.attach(StackRecord.from_report(after))
    assert topic in restarted.list_topics()
    consumer = Consumer(restarted.consumer_config(**{"group.id": restarted.group("survivor")}))
    consumer.subscribe([topic])
    values, deadline = [], time.monotonic() + 30
    while len(values) < 5 and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
    consumer.close()
    assert values == [f"record {i}" for i in range(5)], "the records written before the kill must survive it"
    restarted.delete_topics(topic)


# On embedded Apache Kafka the killed broker has its own test above, with its records.
@pytest.mark.tansu_pass
@pytest.mark.parametrize("victim", ["postgres"] if BACKEND == "embedded" else ["broker", "postgres"])
def test_a_process_killed_from_outside_shows_as_unhealthy(disposable, victim):
    in_container = victim in disposable.record().containers
    disposable.sigkill(victim)  # docker: the server is its container's process, killed as `docker kill` does
    time.sleep(0.3)
    text = run_cli("status", env=disposable.env)
    assert text.returncode == 1
    assert f"the {victim} {'container' if in_container else 'process'}" in text.stdout and "not running" in text.stdout
    assert "python -m effectively_once down && python -m effectively_once up" in text.stdout
    after = disposable.status()
    assert after["healthy"] is False and after["fix"]
    # The next tests need the stack: `up` restarts the dead process on its files.
    _, output = disposable.up()
    assert disposable.status()["healthy"], output


# -- helpers --------------------------------------------------------------------------------------
def ledger_counts(lab: PaymentLab) -> tuple[int, int]:
    """(ledger rows, distinct msg_ids) of this lab's messages: money moves and messages charged."""
    with psycopg.connect(lab.provider_dsn, connect_timeout=3) as conn:
        rows, distinct = conn.execute("SELECT count(*), count(DISTINCT msg_id) FROM ledger WHERE msg_id = ANY(%s)",
                                      (lab.msg_ids,)).fetchone()
    return rows, distinct


def charged(lab: PaymentLab) -> int:
    """Messages of the lab with money moved, or -1 while the provider's database cannot answer."""
    try:
        return ledger_counts(lab)[1]
    except psycopg.OperationalError:
        return -1


def wait_for_charges(lab: PaymentLab, at_least: int, timeout: float, keep=None) -> float:
    """Wait until ``at_least`` of the lab's messages are charged; seconds waited. ``keep()`` runs each turn."""
    started = time.monotonic()
    while charged(lab) < at_least:
        if time.monotonic() - started > timeout:
            logs = "\n---\n".join(c.log_tail(1500) for c in lab.consumers[-3:])
            raise TimeoutError(f"only {charged(lab)} of {at_least} charged after {timeout} s:\n{logs}")
        if keep is not None:
            keep()
        time.sleep(0.2)
    return time.monotonic() - started


def replace_exited(lab: PaymentLab, wanted: int, **options) -> list[int]:
    """Keep ``wanted`` consumers running: start one for each that exited asking for a restart or was killed.

    Returns the exit codes of the consumers it replaced. Any other exit fails the test with its log.
    """
    codes = []
    running = [c for c in lab.consumers if c.running]
    for consumer in lab.consumers:
        if consumer.running or getattr(consumer, "_replaced", False):
            continue
        consumer._replaced = True  # type: ignore[attr-defined]
        consumer.saved_log = consumer.log_tail(200_000)  # type: ignore[attr-defined]
        assert consumer.returncode in (0, -signal.SIGKILL, EXIT_RESTART), \
            f"a consumer exited with {consumer.returncode}:\n{consumer.log_tail()}"
        codes.append(consumer.returncode)
    for _ in range(wanted - len(running)):
        lab.start_consumer(exit_when_idle=None, **PATIENT, **options)
    return codes


def start_run(lab: PaymentLab, messages: int, seed: int, latency_ms: float = 30):
    """A provider taking ``latency_ms`` per charge, ``messages`` produced and two consumers charging them.

    Returns the provider once both consumers hold partitions and 60 messages are charged: the moment
    to strike, with both charging (a strike while the group still rebalances may find no call in flight).
    """
    provider = lab.start_provider(latency_ms=latency_ms, in_flight_timeout=3)
    lab.produce(messages, seed=seed)
    consumers = [lab.start_consumer(exit_when_idle=None, **PATIENT) for _ in range(2)]
    deadline = time.monotonic() + 60
    while not all(any(e["partitions"] for e in c.log_events(EventKind.ASSIGNED)) for c in consumers):
        assert time.monotonic() < deadline, "the two consumers never both held partitions"
        time.sleep(0.05)
    wait_for_charges(lab, 60, 60)
    return provider


def kill_then_up(lab: PaymentLab, disposable: DisposableStack, name: str,
                 group: bool = False) -> tuple[int, float, float]:
    """SIGKILL the stack's ``name`` server, leave it dead 2 s, then run `up`, which must restart it alone.

    Returns (messages charged at the kill, the kill's monotonic time, seconds `up` took).
    """
    before, incarnation = charged(lab), disposable.incarnation(name)
    killed_at = time.monotonic()
    disposable.sigkill(name, group)
    time.sleep(2.0)
    up_seconds, output = disposable.up()
    assert "restarting its dead processes" in output and "the stack is healthy" in output, output
    assert disposable.incarnation(name) != incarnation and disposable.attach().health()["healthy"]
    return before, killed_at, up_seconds


def settle(lab: PaymentLab, messages: int) -> list[str]:
    """Stop the running consumers, let one more finish what is left, and check the money and the shop.

    Returns every consumer's log, one each (stopping a consumer removes its log file).
    """
    logs = all_logs(lab)
    for consumer in lab.consumers:
        consumer.stop(30)
    # A fresh consumer finishes what is left and exits as idle; run_until_settled restarts it if need be.
    lab.start_consumer(exit_when_idle=1.0, **PATIENT)
    lab.run_until_settled(120, exit_when_idle=1.0, **PATIENT)
    report = lab.report()
    with psycopg.connect(lab.shop_dsn) as conn:
        done = conn.execute("SELECT count(*) FILTER (WHERE status = 'done'), count(*) FROM charges"
                            " WHERE msg_id = ANY(%s)", (lab.msg_ids,)).fetchone()
    assert report.ok and report.charges == messages and report.dlq == 0, report
    assert done == (messages, messages), f"shop rows done/total {done}, expected {messages} of each"
    return logs


def all_logs(lab: PaymentLab) -> list[str]:
    """The consumers' logs: the saved copy of each replaced one, the file of the others."""
    return [getattr(c, "saved_log", None) or c.log_tail(200_000) for c in lab.consumers]


def events_in(logs: list[str], *kinds: EventKind) -> list[ProcessEvent]:
    """The events of these kinds the consumers wrote, log after log."""
    return [e for text in logs for e in parse_events(text) if e.kind in kinds]


# -- the faults ------------------------------------------------------------------------------
def test_a_broker_killed_mid_run_restarts_with_up_and_every_message_is_charged_once(disposable):
    messages = 300
    with PaymentLab(disposable.attach(), "both") as lab:
        start_run(lab, messages, seed=13)
        survivors = [c for c in lab.consumers if c.running]
        before, killed_at, up_seconds = kill_then_up(lab, disposable, "broker")
        with psycopg.connect(lab.shop_dsn) as conn:
            back = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        restarts: list[int] = []
        wait_for_charges(lab, messages, 120, keep=lambda: restarts.extend(replace_exited(lab, 2)))
        recovered = time.monotonic() - killed_at
        # The consumers that lived through the outage reconnected and went on charging.
        with psycopg.connect(lab.shop_dsn) as conn:
            late = conn.execute("SELECT count(*) FROM consumer_events WHERE topic = %s AND consumer_pid = ANY(%s)"
                                " AND created_at > %s", (lab.topic, [c.pid for c in survivors], back)).fetchone()[0]
        said = events_in([c.log_tail(200_000) for c in survivors], EventKind.COMMIT_OWED, EventKind.COMMIT_PAID,
                         EventKind.COMMIT_REFUSED)
        settle(lab, messages)
    print("\n".join(f"[faults] broker, a consumer said: {e.format()[:160]}" for e in said[:4]))
    print(f"\n[faults] broker: SIGKILLed with {before}/{messages} charged; `up` restarted it in {up_seconds:.1f} s; "
          f"all {messages} charged {recovered:.1f} s after the kill; {late} events by consumers that lived through "
          f"it; consumers replaced: {len(restarts)} (exit codes {sorted(restarts)}); exactly once: yes")
    assert late > 0 or restarts, "no consumer charged anything after the broker came back"


def test_postgres_killed_mid_run_costs_no_charge_and_no_commit_of_unrecorded_work(disposable):
    messages = 300
    with PaymentLab(disposable.attach(), "both") as lab:
        start_run(lab, messages, seed=17)
        # The server and every backend at once (its process group), as a crash does.
        before, killed_at, up_seconds = kill_then_up(lab, disposable, "postgres", group=True)
        restarts: list[int] = []
        wait_for_charges(lab, messages, 150, keep=lambda: restarts.extend(replace_exited(lab, 2)))
        recovered = time.monotonic() - killed_at
        logs = settle(lab, messages)
        with psycopg.connect(lab.shop_dsn) as conn:
            redone = conn.execute("SELECT count(*) FROM charges WHERE msg_id = ANY(%s) AND attempts > 1",
                                  (lab.msg_ids,)).fetchone()[0]
    said = events_in(logs, EventKind.RESTART_NEEDED)
    print(f"\n[faults] postgres: SIGKILLed with {before}/{messages} charged; `up` restarted it in {up_seconds:.1f} s; "
          f"all {messages} charged {recovered:.1f} s after the kill; consumers exited {EXIT_RESTART} and were "
          f"restarted: {restarts.count(EXIT_RESTART)}; messages handled again from a 'pending' row: {redone}; "
          "exactly once: yes")
    tail = "\n---\n".join(log[-1500:] for log in logs)
    assert EXIT_RESTART in restarts, f"no consumer exited with {EXIT_RESTART} when its database went away:\n{tail}"
    # restart_needed: the consumer exits with that code and commits nothing for the batch it was on.
    assert ("shop_database_gone", EXIT_RESTART) in {(e["reason"], e["code"]) for e in said}, (
        f"the consumer did not say why it stopped: {said}\n{tail}")


def test_a_provider_killed_mid_charge_and_restarted_on_its_database_charges_each_message_once(disposable):
    messages = 200
    with PaymentLab(disposable.attach(), "both") as lab:
        provider = start_run(lab, messages, seed=19, latency_ms=40)
        before = charged(lab)
        port = provider.port
        killed_at = time.monotonic()
        provider.kill()  # with 40 ms per charge, a request is almost always in flight
        time.sleep(1.0)
        restarted = lab.restart_provider()
        back = time.monotonic() - killed_at
        assert restarted.port == port and restarted.running
        restarts: list[int] = []
        wait_for_charges(lab, messages, 120, keep=lambda: restarts.extend(replace_exited(lab, 2)))
        recovered = time.monotonic() - killed_at
        settle(lab, messages)
        with psycopg.connect(lab.shop_dsn) as conn:
            retried = conn.execute("SELECT count(*), coalesce(max(retries), 0) FROM consumer_events"
                                   " WHERE topic = %s AND retries > 0", (lab.topic,)).fetchone()
    print(f"\n[faults] provider: SIGKILLed mid-charge with {before}/{messages} charged; back on port {port} after "
          f"{back:.1f} s; all {messages} charged {recovered:.1f} s after the kill; {retried[0]} charge(s) retried "
          f"across the outage (at most {retried[1]} retries); exactly once: yes")
    assert retried[0] >= 1, "no charge was in flight when the provider died: the kill tested nothing"


def test_a_consumer_waiting_for_a_rebalance_does_not_exit_as_idle(disposable):
    """B has partitions and a backlog; A freezes and C joins, so the rebalance waits for A's session to end.

    B spends that wait without partitions and without records. An idle clock
    that counted it would stop B (exit_when_idle is shorter than the wait); B
    must go on, finish its share and only then exit as idle.
    """
    messages = 150
    with PaymentLab(disposable.attach(), "both", partitions=3) as lab:
        lab.start_provider(latency_ms=100, in_flight_timeout=3)
        lab.produce(messages, seed=29)
        a = lab.start_consumer(exit_when_idle=None, batch_size=1, **PATIENT)
        b = lab.start_consumer(exit_when_idle=0.8, batch_size=1, **PATIENT)
        wait_for_charges(lab, 20, 60)
        c = lab.start_consumer(exit_when_idle=None, batch_size=1, **PATIENT)
        deadline = time.monotonic() + 60
        while not c.log_events(EventKind.STARTED) and time.monotonic() < deadline:
            time.sleep(0.05)
        # C is about to join. A stops heartbeating: the rebalance C starts waits until A's session ends.
        os.kill(a.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 30
            while not b.log_events(EventKind.REVOKED) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(4.0)
            assert b.running, f"B exited while the group rebalanced:\n{b.log_tail()}"
        finally:
            a.kill()
        c.stop(30)
        b.wait(120)
        assert b.returncode == 0, b.log_tail()
        with psycopg.connect(lab.shop_dsn) as conn:
            gap = conn.execute(
                "SELECT max(gap) FROM (SELECT extract(epoch FROM created_at - lag(created_at) OVER (ORDER BY id))"
                " AS gap FROM consumer_events WHERE topic = %s AND consumer_pid = %s) g", (lab.topic, b.pid)
            ).fetchone()[0]
        settle(lab, messages)
    print(f"\n[faults] idle exit: B (exit_when_idle 0.8 s) went {float(gap):.1f} s without a record during the "
          "rebalance, kept running, and exited as idle once its share was done")
    assert float(gap) > 0.8, f"B's longest gap between records was {gap} s: the rebalance was too quick to test"


@pytest.mark.tansu_pass
def test_down_stops_every_process_and_a_second_down_says_so(disposable):
    """The stack's last act (run last): `down` leaves nothing running, and says so when asked again."""
    pids = disposable.status()["pids"]
    assert all(pid_alive(pid) for pid in pids.values())
    down = run_cli("down", env=disposable.env)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not any(pid_alive(pid) for pid in pids.values()), "down left a process running"
    again = run_cli("down", env=disposable.env)
    assert again.returncode == 0 and "Nothing is running" in again.stdout
    assert disposable.status()["running"] is False
