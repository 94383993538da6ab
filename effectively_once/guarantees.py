"""Which Kafka guarantees does the broker at hand actually give? ``probe(stack)`` asks it, live.

Each check makes the broker face one situation the lesson relies on and reports
what a ``read_committed`` consumer (or the group coordinator) actually did:

- ``idempotent_producer``: an idempotent producer with ``acks=all`` is accepted,
  and a resent batch (same producer id, epoch and sequence, exactly what a
  client retry sends after a lost response) is stored once. The same resend
  without a producer id is shown as the control: it is stored twice.
- ``read_committed_hides_aborted``: records of an aborted transaction never
  reach a ``read_committed`` consumer.
- ``zombie_fenced``: a second producer initialising the same ``transactional.id``
  aborts the first one's open transaction; the zombie's records never reach a
  ``read_committed`` consumer.
- ``stale_generation_rejected``: a transactional offset commit carrying the
  consumer-group metadata of a member that has since been replaced is refused
  (KIP-447), and the group's committed offset does not move.

Apache Kafka gives all four. Tansu, the embedded broker, gives only the first;
the probe shows that rather than assuming it.

``kafka_txn_vs_postgres(stack)`` shows why none of this reaches PostgreSQL: a
Kafka transaction and a database transaction side by side commit and roll back
independently.

Also ``python -m effectively_once probe [--json] [--strict]``.
"""

from __future__ import annotations

import argparse
import html
import json
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from effectively_once import stack as stack_mod

HELP = "check live which Kafka guarantees the running broker gives"

IDEMPOTENT_PRODUCER = "idempotent_producer"
READ_COMMITTED = "read_committed_hides_aborted"
ZOMBIE_FENCED = "zombie_fenced"
STALE_GENERATION = "stale_generation_rejected"

TITLES = {
    IDEMPOTENT_PRODUCER: "idempotent producer (acks=all): a retried batch is stored once",
    READ_COMMITTED: "read_committed hides the records of an aborted transaction",
    ZOMBIE_FENCED: "a zombie producer is fenced: its open transaction is aborted",
    STALE_GENERATION: "a transactional offset commit from a stale group generation is rejected (KIP-447)",
}

# How long a check waits for the broker before it calls the outcome. Short on
# purpose: a broker that does not fence a zombie makes the zombie's commit hang
# for the whole timeout.
OPERATION_TIMEOUT = 10.0
ZOMBIE_COMMIT_TIMEOUT = 2.0
READ_TIMEOUT = 8.0


@dataclass
class Check:
    """One guarantee, whether it held on this broker, and what was seen."""

    guarantee: str
    holds: bool
    evidence: str
    seen: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """A sentence naming the guarantee."""
        return TITLES.get(self.guarantee, self.guarantee)


@dataclass
class ProbeReport:
    """The outcome of ``probe``: one ``Check`` per guarantee, in the lesson's order."""

    broker_flavor: str
    backend: str
    checks: list[Check]
    seconds: float = 0.0

    def __getitem__(self, guarantee: str) -> Check:
        for check in self.checks:
            if check.guarantee == guarantee:
                return check
        raise KeyError(f"no check named {guarantee!r}; the checks are {[c.guarantee for c in self.checks]}")

    @property
    def all_hold(self) -> bool:
        """True when every guarantee held."""
        return all(check.holds for check in self.checks)

    def holds(self) -> dict[str, bool]:
        """``{guarantee: holds}`` for every check."""
        return {check.guarantee: check.holds for check in self.checks}

    def as_dict(self) -> dict[str, Any]:
        """Plain data (what ``probe --json`` prints)."""
        return {
            "broker_flavor": self.broker_flavor,
            "backend": self.backend,
            "all_hold": self.all_hold,
            "seconds": round(self.seconds, 2),
            "checks": [dict(asdict(check), title=check.title) for check in self.checks],
        }

    def as_text(self) -> str:
        """A plain-text table for a terminal."""
        lines = [f"broker: {self.broker_flavor} ({self.backend} backend)"]
        for check in self.checks:
            lines.append(f"{'holds' if check.holds else 'FAILS':<6} {check.title}")
            lines.append(f"       {check.evidence}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for check in self.checks:
            colour = "#d4edda" if check.holds else "#f8d7da"
            verdict = "holds" if check.holds else "fails"
            rows.append(
                f"<tr style='background:{colour};color:#212529'>"
                f"<td style='text-align:left'>{html.escape(check.title)}</td>"
                f"<td style='text-align:center'><b>{verdict}</b></td>"
                f"<td style='text-align:left'>{html.escape(check.evidence)}</td></tr>")
        return (f"<p>Broker: <b>{html.escape(self.broker_flavor)}</b> ({html.escape(self.backend)} backend)</p>"
                "<table><thead><tr><th style='text-align:left'>guarantee</th><th>on this broker</th>"
                "<th style='text-align:left'>what a consumer saw</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")


@dataclass
class BrokerComparison:
    """The probe run on two brokers, one table: a row per guarantee, a column per broker."""

    reports: list[ProbeReport]

    def __getitem__(self, broker_flavor: str) -> ProbeReport:
        for report in self.reports:
            if report.broker_flavor == broker_flavor:
                return report
        raise KeyError(f"no report for {broker_flavor!r}; the brokers are {[r.broker_flavor for r in self.reports]}")

    def holds(self) -> dict[str, dict[str, bool]]:
        """``{broker_flavor: {guarantee: holds}}``."""
        return {report.broker_flavor: report.holds() for report in self.reports}

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(r.broker_flavor)} ({html.escape(r.backend)})</th>"
                       for r in self.reports)
        rows = []
        for check in self.reports[0].checks:
            cells = []
            for report in self.reports:
                mine = report[check.guarantee]
                colour = "#d4edda" if mine.holds else "#f8d7da"
                cells.append(f"<td style='text-align:left;background:{colour};color:#212529'>"
                             f"<b>{'holds' if mine.holds else 'fails'}</b>: {html.escape(mine.evidence)}</td>")
            rows.append(f"<tr><td style='text-align:left'>{html.escape(check.title)}</td>{''.join(cells)}</tr>")
        return (f"<table><thead><tr><th style='text-align:left'>guarantee</th>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")


def compare_brokers(stack: stack_mod.Stack, progress: Callable[..., None] = print) -> BrokerComparison:
    """Probe ``stack``'s broker and, beside it, a private broker of the other kind (Apache Kafka or Tansu).

    On Apache Kafka the other one is a Tansu started for a few seconds; on Tansu
    it is an embedded Apache Kafka (when Java and its jars can be had).
    """
    other = "embedded" if stack.broker_flavor == "tansu" else "tansu"
    here = probe(stack, progress=progress)
    try:
        with stack_mod.private_broker(other, progress=progress) as private:
            there = probe(private, progress=progress)
    except (stack_mod.StackError, RuntimeError, OSError) as exc:
        # A machine that runs Tansu because it has no Java (or no jars) cannot start the other one.
        progress(f"the {other} broker could not start here ({exc}); the table shows your broker alone")
        return BrokerComparison([here])
    reports = sorted([here, there], key=lambda r: r.broker_flavor != "apache-kafka")
    return BrokerComparison(reports)


# -- helpers shared by the checks --------------------------------------------------------------
def _kafka_error(exc: BaseException) -> str:
    """The Kafka error code name of an exception from confluent-kafka, else its text."""
    arg = exc.args[0] if getattr(exc, "args", None) else None
    if hasattr(arg, "name"):
        return arg.name()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _read_values(stack: stack_mod.Stack, topic: str, partitions: Iterable[int], *,
                 stop_when: Callable[[list[str]], bool], timeout: float = READ_TIMEOUT) -> list[str]:
    """Values a fresh ``read_committed`` consumer sees from the start of ``partitions``.

    Reads until ``stop_when(values)`` or ``timeout``. The consumer is assigned
    partitions directly (no group join, no offset commit), so it leaves no group behind.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(stack.consumer_config(**{
        "group.id": stack.group(f"probe-reader-{stack_mod.new_run_id()}"),
        "isolation.level": "read_committed",
        "logger": stack_mod.quiet_logger(),
    }))
    values: list[str] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop_when(values):
            msg = consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            values.append(msg.value().decode())
    finally:
        consumer.close()
    return values


def _transactional_producer(stack: stack_mod.Stack, transactional_id: str, **overrides: Any):
    from confluent_kafka import Producer

    producer = Producer(stack.producer_config(**{
        "transactional.id": transactional_id,
        "logger": stack_mod.quiet_logger(),
        **overrides,
    }))
    producer.init_transactions(OPERATION_TIMEOUT)
    return producer


def _delete_groups(stack: stack_mod.Stack, *groups: str) -> None:
    """Delete consumer groups (best effort).

    Tansu advertises DeleteGroups but never answers it (a request waits out any
    timeout), so on Tansu the groups are left; they hold only a committed offset.
    """
    if stack.broker_flavor == "tansu":
        return
    try:
        futures = stack.admin().delete_consumer_groups(list(groups), request_timeout=5)
        for future in futures.values():
            try:
                future.result(timeout=5)
            except Exception:
                pass
    except Exception:
        pass


# -- a minimal Kafka wire client, to resend a batch exactly as a client retry would -------------
def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of a Kafka record batch."""
    c = 0xFFFFFFFF
    for byte in data:
        c = _CRC32C[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    zigzag = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        low, zigzag = zigzag & 0x7F, zigzag >> 7
        out.append(low | 0x80 if zigzag else low)
        if not zigzag:
            return bytes(out)


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _record_batch(values: list[bytes], producer_id: int, epoch: int, base_sequence: int) -> bytes:
    """A v2 record batch; producer id -1 means a producer without idempotence."""
    now = int(time.time() * 1000)
    records = b""
    for i, value in enumerate(values):
        body = b"\x00" + _varint(0) + _varint(i) + _varint(-1) + _varint(len(value)) + value + _varint(0)
        records += _varint(len(body)) + body
    after_crc = struct.pack(">hiqqqhii", 0, len(values) - 1, now, now, producer_id, epoch,
                            base_sequence, len(values)) + records
    after_length = struct.pack(">ibI", -1, 2, _crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


class _WireClient:
    """Just enough of the Kafka protocol to get a producer id and send one batch twice.

    librdkafka offers no way to resend a batch on purpose; a retry after a
    lost response is exactly "the same bytes again", which is what this sends.
    """

    API_PRODUCE, API_VERSIONS, API_INIT_PRODUCER_ID = 0, 18, 22

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=OPERATION_TIMEOUT)
        self.correlation = 0
        self.versions = self._api_versions()

    def close(self) -> None:
        self.sock.close()

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            buf += chunk
        return buf

    def call(self, api_key: int, version: int, body: bytes, *, flexible: bool = False) -> bytes:
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + _string("eo-probe")
        message = header + (b"\x00" if flexible else b"") + body
        self.sock.sendall(struct.pack(">i", len(message)) + message)
        (size,) = struct.unpack(">i", self._recv(4))
        data = self._recv(size)
        (correlation,) = struct.unpack(">i", data[:4])
        if correlation != self.correlation:
            raise ConnectionError("the broker answered out of order")
        return data[5:] if flexible else data[4:]

    def _api_versions(self) -> dict[int, tuple[int, int]]:
        data = self.call(self.API_VERSIONS, 0, b"")
        error, count = struct.unpack(">hi", data[:6])
        versions = {}
        for i in range(count):
            key, low, high = struct.unpack(">hhh", data[6 + 6 * i:12 + 6 * i])
            versions[key] = (low, high)
        return versions

    def init_producer_id(self) -> tuple[int, int]:
        """A fresh (producer id, epoch) for an idempotent, non-transactional producer."""
        low, high = self.versions.get(self.API_INIT_PRODUCER_ID, (0, 0))
        # Some Kafka-protocol brokers answer only the flexible versions (v2+) correctly.
        if high >= 2:
            version = min(high, 4)
            body = b"\x00" + struct.pack(">i", 60000)  # compact null transactional id, timeout
            if version >= 3:
                body += struct.pack(">qh", -1, -1)
            data = self.call(self.API_INIT_PRODUCER_ID, version, body + b"\x00", flexible=True)
        else:
            data = self.call(self.API_INIT_PRODUCER_ID, 0, _string(None) + struct.pack(">i", 60000))
        _throttle, error, producer_id, epoch = struct.unpack(">ihqh", data[:16])
        if error:
            raise RuntimeError(f"InitProducerId failed with Kafka error code {error}")
        return producer_id, epoch

    def produce(self, topic: str, partition: int, batch: bytes) -> tuple[int, int]:
        """Send one batch with acks=all; return (error code, base offset)."""
        low, high = self.versions.get(self.API_PRODUCE, (0, 0))
        if not low <= 3 <= high:
            raise RuntimeError(f"the broker does not speak Produce v3 (it offers v{low}..v{high})")
        body = (_string(None) + struct.pack(">hi", -1, int(OPERATION_TIMEOUT * 1000))
                + struct.pack(">i", 1) + _string(topic) + struct.pack(">i", 1)
                + struct.pack(">ii", partition, len(batch)) + batch)
        data = self.call(self.API_PRODUCE, 3, body)
        offset = 4  # one topic in the answer
        (name_length,) = struct.unpack_from(">h", data, offset)
        offset += 2 + name_length + 4  # one partition in the answer
        _partition, error, base_offset, _append_time = struct.unpack_from(">ihqq", data, offset)
        return error, base_offset


# -- the four checks ---------------------------------------------------------------------------
def check_idempotent_producer(stack: stack_mod.Stack) -> Check:
    """An idempotent acks=all producer is accepted and its retried batch is stored once."""
    from confluent_kafka import Producer

    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"probe-idempotence-{run}", partitions=1)
    try:
        # 1. The client the course uses, configured as the lesson says.
        producer = Producer(stack.producer_config(logger=stack_mod.quiet_logger()))
        failures: list[str] = []
        client_values = [f"client-{run}-{i}" for i in range(5)]
        for value in client_values:
            producer.produce(topic, value=value.encode(), partition=0,
                             on_delivery=lambda err, msg: err and failures.append(err.name()))
        left = producer.flush(OPERATION_TIMEOUT)
        if left or failures:
            return Check(IDEMPOTENT_PRODUCER, False,
                         f"the broker refused an idempotent acks=all producer: {failures or f'{left} undelivered'}")

        # 2. The retry: the same batch twice, as a client resends it when a response is lost.
        md = stack.admin().list_topics(topic, timeout=OPERATION_TIMEOUT)
        broker = md.brokers[md.topics[topic].partitions[0].leader]
        wire = _WireClient(broker.host, broker.port)
        try:
            producer_id, epoch = wire.init_producer_id()
            idem_values = [f"retried-{run}-{i}".encode() for i in range(3)]
            batch = _record_batch(idem_values, producer_id, epoch, base_sequence=0)
            answers = [wire.produce(topic, 0, batch), wire.produce(topic, 0, batch)]
            plain_values = [f"plain-{run}-{i}".encode() for i in range(3)]
            plain = _record_batch(plain_values, -1, -1, -1)
            control = [wire.produce(topic, 0, plain), wire.produce(topic, 0, plain)]
        finally:
            wire.close()

        # An end marker after everything, so the reader knows it has seen every copy.
        # (Waiting for the high watermark is not enough: Tansu reports the last
        # batch's first offset + 1 as the end, hiding the rest of that batch.)
        end_marker = f"end-{run}"
        producer.produce(topic, value=end_marker.encode(), partition=0)
        producer.flush(OPERATION_TIMEOUT)
        seen = _read_values(stack, topic, [0], stop_when=lambda v: end_marker in v)
        client_counts = {v: seen.count(v) for v in client_values}
        retried_counts = {v.decode(): seen.count(v.decode()) for v in idem_values}
        plain_counts = {v.decode(): seen.count(v.decode()) for v in plain_values}
        holds = (all(n == 1 for n in client_counts.values())
                 and all(n == 1 for n in retried_counts.values()))
        first_copies = max(retried_counts.values())
        control_copies = max(plain_counts.values())
        evidence = (f"{sum(client_counts.values())} of {len(client_values)} records from the acks=all idempotent "
                    f"client arrived once each; a batch resent with producer id {producer_id}, sequence 0 "
                    f"(broker answers: error {answers[0][0]}, then {answers[1][0]}) reached the consumer "
                    f"{first_copies}x; the same resend without a producer id reached it {control_copies}x")
        return Check(IDEMPOTENT_PRODUCER, holds, evidence, {
            "client_records": client_counts, "retried_batch": retried_counts,
            "control_without_producer_id": plain_counts,
            "resend_answers": [list(a) for a in answers], "control_answers": [list(a) for a in control],
        })
    finally:
        stack.delete_topics(topic)


def check_read_committed(stack: stack_mod.Stack) -> Check:
    """Records of an aborted transaction never reach a read_committed consumer."""
    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"probe-aborted-{run}", partitions=1)
    producer = None
    try:
        producer = _transactional_producer(stack, stack.topic(f"probe-aborted-{run}"))
        aborted = [f"aborted-{run}-{i}" for i in range(3)]
        committed = [f"committed-{run}-{i}" for i in range(3)]
        producer.begin_transaction()
        for value in aborted:
            producer.produce(topic, value=value.encode(), partition=0)
        producer.flush(OPERATION_TIMEOUT)  # the records reach the broker before the abort
        producer.abort_transaction(OPERATION_TIMEOUT)
        producer.begin_transaction()
        for value in committed:
            producer.produce(topic, value=value.encode(), partition=0)
        producer.commit_transaction(OPERATION_TIMEOUT)

        # The committed records come after the aborted ones in the log, so once
        # the last one is seen, every aborted record was either delivered or hidden.
        seen = _read_values(stack, topic, [0], stop_when=lambda v: committed[-1] in v)
        leaked = [v for v in seen if v in aborted]
        delivered = [v for v in seen if v in committed]
        holds = not leaked and delivered == committed
        if holds:
            evidence = f"saw the {len(delivered)} committed records and none of the {len(aborted)} aborted ones"
        elif leaked:
            evidence = f"saw {len(leaked)} of {len(aborted)} aborted records ({', '.join(leaked)}) next to the committed ones"
        else:
            evidence = f"the committed records did not arrive in order (saw {seen})"
        return Check(READ_COMMITTED, holds, evidence, {"seen": seen, "aborted": aborted, "committed": committed})
    finally:
        del producer
        stack.delete_topics(topic)


def try_zombie_commit(zombie: Any) -> str:
    """Let a producer whose ``transactional.id`` was taken over try to commit; say what the broker did.

    ``"accepted"``, ``"refused (<error>)"`` (fenced), or ``"left hanging for N s"``
    when the broker never answers (Tansu keeps the zombie's transaction open).
    """
    from confluent_kafka import KafkaException

    try:
        zombie.commit_transaction(ZOMBIE_COMMIT_TIMEOUT)
        return "accepted"
    except KafkaException as exc:
        reason = _kafka_error(exc)
        if "TIMED_OUT" in reason:
            return f"left hanging for {ZOMBIE_COMMIT_TIMEOUT:.0f} s ({reason})"
        return f"refused ({reason})"


def check_zombie_fenced(stack: stack_mod.Stack) -> Check:
    """A new producer with the zombie's transactional.id aborts the zombie's open transaction."""
    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"probe-zombie-{run}", partitions=1)
    transactional_id = stack.topic(f"probe-zombie-{run}")
    zombie = successor = None
    try:
        zombie = _transactional_producer(stack, transactional_id)
        zombie_values = [f"zombie-{run}-{i}" for i in range(3)]
        zombie.begin_transaction()
        for value in zombie_values:
            zombie.produce(topic, value=value.encode(), partition=0)
        zombie.flush(OPERATION_TIMEOUT)  # on the broker, inside an open transaction

        # The rolling restart: the replacement starts with the same transactional.id.
        successor = _transactional_producer(stack, transactional_id)
        successor_values = [f"successor-{run}-{i}" for i in range(3)]
        successor.begin_transaction()
        for value in successor_values:
            successor.produce(topic, value=value.encode(), partition=0)
        successor.commit_transaction(OPERATION_TIMEOUT)

        # The zombie wakes up and tries to finish what it started.
        zombie_commit = try_zombie_commit(zombie)

        seen = _read_values(stack, topic, [0], stop_when=lambda v: successor_values[-1] in v)
        leaked = [v for v in seen if v in zombie_values]
        holds = not leaked and successor_values[-1] in seen and zombie_commit != "accepted"
        evidence = (f"after the successor's init_transactions the zombie's commit was {zombie_commit}; "
                    f"a read_committed consumer saw {len(leaked)} of the zombie's {len(zombie_values)} records "
                    f"and {sum(v in seen for v in successor_values)} of the successor's {len(successor_values)}")
        return Check(ZOMBIE_FENCED, holds, evidence,
                     {"seen": seen, "zombie_records": zombie_values, "zombie_commit": zombie_commit})
    finally:
        if zombie is not None:
            try:
                zombie.abort_transaction(ZOMBIE_COMMIT_TIMEOUT)
            except Exception:
                pass  # a fenced producer cannot abort either; that is the point
        del zombie, successor
        stack.delete_topics(topic)


def _parse_group_metadata(metadata: Any) -> dict[str, Any]:
    """Generation and member id from librdkafka's serialised group metadata (``CGMDv2:`` format)."""
    # confluent-kafka hands the serialised form out as bytes; it is opaque on purpose,
    # so anything unexpected yields {} and the evidence just names "the first member".
    if not isinstance(metadata, (bytes, bytearray)):
        return {}
    raw = bytes(metadata)
    try:
        start = raw.index(b"CGMDv2:") + len(b"CGMDv2:")
        # librdkafka copies the generation in the host's byte order.
        (generation,) = struct.unpack("=i", raw[start:start + 4])
        group, member = raw[start + 4:].split(b"\x00")[:2]
        return {"generation": generation, "member_id": member.decode(errors="replace")}
    except (ValueError, struct.error):
        return {}


def _wait_for_assignment(consumer: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        consumer.poll(0.1)
        if consumer.assignment():
            return True
    return False


def check_stale_generation(stack: stack_mod.Stack) -> Check:
    """A transactional offset commit with a replaced member's group metadata is refused."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"probe-generation-{run}", partitions=2)
    group = stack.group(f"probe-generation-{run}")
    first = second = producer = None
    try:
        filler = Producer(stack.producer_config(logger=stack_mod.quiet_logger()))
        for i in range(8):
            filler.produce(topic, value=f"record-{i}".encode(), partition=i % 2)
        filler.flush(OPERATION_TIMEOUT)

        config = stack.consumer_config(**{"group.id": group, "logger": stack_mod.quiet_logger()})
        first = Consumer(config)
        first.subscribe([topic])
        if not _wait_for_assignment(first, 30):
            return Check(STALE_GENERATION, False, "the first consumer never got an assignment, so nothing was tested")
        stale = first.consumer_group_metadata()
        stale_info = _parse_group_metadata(stale)
        first.close()  # the first member leaves; the group rebalances without it

        second = Consumer(config)
        second.subscribe([topic])
        if not _wait_for_assignment(second, 30):
            return Check(STALE_GENERATION, False, "the second consumer never got an assignment, so nothing was tested")
        current_info = _parse_group_metadata(second.consumer_group_metadata())

        stale_offset = 3
        producer = _transactional_producer(stack, stack.topic(f"probe-generation-{run}"))
        producer.begin_transaction()
        try:
            producer.send_offsets_to_transaction([TopicPartition(topic, 0, stale_offset)], stale,
                                                 OPERATION_TIMEOUT)
            producer.commit_transaction(OPERATION_TIMEOUT)
            answer = "accepted"
        except KafkaException as exc:
            answer = f"rejected ({_kafka_error(exc)})"
            try:
                producer.abort_transaction(OPERATION_TIMEOUT)
            except KafkaException:
                pass
        committed = second.committed([TopicPartition(topic, 0)], timeout=OPERATION_TIMEOUT)[0].offset
        moved = committed == stale_offset
        holds = answer != "accepted" and not moved
        who = (f"generation {stale_info.get('generation')}, member {stale_info.get('member_id', '?')[:18]}"
               if stale_info else "the first member's metadata")
        evidence = (f"the commit with the replaced member's metadata ({who}) was {answer}; "
                    f"the group's committed offset on partition 0 is "
                    f"{committed if committed >= 0 else 'unset'}"
                    f"{' (the stale commit landed)' if moved else ''}")
        return Check(STALE_GENERATION, holds, evidence, {
            "answer": answer, "committed_offset": committed, "stale_offset": stale_offset,
            "stale_member": stale_info, "current_member": current_info,
        })
    finally:
        if second is not None:
            second.close()
        del producer
        stack.delete_topics(topic)
        _delete_groups(stack, group)


CHECKS = (
    (IDEMPOTENT_PRODUCER, check_idempotent_producer),
    (READ_COMMITTED, check_read_committed),
    (ZOMBIE_FENCED, check_zombie_fenced),
    (STALE_GENERATION, check_stale_generation),
)


def probe(stack: stack_mod.Stack, *, only: Iterable[str] | None = None,
          progress: Callable[..., None] | None = None) -> ProbeReport:
    """Run every guarantee check (or those named in ``only``) on ``stack``'s broker.

    A check that cannot run (the broker errors out) is reported as failing, with
    the error as its evidence: the guarantee was not shown to hold.
    """
    from confluent_kafka import KafkaException

    wanted = set(only) if only is not None else None
    started = time.monotonic()
    checks = []
    for name, check in CHECKS:
        if wanted is not None and name not in wanted:
            continue
        if progress:
            progress(f"probing: {TITLES[name]}")
        try:
            checks.append(check(stack))
        except (KafkaException, RuntimeError, OSError) as exc:
            checks.append(Check(name, False, f"the check could not complete: {_kafka_error(exc)}"))
    return ProbeReport(stack.broker_flavor, stack.backend, checks, time.monotonic() - started)


# -- Kafka's transaction next to PostgreSQL's ----------------------------------------------------
@dataclass
class SplitOutcome:
    """One run of a Kafka transaction and a PostgreSQL transaction side by side."""

    scenario: str
    kafka_transaction: str
    postgres_transaction: str
    kafka_holds: list[str]
    postgres_holds: list[str]

    @property
    def agree(self) -> bool:
        """True when both systems hold the same charges."""
        return sorted(self.kafka_holds) == sorted(self.postgres_holds)


@dataclass
class TxnVsPostgres:
    """The two scenarios of ``kafka_txn_vs_postgres``."""

    broker_flavor: str
    scenarios: list[SplitOutcome]

    def __getitem__(self, scenario: str) -> SplitOutcome:
        for outcome in self.scenarios:
            if outcome.scenario == scenario:
                return outcome
        raise KeyError(scenario)

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"broker_flavor": self.broker_flavor,
                "scenarios": [dict(asdict(s), agree=s.agree) for s in self.scenarios]}

    def _repr_html_(self) -> str:
        rows = []
        for s in self.scenarios:
            colour = "#d4edda" if s.agree else "#f8d7da"
            rows.append(
                f"<tr style='background:{colour};color:#212529'><td style='text-align:left'>{html.escape(s.scenario)}</td>"
                f"<td>{html.escape(s.kafka_transaction)}</td><td>{html.escape(s.postgres_transaction)}</td>"
                f"<td>{html.escape(', '.join(s.kafka_holds) or '(nothing)')}</td>"
                f"<td>{html.escape(', '.join(s.postgres_holds) or '(nothing)')}</td>"
                f"<td><b>{'yes' if s.agree else 'no'}</b></td></tr>")
        return ("<table><thead><tr><th style='text-align:left'>scenario</th><th>Kafka transaction</th>"
                "<th>PostgreSQL transaction</th><th>Kafka holds (read_committed)</th>"
                "<th>PostgreSQL holds</th><th>agree?</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")


KAFKA_COMMITS = "Kafka commits, PostgreSQL rolls back"
POSTGRES_COMMITS = "PostgreSQL commits, Kafka aborts"


def kafka_txn_vs_postgres(stack: stack_mod.Stack) -> TxnVsPostgres:
    """Run a Kafka transaction beside a PostgreSQL transaction and show they can disagree.

    Kafka's transaction coordinator only spans Kafka partitions and consumer
    offsets; the database's transaction is invisible to it. So:

    - ``KAFKA_COMMITS``: the charge is committed to Kafka, then the database
      transaction fails before its COMMIT (rolled back here, as a crash would):
      Kafka holds the charge, PostgreSQL does not.
    - ``POSTGRES_COMMITS``: the row is committed to PostgreSQL, then the Kafka
      transaction is aborted: PostgreSQL holds the charge, Kafka does not.

    On Apache Kafka the aborted record reaches the broker before the abort, so
    the broker itself aborts it. (An abort of a transaction the broker never saw
    a record of can fail there with INVALID_TXN_STATE under Transactions V2, see
    https://github.com/confluentinc/librdkafka/issues/4849.) On Tansu, which
    shows aborted records to ``read_committed`` (``probe`` tests that
    separately), the record is kept in the client (a long ``linger.ms``) until
    the abort drops it, so the scenario shows the transactions, not that gap.
    Creates and removes its own topic and database.
    """
    import psycopg

    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"txn-vs-pg-{run}", partitions=1)
    db_name = f"txn_vs_pg_{run}"
    dsn = stack.create_database(db_name)
    producer = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE charges (msg_id text PRIMARY KEY, amount_cents int NOT NULL)")
        hold_in_client = stack.broker_flavor == "tansu"
        producer = _transactional_producer(stack, stack.topic(f"txn-vs-pg-{run}"),
                                           **{"linger.ms": 30000 if hold_in_client else 5})
        first, second, end = f"msg-{run}-1", f"msg-{run}-2", f"end-{run}"

        # Scenario 1: Kafka commits, then the database transaction is lost.
        producer.begin_transaction()
        producer.produce(topic, key=first.encode(), value=b"1000", partition=0)
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO charges VALUES (%s, 1000)", (first,))
            producer.commit_transaction(OPERATION_TIMEOUT)
            conn.rollback()

        # Scenario 2: the database commits, then the Kafka transaction is aborted.
        producer.begin_transaction()
        producer.produce(topic, key=second.encode(), value=b"2000", partition=0)
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO charges VALUES (%s, 2000)", (second,))
            conn.commit()
        if not hold_in_client:
            producer.flush(OPERATION_TIMEOUT)
        producer.abort_transaction(OPERATION_TIMEOUT)

        # A committed end marker, so the reader knows it has seen the whole log.
        producer.begin_transaction()
        producer.produce(topic, key=end.encode(), value=b"end", partition=0)
        producer.commit_transaction(OPERATION_TIMEOUT)

        keys = _read_keys(stack, topic, end)
        with psycopg.connect(dsn) as conn:
            rows = [r[0] for r in conn.execute("SELECT msg_id FROM charges ORDER BY msg_id")]
        outcomes = [
            SplitOutcome(KAFKA_COMMITS, "committed", "rolled back",
                         [k for k in keys if k == first], [r for r in rows if r == first]),
            SplitOutcome(POSTGRES_COMMITS, "aborted", "committed",
                         [k for k in keys if k == second], [r for r in rows if r == second]),
        ]
        return TxnVsPostgres(stack.broker_flavor, outcomes)
    finally:
        del producer
        stack.delete_topics(topic)
        stack.drop_database(db_name)


def _read_keys(stack: stack_mod.Stack, topic: str, end: str) -> list[str]:
    """Keys a read_committed consumer sees on partition 0 up to the end marker."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(stack.consumer_config(**{
        "group.id": stack.group(f"txn-vs-pg-reader-{stack_mod.new_run_id()}"),
        "logger": stack_mod.quiet_logger(),
    }))
    keys: list[str] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + READ_TIMEOUT
        while time.monotonic() < deadline and end not in keys:
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                keys.append(msg.key().decode())
    finally:
        consumer.close()
    return keys


# -- the command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m effectively_once probe``."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--only", action="append", choices=[name for name, _ in CHECKS], metavar="CHECK",
                        help="run only this check (repeatable): " + ", ".join(name for name, _ in CHECKS))
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any guarantee fails (by default the report is the result)")


def run(args: argparse.Namespace) -> int:
    """Probe the running stack (or start a private one) and print the report."""
    try:
        with stack_mod.command_stack() as stack:
            report = probe(stack, only=args.only, progress=stack_mod.to_stderr)
    except stack_mod.StackError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict()) if args.json else report.as_text())
    return 1 if args.strict and not report.all_hold else 0
