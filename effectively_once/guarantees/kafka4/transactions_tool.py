"""KIP-664 (``kafka-transactions.sh``): Kafka's own tool for transactions, and a transaction a dead producer left open.

``kafka_transactions(stack, *args)`` runs the tool with the broker's Java and jars
(embedded's, or in the broker's container on docker); ``abandoned_transaction(stack)``
uses it on a transaction whose producer was SIGKILLed mid-flight: the coordinator still
knows it, ``find-hanging`` does not report it, and ``abort`` ends it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from effectively_once import stack as stack_mod
from effectively_once.guarantees.clients import OPERATION_TIMEOUT
from effectively_once.kafka import client_settings, quiet_logger

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
