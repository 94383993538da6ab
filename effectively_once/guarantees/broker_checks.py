"""The four guarantee checks, ``probe`` that runs them, and ``compare_brokers`` that runs it on two brokers.

Each check makes the broker face one situation that Kafka's exactly-once rests on, and returns
a ``Check``: whether the guarantee held and what a consumer (or the group
coordinator) actually did. Each creates and removes its own topic.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from effectively_once import stack as stack_mod
from effectively_once.guarantees.clients import (
    OPERATION_TIMEOUT,
    ZOMBIE_COMMIT_TIMEOUT,
    delete_groups,
    kafka_error,
    read_values,
    transactional_producer,
)
from effectively_once.guarantees.report import (
    IDEMPOTENT_PRODUCER,
    READ_COMMITTED,
    STALE_GENERATION,
    TITLES,
    ZOMBIE_FENCED,
    BrokerComparison,
    Check,
    ProbeReport,
)
from effectively_once.guarantees.wire import WireClient, record_batch
from effectively_once.kafka import quiet_logger


def check_idempotent_producer(stack: stack_mod.Stack) -> Check:
    """An idempotent acks=all producer is accepted and its retried batch is stored once."""
    from confluent_kafka import KafkaError, Producer

    run = stack_mod.new_run_id()
    topic = stack.create_topic(f"probe-idempotence-{run}", partitions=1)
    try:
        # 1. The client the course uses, configured as its producer is (idempotent, acks=all).
        producer = Producer(stack.producer_config(logger=quiet_logger()))
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                failures.append(err.name())

        client_values = [f"client-{run}-{i}" for i in range(5)]
        for value in client_values:
            producer.produce(topic, value=value.encode(), partition=0, on_delivery=on_delivery)
        left = producer.flush(OPERATION_TIMEOUT)
        if left or failures:
            return Check(IDEMPOTENT_PRODUCER, False,
                         f"the broker refused an idempotent acks=all producer: {failures or f'{left} undelivered'}")

        # 2. The retry: the same batch twice, as a client resends it when a response is lost.
        md = stack.admin().list_topics(topic, timeout=OPERATION_TIMEOUT)
        broker = md.brokers[md.topics[topic].partitions[0].leader]
        wire = WireClient(broker.host, broker.port, OPERATION_TIMEOUT)
        try:
            producer_id, epoch = wire.init_producer_id()
            idem_values = [f"retried-{run}-{i}".encode() for i in range(3)]
            batch = record_batch(idem_values, producer_id, epoch, base_sequence=0)
            answers = [wire.produce(topic, 0, batch), wire.produce(topic, 0, batch)]
            plain_values = [f"plain-{run}-{i}".encode() for i in range(3)]
            plain = record_batch(plain_values, -1, -1, -1)
            control = [wire.produce(topic, 0, plain), wire.produce(topic, 0, plain)]
        finally:
            wire.close()

        # An end marker after everything, so the reader knows it has seen every copy.
        # (Waiting for the end offset is not enough: on Apache Kafka it is the high watermark,
        # the offset below which every in-sync replica holds the records; Tansu reports the
        # last batch's first offset + 1 instead, hiding the rest of that batch.)
        end_marker = f"end-{run}"
        producer.produce(topic, value=end_marker.encode(), partition=0)
        producer.flush(OPERATION_TIMEOUT)
        seen = read_values(stack, topic, [0], stop_when=lambda v: end_marker in v)
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
        producer = transactional_producer(stack, stack.topic(f"probe-aborted-{run}"))
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
        seen = read_values(stack, topic, [0], stop_when=lambda v: committed[-1] in v)
        leaked = [v for v in seen if v in aborted]
        delivered = [v for v in seen if v in committed]
        holds = not leaked and delivered == committed
        if holds:
            evidence = f"saw the {len(delivered)} committed records and none of the {len(aborted)} aborted ones"
        elif leaked:
            evidence = (f"saw {len(leaked)} of {len(aborted)} aborted records ({', '.join(leaked)}) "
                        "next to the committed ones")
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
        reason = kafka_error(exc)
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
        zombie = transactional_producer(stack, transactional_id)
        zombie_values = [f"zombie-{run}-{i}" for i in range(3)]
        zombie.begin_transaction()
        for value in zombie_values:
            zombie.produce(topic, value=value.encode(), partition=0)
        zombie.flush(OPERATION_TIMEOUT)  # on the broker, inside an open transaction

        # The rolling restart: the replacement starts with the same transactional.id.
        successor = transactional_producer(stack, transactional_id)
        successor_values = [f"successor-{run}-{i}" for i in range(3)]
        successor.begin_transaction()
        for value in successor_values:
            successor.produce(topic, value=value.encode(), partition=0)
        successor.commit_transaction(OPERATION_TIMEOUT)

        # The zombie wakes up and tries to finish what it started.
        zombie_commit = try_zombie_commit(zombie)

        seen = read_values(stack, topic, [0], stop_when=lambda v: successor_values[-1] in v)
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
        filler = Producer(stack.producer_config(logger=quiet_logger()))
        for i in range(8):
            filler.produce(topic, value=f"record-{i}".encode(), partition=i % 2)
        filler.flush(OPERATION_TIMEOUT)

        config = stack.consumer_config(**{"group.id": group, "logger": quiet_logger()})
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
        producer = transactional_producer(stack, stack.topic(f"probe-generation-{run}"))
        producer.begin_transaction()
        try:
            producer.send_offsets_to_transaction([TopicPartition(topic, 0, stale_offset)], stale,
                                                 OPERATION_TIMEOUT)
            producer.commit_transaction(OPERATION_TIMEOUT)
            answer = "accepted"
        except KafkaException as exc:
            answer = f"rejected ({kafka_error(exc)})"
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
        delete_groups(stack, group)


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
            checks.append(Check(name, False, f"the check could not complete: {kafka_error(exc)}"))
    return ProbeReport(stack.broker_flavor, stack.backend, checks, time.monotonic() - started)


def compare_brokers(stack: stack_mod.Stack, progress: Callable[..., None] = print) -> BrokerComparison:
    """Probe ``stack``'s broker and, beside it, a private broker of the other kind (Apache Kafka or Tansu).

    On Apache Kafka the other one is a Tansu started for a few seconds; on Tansu
    it is an embedded Apache Kafka (when Java and its jars can be had). The two
    probes run at the same time, each check on its own topic and group: they
    mostly wait for a broker (Tansu leaves a zombie's commit hanging for its
    whole timeout), so side by side they take about as long as the slower one.
    """
    other = "embedded" if stack.broker_flavor == "tansu" else "tansu"
    lock = threading.Lock()

    def said(flavor: str) -> Callable[..., None]:
        def say(*parts: object) -> None:
            with lock:
                progress(" ".join([f"[{flavor}]", *map(str, parts)]))
        return say

    def probe_the_other() -> ProbeReport:
        with stack_mod.private_broker(other, progress=said(other)) as private:
            return probe(private, progress=said(private.broker_flavor))

    with ThreadPoolExecutor(max_workers=1) as pool:
        there = pool.submit(probe_the_other)
        here = probe(stack, progress=said(stack.broker_flavor))
        try:
            other_report = there.result()
        except (stack_mod.StackError, RuntimeError, OSError) as exc:
            # A machine that runs Tansu because it has no Java (or no jars) cannot start the other one.
            progress(f"the {other} broker could not start here ({exc}); the table shows your broker alone")
            return BrokerComparison([here])
    reports = sorted([here, other_report], key=lambda r: r.broker_flavor != "apache-kafka")
    return BrokerComparison(reports)
