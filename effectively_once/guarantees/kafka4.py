"""What Kafka 4.x changed for exactly-once, observed on the broker at hand rather than assumed.

- ``transaction_epochs(stack)``: runs transactions with one librdkafka transactional
  producer, then reads the partition's raw record batches and reports the producer
  epoch the broker stored with each data batch and each commit marker, next to the
  request versions the client sent and the ``transaction.version`` feature the broker
  finalized. On transaction version 2 (KIP-890) the epoch goes up with every
  transaction; on version 1 it stays put.
- ``measure_reassignment(stack)``: how long each group protocol (classic, and the
  KIP-848 consumer protocol) takes to hand a SIGKILLed consumer's partitions to the
  survivor. ``benchmarks/reassign.py`` runs the same measurement for longer.
- ``share_group_redelivery(stack)``: a KIP-932 share group, live: a released record
  comes back with a higher delivery count.
- ``kafka_transactions(stack, *args)``: Kafka's own ``kafka-transactions.sh`` (KIP-664),
  run with the broker's Java and jars (embedded's, or in the broker's container on
  docker); ``abandoned_transaction(stack)`` uses it
  on a transaction whose producer was SIGKILLed mid-flight: the coordinator still knows
  it, ``find-hanging`` does not report it, and ``abort`` ends it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effectively_once import runs
from effectively_once import stack as stack_mod
from effectively_once.guarantees.clients import OPERATION_TIMEOUT
from effectively_once.guarantees.defaults import RequestLog
from effectively_once.guarantees.wire import (
    Reader,
    StoredBatch,
    WireClient,
    compact_string,
    nullable_string,
    parse_batches,
)
from effectively_once.kafka import client_settings, quiet_logger
from effectively_once.lifetime import kill_now

# The request versions a client must send for the broker to run its transactions on
# transaction version 2 (KIP-890 part 2): EndTxn v5+ and Produce v12+.
TV2_END_TXN_VERSION = 5
TV2_PRODUCE_VERSION = 12

CLASSIC, CONSUMER = "classic", "consumer"
PROTOCOLS = (CLASSIC, CONSUMER)


# -- the wire: ApiVersions v3 (features), Fetch v4 (raw batches) ------------------------------------------------------
class FeatureWireClient(WireClient):
    """The probe's wire client, plus the broker's feature levels and a raw fetch of one partition."""

    API_FETCH = 1

    def finalized_features(self) -> dict[str, int]:
        """ApiVersions v3: the feature levels the cluster finalized (``transaction.version``, ``share.version``...)."""
        # Request header v2 ends with an empty tagged-field section; ApiVersions answers with header v0.
        body = b"\x00" + compact_string("effectively-once") + compact_string("1") + b"\x00"
        reader = Reader(self.call(self.API_VERSIONS, 3, body))
        (error,) = reader.unpack(">h")
        if error:
            raise RuntimeError(f"ApiVersions v3 failed with Kafka error code {error}")
        for _ in range(reader.uvarint() - 1):
            reader.unpack(">hhh")
            reader.skip_tagged_fields()
        reader.unpack(">i")  # throttle time
        finalized: dict[str, int] = {}
        for _ in range(reader.uvarint()):
            tag, size = reader.uvarint(), reader.uvarint()
            end = reader.offset + size
            if tag == 2:  # FinalizedFeatures: name, max version level, min version level
                for _ in range(reader.uvarint() - 1):
                    name = reader.compact_string()
                    finalized[name] = reader.unpack(">hh")[0]
                    reader.skip_tagged_fields()
            reader.offset = end
        return finalized

    def fetch(self, topic: str, partition: int, offset: int = 0, max_bytes: int = 1 << 20) -> bytes:
        """Fetch v4 (read_uncommitted, so markers and aborted data alike): the partition's raw ``records``."""
        body = (struct.pack(">iiiib", -1, 500, 1, max_bytes, 0) + struct.pack(">i", 1) + nullable_string(topic)
                + struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes))
        reader = Reader(self.call(self.API_FETCH, 4, body))
        reader.unpack(">ii")  # throttle time, one topic
        (name_length,) = reader.unpack(">h")
        reader.offset += name_length
        reader.unpack(">i")  # one partition
        _partition, error, _high_watermark, _lso = reader.unpack(">ihqq")
        if error:
            raise RuntimeError(f"Fetch v4 failed with Kafka error code {error}")
        (aborted,) = reader.unpack(">i")
        reader.offset += 16 * max(aborted, 0)
        (size,) = reader.unpack(">i")
        return reader.data[reader.offset:reader.offset + max(size, 0)]


def wire_client(stack: stack_mod.Stack) -> FeatureWireClient:
    """A ``FeatureWireClient`` connected to the stack's (first) bootstrap broker."""
    host, _, port = stack.kafka_bootstrap.split(",")[0].rpartition(":")
    return FeatureWireClient(host, int(port), timeout=OPERATION_TIMEOUT)


# -- KIP-890: the producer epoch per transaction ----------------------------------------------------------------
@dataclass
class TransactionEpochs:
    """What one transactional producer's transactions left in the log, and what its client negotiated."""

    transactions: int
    batches: list[StoredBatch]
    client_versions: dict[str, set[int]]  # request name -> versions librdkafka sent
    broker_versions: dict[str, tuple[int, int]]  # request name -> (min, max) the broker serves
    finalized_features: dict[str, int]

    @property
    def broker_transaction_version(self) -> int:
        """The ``transaction.version`` feature level the cluster finalized (0 when absent)."""
        return self.finalized_features.get("transaction.version", 0)

    @property
    def client_uses_tv2(self) -> bool:
        """Whether the client sent EndTxn and Produce at the versions that put a transaction on TV2."""
        return (max(self.client_versions.get("EndTxn", {0})) >= TV2_END_TXN_VERSION
                and max(self.client_versions.get("Produce", {0})) >= TV2_PRODUCE_VERSION)

    def epochs(self, kind: str) -> list[int]:
        """The producer epochs of the stored batches of one kind (``data``, ``commit`` or ``abort``), in log order."""
        return [b.producer_epoch for b in self.batches if b.kind == kind]

    @property
    def epoch_bumped_per_transaction(self) -> bool:
        """True when every transaction's data was written under a higher epoch than the one before it."""
        data = self.epochs("data")
        return len(data) >= 2 and all(b > a for a, b in zip(data, data[1:], strict=False))

    def table(self) -> str:
        """The stored batches as a small text table."""
        lines = [f"{'offset':>6}  {'batch':<7} {'producer id':>11}  {'epoch':>5}"]
        for b in self.batches:
            lines.append(f"{b.base_offset:>6}  {b.kind:<7} {b.producer_id:>11}  {b.producer_epoch:>5}")
        return "\n".join(lines)


def transaction_epochs(stack: stack_mod.Stack, transactions: int = 2) -> TransactionEpochs:
    """Run ``transactions`` committed transactions with one librdkafka producer; read back the epochs stored.

    The producer logs every request it sends (``debug=protocol``), so the result also says
    which EndTxn and Produce versions librdkafka chose; a raw Fetch then reads the batches,
    control batches (the commit markers) included, with their headers.
    """
    from confluent_kafka import Producer

    topic = stack.create_topic(f"kafka4.epochs.{stack_mod.new_run_id()}", partitions=1)
    requests = RequestLog()
    logger = logging.getLogger(f"effectively_once.kafka4.{stack_mod.new_run_id()}")
    logger.addHandler(requests)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    producer = Producer(stack.producer_config(**{
        "transactional.id": f"{stack.namespace}.kafka4-epochs-{stack_mod.new_run_id()}",
        "debug": "protocol", "logger": logger}))
    wire = wire_client(stack)
    try:
        producer.init_transactions(OPERATION_TIMEOUT)
        for number in range(transactions):
            producer.begin_transaction()
            producer.produce(topic, value=f"transaction {number + 1}".encode(), partition=0)
            producer.commit_transaction(OPERATION_TIMEOUT)
        producer.flush(OPERATION_TIMEOUT)
        names = {0: "Produce", 1: "Fetch", 22: "InitProducerId", 24: "AddPartitionsToTxn", 26: "EndTxn"}
        broker_versions = {name: wire.versions[key] for key, name in names.items() if key in wire.versions}
        finalized = wire.finalized_features()
        batches: list[StoredBatch] = []
        deadline = time.monotonic() + OPERATION_TIMEOUT
        while time.monotonic() < deadline:  # the last marker may land a moment after commit returns
            batches = parse_batches(wire.fetch(topic, 0))
            if sum(b.kind == "commit" for b in batches) >= transactions:
                break
            time.sleep(0.2)
    finally:
        wire.close()
        logger.removeHandler(requests)
        stack.delete_topics(topic)
    return TransactionEpochs(transactions, batches, requests.versions, broker_versions, finalized)


# -- KIP-848: time to reassign a SIGKILLed consumer's partitions ----------------------------------------------------
# The victim imports its client first, then waits for its settings on stdin: started ahead of its
# round, it is ready to join the moment the round begins. It ends with its parent, however the
# parent ends: by the parent-death signal ``runs.start_process`` arranges, and, where there is
# none, when it is reparented (or at EOF on stdin, before its settings came).
_VICTIM = """
import json, os, sys
from confluent_kafka import Consumer
parent = os.getppid()
config, topic = json.loads(sys.stdin.readline())
consumer = Consumer(config)
consumer.subscribe([topic])
held = 0
while os.getppid() == parent:
    consumer.poll(0.1)
    now = len(consumer.assignment())
    if now != held:
        print(f"assigned {now}", flush=True)
        held = now
"""


class _VictimSays:
    """The victim's "assigned N" lines, read from its pipe without blocking: how many partitions it holds."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = b""
        self.held: int | None = None

    def read(self, wait: float = 0.0) -> int | None:
        """Read what the victim printed (waiting up to ``wait`` s for something); the partitions it holds now."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            try:
                self.buffer += os.read(self.fd, 65536)
            except BlockingIOError:
                pass
            *lines, self.buffer = self.buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"assigned "):
                    self.held = int(line.split()[1])
        return self.held


def start_victim() -> subprocess.Popen:
    """A victim process for ``reassign_once``, started ahead: it waits for its settings on stdin.

    It dies with this process (``runs.start_process``); ``end_victim`` stops it and records that.
    """
    return runs.start_process("victim", [sys.executable, "-c", _VICTIM],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def end_victim(victim: subprocess.Popen) -> None:
    """Stop a victim from ``start_victim`` if it still runs, record that it is gone, and close its pipes."""
    if victim.poll() is None:
        victim.kill()
    victim.wait()
    runs.process_ended("victim", victim)
    for pipe in (victim.stdin, victim.stdout):
        if pipe is not None:
            pipe.close()


def reassign_once(stack: stack_mod.Stack, protocol: str, topic: str, partitions: int = 3,
                  victim: subprocess.Popen | None = None) -> float:
    """Seconds from a SIGKILL of one of two consumers until the survivor owns all ``partitions`` of ``topic``.

    The victim is a child process (``victim``, from ``start_victim``, or a new one) that
    says how many partitions it holds each time that changes; the survivor runs here. The
    kill comes once the group has split the partitions and both sides hold their share (a
    stable group). Raises ``RuntimeError`` if a step takes over 60 s.
    """
    from confluent_kafka import Consumer

    from effectively_once.stack.kafka_settings import consumer_group_settings

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    group = stack.group(f"reassign.{protocol}.{stack_mod.new_run_id()}")
    config: dict[str, Any] = {"bootstrap.servers": stack.kafka_bootstrap, **client_settings(), "group.id": group,
                              "auto.offset.reset": "earliest", "enable.auto.commit": False,
                              **consumer_group_settings(protocol)}
    victim = victim or start_victim()
    survivor = None
    try:
        assert victim.stdin is not None
        victim.stdin.write(json.dumps([config, topic]).encode() + b"\n")
        victim.stdin.flush()
        says = _VictimSays(victim)
        deadline = time.monotonic() + 60
        while not says.read(wait=0.5):
            if victim.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{protocol}: the victim got no partition within 60 s")
        # Only now the survivor: had it joined first, unpolled while we waited, it would hold every partition.
        survivor = Consumer({**config, "logger": quiet_logger()})
        survivor.subscribe([topic])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            survivor.poll(0.05)
            mine = len(survivor.assignment())
            # Split, and settled on both sides: the victim gave up what the survivor now holds.
            if 0 < mine < partitions and says.read() == partitions - mine:
                break
        else:
            raise RuntimeError(f"{protocol}: the group never split its partitions")
        kill_now(victim.pid)
        killed = time.monotonic()
        while time.monotonic() < killed + 60:
            survivor.poll(0.02)
            if len(survivor.assignment()) == partitions:
                return time.monotonic() - killed
        raise RuntimeError(f"{protocol}: the survivor did not get all partitions within 60 s")
    finally:
        if survivor is not None:
            survivor.close()
        end_victim(victim)


@dataclass
class Reassignment:
    """Seconds from SIGKILL to all partitions reassigned, per group protocol, round by round."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PROTOCOLS})
    rounds: int = 0

    def median(self, protocol: str) -> float:
        """The median time of one protocol."""
        return statistics.median(self.seconds[protocol])

    def as_text(self) -> str:
        """Each protocol's median and range, and their ratio."""
        lines = [f"SIGKILL to all partitions reassigned, {self.rounds} rounds per protocol:"]
        for protocol in PROTOCOLS:
            times = self.seconds[protocol]
            lines.append(f"  {protocol:<8} protocol: median {self.median(protocol):.2f} s "
                         f"(range {min(times):.2f}-{max(times):.2f})")
        lines.append(f"  ratio consumer/classic: {self.median(CONSUMER) / self.median(CLASSIC):.2f}x")
        return "\n".join(lines)


def measure_reassignment(stack: stack_mod.Stack, rounds: int = 3,
                         progress: Callable[[str], None] | None = None) -> Reassignment:
    """``rounds`` of ``reassign_once`` per protocol on one 3-partition topic, both protocols side by side.

    In each round one group of each protocol runs at the same time (each its own group, so
    neither sees the other): both see the same machine at the same moment, and a round takes
    as long as the slower of the two. Most of a round is waiting for the broker's session
    timeout, not work; the next round's victims start their interpreters meanwhile.
    """
    topic = stack.create_topic(f"reassign.{stack_mod.new_run_id()}", partitions=3)
    result = Reassignment(rounds=rounds)
    victims = {protocol: start_victim() for protocol in PROTOCOLS}
    try:
        with ThreadPoolExecutor(max_workers=len(PROTOCOLS)) as pool:
            for round_no in range(rounds):
                now, victims = victims, ({protocol: start_victim() for protocol in PROTOCOLS}
                                         if round_no + 1 < rounds else {})
                futures = {protocol: pool.submit(reassign_once, stack, protocol, topic, victim=now[protocol])
                           for protocol in PROTOCOLS}
                for protocol, future in futures.items():
                    seconds = future.result()
                    result.seconds[protocol].append(seconds)
                    if progress:
                        progress(f"round {round_no + 1} {protocol:<8} {seconds:.2f} s")
    finally:
        for spare in victims.values():  # started for a round that an error cancelled
            end_victim(spare)
        stack.delete_topics(topic)
    return result


# -- KIP-932: a share group redelivers a released record --------------------------------------------------------------
@dataclass
class ShareDelivery:
    """One record as a share consumer received it, and what the consumer answered."""

    value: str
    offset: int
    delivery_count: int | None
    answer: str


@dataclass
class ShareOutcome:
    """What a share group delivered, or why the broker would not serve one."""

    deliveries: list[ShareDelivery]
    share_version: int
    error: str | None = None

    def counts(self, value: str) -> list[int | None]:
        """The delivery counts with which ``value`` arrived, in order."""
        return [d.delivery_count for d in self.deliveries if d.value == value]

    def as_text(self) -> str:
        """One line per delivery."""
        if self.error:
            return f"no share group: {self.error}"
        return "\n".join(f"offset {d.offset}  {d.value:<10} delivery {d.delivery_count}  -> {d.answer}"
                         for d in self.deliveries)


def share_group_redelivery(stack: stack_mod.Stack, records: int = 3, release: int = 1,
                           timeout: float = 20.0) -> ShareOutcome:
    """Produce ``records`` values, consume them in a share group, RELEASE value number ``release`` once.

    The consumer acknowledges explicitly: every record is accepted except the released
    one's first delivery, which the broker must hand out again with delivery count 2.
    The group reads from the start (group config ``share.auto.offset.reset=earliest``).
    """
    from confluent_kafka import AcknowledgeType, Producer, ShareConsumer
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    wire = wire_client(stack)
    try:
        share_version = wire.finalized_features().get("share.version", 0)
    finally:
        wire.close()
    topic = stack.create_topic(f"kafka4.share.{stack_mod.new_run_id()}", partitions=1)
    group = stack.group(f"kafka4.share.{stack_mod.new_run_id()}")
    values = [f"job-{n}" for n in range(records)]
    released = values[release]
    deliveries: list[ShareDelivery] = []
    consumer = None
    try:
        producer = Producer(stack.producer_config(logger=quiet_logger()))
        for value in values:
            producer.produce(topic, value=value.encode(), partition=0)
        producer.flush(OPERATION_TIMEOUT)
        resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[
            ConfigEntry("share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET)])
        admin = stack.admin()  # kept in a name: a collected AdminClient fails its pending futures
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=OPERATION_TIMEOUT)
        consumer = ShareConsumer({"bootstrap.servers": stack.kafka_bootstrap, **client_settings(), "group.id": group,
                                  "share.acknowledgement.mode": "explicit", "logger": quiet_logger()})
        consumer.subscribe([topic])
        accepted: set[str] = set()
        deadline = time.monotonic() + timeout
        while len(accepted) < records and time.monotonic() < deadline:
            for message in consumer.poll(0.5) or []:
                if message.error():
                    raise RuntimeError(str(message.error()))
                value = (message.value() or b"").decode()
                first_time = not any(d.value == value for d in deliveries)
                answer = "RELEASE" if value == released and first_time else "ACCEPT"
                consumer.acknowledge(message, AcknowledgeType.RELEASE if answer == "RELEASE"
                                     else AcknowledgeType.ACCEPT)
                deliveries.append(ShareDelivery(value, message.offset() or 0, message.delivery_count(), answer))
                if answer == "ACCEPT":
                    accepted.add(value)
            consumer.commit_sync(OPERATION_TIMEOUT)
        if len(accepted) < records:
            return ShareOutcome(deliveries, share_version,
                                f"only {sorted(accepted)} of {values} accepted within {timeout:.0f} s")
    except Exception as exc:  # the broker refuses share groups: say so, with its words
        return ShareOutcome(deliveries, share_version, f"{type(exc).__name__}: {exc}")
    finally:
        if consumer is not None:
            try:
                consumer.close()
            except Exception:
                pass
        stack.delete_topics(topic)
    return ShareOutcome(deliveries, share_version)


# -- KIP-664: kafka-transactions, and a transaction a dead producer left open ------------------------------------
TRANSACTIONS_COMMAND = "org.apache.kafka.tools.TransactionsCommand"  # what kafka-transactions.sh runs
# The tool's own log lines (the admin client's warnings) go to stderr, so that stdout holds its table alone.
TOOLS_LOG4J = """\
status = error
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
"""


class ToolsUnavailable(RuntimeError):
    """The stack has no Java and Kafka jars to run ``kafka-transactions`` with; the message says what to do."""


@dataclass
class ToolRun:
    """One run of ``kafka-transactions``: its arguments, exit code and output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def rows(self) -> list[dict[str, str]]:
        """The printed table as one dict per row, keyed by the header (an empty last column reads as "")."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        if not lines:
            return []
        header = lines[0].split()
        return [dict(zip(header, line.split() + [""] * (len(header) - len(line.split())), strict=False))
                for line in lines[1:]]

    def as_text(self, containing: str | None = None) -> str:
        """The command as one would type it, then what it printed (its error, when it failed).

        With ``containing``, only the table's header and the rows that contain that text.
        """
        shown = ["<bootstrap>" if index == 1 and self.args[0] == "--bootstrap-server" else arg
                 for index, arg in enumerate(self.args)]
        output = self.stdout.rstrip() if self.ok else (self.stderr.strip() or self.stdout.strip())
        if containing is not None and self.ok and output:
            lines = output.splitlines()
            output = "\n".join(lines[:1] + [line for line in lines[1:] if containing in line])
        return f"$ kafka-transactions.sh {' '.join(shown)}\n{output or '(nothing printed)'}"


def _tools_java(stack: stack_mod.Stack) -> str | None:
    """The Java to run Kafka's tools with (None: in the broker's container), or ``ToolsUnavailable`` and the fix."""
    from effectively_once.stack import jars

    if stack.broker_flavor != "apache-kafka" or stack.backend not in ("embedded", "docker"):
        raise ToolsUnavailable(
            f"kafka-transactions runs with the course's Apache Kafka (its Java and jars), and this stack's broker is "
            f"{stack.broker_flavor} on the {stack.backend} backend: start one with "
            "`python -m effectively_once up --backend embedded` (Java 17+).")
    if stack.backend == "docker":
        if "broker" not in stack.containers:
            raise ToolsUnavailable("this docker stack does not say which container runs its broker: "
                                   "run `python -m effectively_once down`, then `up --backend docker`.")
        return None
    java = stack.java
    if not java:
        from effectively_once.stack.java import find_java

        java = find_java().path
    # A cache filled before kafka-tools joined the lock lacks its two jars: fetch them now, as `up` would.
    try:
        jars.ensure_jars(progress=lambda *parts: print(*parts, file=sys.stderr))
    except jars.JarsUnavailable as exc:
        raise ToolsUnavailable(f"kafka-transactions needs jars the cache lacks, and they cannot be fetched: {exc}") \
            from None
    return java


def _tools_command(java: str, log_config: str, classpath: str, args: list[str]) -> list[str]:
    return [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log_config}", "-cp", classpath, TRANSACTIONS_COMMAND, *args]


def _in_broker_container(container_id: str, args: list[str], timeout: float) -> tuple[int, str, str]:
    """Run the tool in the broker's container, with the image's Java and ``/opt/kafka/libs``, as the broker runs."""
    import shlex

    from effectively_once.stack.engine import docker_client
    from effectively_once.stack.kafka_broker import IMAGE_CLASSPATH, IMAGE_JAVA

    log_config = "/tmp/effectively-once-kafka-tools-log4j2.properties"
    command = shlex.join(_tools_command(IMAGE_JAVA, log_config, IMAGE_CLASSPATH, args))
    script = f"printf %s {shlex.quote(TOOLS_LOG4J)} > {log_config} && exec {command}"
    container = docker_client(timeout).containers.get(container_id)
    code, (out, err) = container.exec_run(["sh", "-c", script], demux=True)
    return code, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")


def kafka_transactions(stack: stack_mod.Stack, *args: str, timeout: float = 60.0) -> ToolRun:
    """Run ``kafka-transactions.sh`` (Kafka's ``TransactionsCommand``, KIP-664) against the stack's broker.

    ``args`` are the command and its options, as on the command line: ``"list"``,
    ``"describe", "--transactional-id", tid``, ``"find-hanging", "--broker-id", "1"``,
    ``"abort", "--topic", t, "--partition", "0", "--start-offset", "0"``. It runs with
    the broker's own Java and jars: the stack's Java and the cached jars (``kafka-tools``
    is pinned among them) on ``embedded``, the image's in the broker's container on
    ``docker``; elsewhere it raises ``ToolsUnavailable``.
    """
    from effectively_once.stack import jars

    java = _tools_java(stack)
    full = ["--bootstrap-server", stack.kafka_bootstrap.split(",")[0], *args]
    if java is None:
        return ToolRun(full, *_in_broker_container(stack.containers["broker"], full, timeout))
    log_config = Path(tempfile.gettempdir()) / "effectively-once-kafka-tools-log4j2.properties"
    if not log_config.exists() or log_config.read_text() != TOOLS_LOG4J:
        staged = log_config.with_name(f"{log_config.name}.{os.getpid()}.{threading.get_ident()}")
        staged.write_text(TOOLS_LOG4J)
        os.replace(staged, log_config)
    done = subprocess.run(_tools_command(java, str(log_config), jars.classpath(), full),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return ToolRun(full, done.returncode, done.stdout, done.stderr)


_ABANDONING_PRODUCER = """
import json, os, sys
from confluent_kafka import Producer
from effectively_once.lifetime import kill_now
config, topic, records = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
producer = Producer(config)
producer.init_transactions(30)
producer.begin_transaction()
for number in range(records):
    producer.produce(topic, value=f"uncommitted {number + 1}".encode(), partition=0)
producer.flush(30)
print("flushed", flush=True)
kill_now(os.getpid())  # no commit, no abort: the transaction stays open
"""


@dataclass(frozen=True)
class PartitionOffsets:
    """Where a partition ends, for each isolation level, and where a read_committed consumer got to."""

    high_watermark: int  # the end for read_uncommitted: every record written
    last_stable_offset: int  # the end for read_committed: the first offset of the oldest open transaction
    consumer_position: int | None  # a read_committed consumer's position after polling; None: none yet
    committed_values: tuple[str, ...]  # what that consumer received

    def as_text(self) -> str:
        position = ("no position yet" if self.consumer_position is None
                    else f"position {self.consumer_position}")
        return (f"high watermark {self.high_watermark}, last stable offset {self.last_stable_offset}; "
                f"a read_committed consumer received {list(self.committed_values)}, {position}")


def partition_offsets(stack: stack_mod.Stack, topic: str, partition: int = 0, poll_seconds: float = 2.0,
                      until_end: bool = False) -> PartitionOffsets:
    """The partition's high watermark and last stable offset, and what a read_committed consumer sees of it.

    The consumer reads from the start for ``poll_seconds``; with ``until_end`` it stops as
    soon as its position reaches the last stable offset (it has passed all it may read).
    Each end offset is librdkafka's ``query_watermark_offsets`` (``cached=False``) from a
    consumer of that isolation level: librdkafka sends the handle's ``isolation.level`` in
    its ListOffsets request (``src/rdkafka_request.c``), and the broker answers ``latest``
    with the high watermark under read_uncommitted, the last stable offset under read_committed.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    ends = {}
    consumers = {}
    try:
        for isolation in ("read_uncommitted", "read_committed"):
            consumers[isolation] = Consumer({
                "bootstrap.servers": stack.kafka_bootstrap, **client_settings(), "isolation.level": isolation,
                "group.id": stack.group(f"kafka4.lso.{stack_mod.new_run_id()}"), "enable.auto.commit": False,
                "enable.partition.eof": False, "logger": quiet_logger()})
            ends[isolation] = consumers[isolation].get_watermark_offsets(
                TopicPartition(topic, partition), timeout=OPERATION_TIMEOUT, cached=False)[1]
        reader = consumers["read_committed"]
        reader.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        values: list[str] = []
        deadline = time.monotonic() + poll_seconds
        while time.monotonic() < deadline:
            message = reader.poll(0.2)
            if message is not None and not message.error():
                values.append((message.value() or b"").decode())
            if until_end and reader.position([TopicPartition(topic, partition)])[0].offset == ends["read_committed"]:
                break
        raw = reader.position([TopicPartition(topic, partition)])[0].offset
        position = raw if raw >= 0 else None  # librdkafka has no position until it passes a record or marker
    finally:
        for consumer in consumers.values():
            consumer.close()
    return PartitionOffsets(ends["read_uncommitted"], ends["read_committed"], position, tuple(values))


@dataclass
class AbandonedTransaction:
    """A transaction whose producer was SIGKILLed mid-flight, observed with kafka-transactions, then aborted."""

    topic: str
    transactional_id: str
    records: int
    child_returncode: int
    listed: ToolRun
    described: ToolRun
    producers: ToolRun
    hanging: ToolRun
    aborted: ToolRun
    before: PartitionOffsets
    after: PartitionOffsets
    seconds: float

    @property
    def state(self) -> str:
        """The coordinator's state of the transaction, as ``describe`` printed it ("" if it printed no row)."""
        rows = self.described.rows
        return rows[0].get("TransactionState", "") if rows else ""

    @property
    def open_transaction_start(self) -> int | None:
        """Where the partition's open transaction begins, as ``describe-producers`` printed it (None: none open)."""
        starts = [row.get("CurrentTransactionStartOffset", "") for row in self.producers.rows]
        return next((int(s) for s in starts if s.lstrip("-").isdigit() and int(s) >= 0), None)

    @property
    def listed_state(self) -> str:
        """The transaction's state in ``list`` ("" when it is not listed)."""
        return next((row.get("TransactionState", "") for row in self.listed.rows
                     if row.get("TransactionalId") == self.transactional_id), "")


def abandoned_transaction(stack: stack_mod.Stack, records: int = 3, transaction_timeout_ms: int = 60_000,
                          ) -> AbandonedTransaction:
    """A transaction left open by a SIGKILLed producer, looked at and aborted with ``kafka-transactions``.

    A child process begins a transaction, produces ``records`` records to partition 0 of a
    fresh topic, flushes, and SIGKILLs itself. Then, side by side (nothing changes the open
    transaction meanwhile): ``list`` and ``describe`` (the coordinator's view), the
    partition's offsets and a read_committed consumer,
    ``describe-producers`` (the partition leader's view: where the open transaction starts),
    ``find-hanging`` on the partition (with ``--max-transaction-timeout 0``, so that even a
    young open transaction is a candidate); once they are done, ``abort --start-offset`` (the
    tool writes the abort marker itself), and the offsets again. ``transaction_timeout_ms`` is the
    producer's ``transaction.timeout.ms``: long enough that the coordinator does not abort
    the transaction on its own while this runs.
    """
    _tools_java(stack)  # refuse before making anything
    started = time.monotonic()
    topic = stack.create_topic(f"kafka4.abandoned.{stack_mod.new_run_id()}", partitions=1)
    transactional_id = f"{stack.namespace}.kafka4-abandoned-{stack_mod.new_run_id()}"
    config = {"bootstrap.servers": stack.kafka_bootstrap, **client_settings(), "transactional.id": transactional_id,
              "transaction.timeout.ms": transaction_timeout_ms, "acks": "all"}
    try:
        child = subprocess.run([sys.executable, "-c", _ABANDONING_PRODUCER, json.dumps(config), topic, str(records)],
                               capture_output=True, text=True, timeout=120)
        if "flushed" not in child.stdout:
            raise RuntimeError(f"the transactional child did not get its records out: {child.stderr[-500:]}")
        # Nothing changes the open transaction until the abort (its producer is dead, its timeout far
        # off), so the four read-only commands and the partition's offsets are taken side by side:
        # each command is a JVM of its own, and its start is most of its time.
        with ThreadPoolExecutor(max_workers=5) as pool:
            listing = pool.submit(kafka_transactions, stack, "list")
            describing = pool.submit(kafka_transactions, stack, "describe", "--transactional-id", transactional_id)
            measuring = pool.submit(partition_offsets, stack, topic)
            describing_producers = pool.submit(kafka_transactions, stack, "describe-producers", "--topic", topic,
                                               "--partition", "0")
            finding = pool.submit(kafka_transactions, stack, "find-hanging", "--topic", topic, "--partition", "0",
                                  "--max-transaction-timeout", "0")
            listed, described, before = listing.result(), describing.result(), measuring.result()
            producers, hanging = describing_producers.result(), finding.result()
        start = next((row.get("CurrentTransactionStartOffset", "") for row in producers.rows), "")
        aborted = kafka_transactions(stack, "abort", "--topic", topic, "--partition", "0",
                                     "--start-offset", start if start.isdigit() else str(before.last_stable_offset))
        after = before
        deadline = time.monotonic() + OPERATION_TIMEOUT
        while time.monotonic() < deadline:  # the marker is written by the time abort returns; allow a moment
            after = partition_offsets(stack, topic, poll_seconds=1.0, until_end=True)
            if after.last_stable_offset > before.last_stable_offset or not aborted.ok:
                break
    finally:
        stack.delete_topics(topic)
    return AbandonedTransaction(topic, transactional_id, records, child.returncode, listed, described, producers,
                                hanging, aborted, before, after, time.monotonic() - started)


def broker_setting(stack: stack_mod.Stack, name: str) -> str | None:
    """One setting of the (first) broker as it runs, read with DescribeConfigs (None when it has no such setting)."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = stack.admin()  # kept in a name: a collected AdminClient fails its pending futures
    broker = min(admin.list_topics(timeout=OPERATION_TIMEOUT).brokers)
    resource = ConfigResource(ResourceType.BROKER, str(broker))
    configs = admin.describe_configs([resource])[resource].result(timeout=OPERATION_TIMEOUT)
    entry = configs.get(name)
    return None if entry is None else entry.value


def finalized_features(stack: stack_mod.Stack) -> dict[str, int]:
    """The feature levels the cluster finalized (``transaction.version``, ``group.version``, ``share.version``...)."""
    wire = wire_client(stack)
    try:
        return wire.finalized_features()
    finally:
        wire.close()
