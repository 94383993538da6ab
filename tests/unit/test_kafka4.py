"""Kafka 4.x for exactly-once without a broker: batch parsing and kafka-transactions output."""

from __future__ import annotations

import struct

import pytest

from effectively_once.guarantees import kafka4
from effectively_once.guarantees.crc32c import crc32c
from effectively_once.guarantees.kafka4 import (
    CLASSIC,
    CONSUMER,
    Reassignment,
    ShareDelivery,
    ShareOutcome,
    StoredBatch,
    ToolRun,
    ToolsUnavailable,
    TransactionEpochs,
    parse_batches,
)
from effectively_once.guarantees.wire import Reader, compact_string, record_batch, uvarint, varint
from effectively_once.stack.core import Stack


def control_batch(base_offset: int, producer_id: int, epoch: int, commit: bool) -> bytes:
    """A transactional control batch (a commit or abort marker) laid out as the broker stores it."""
    key = struct.pack(">hh", 0, 1 if commit else 0)
    value = struct.pack(">hi", 0, 0)
    body = b"\x00" + varint(0) + varint(0) + varint(len(key)) + key + varint(len(value)) + value + varint(0)
    record = varint(len(body)) + body
    after_crc = struct.pack(">hiqqqhii", 0x30, 0, 0, 0, producer_id, epoch, -1, 1) + record
    after_length = struct.pack(">ibI", 0, 2, crc32c(after_crc)) + after_crc
    return struct.pack(">qi", base_offset, len(after_length)) + after_length


def test_parse_batches_reads_epochs_and_markers():
    data = record_batch([b"a", b"b"], producer_id=7, epoch=3, base_sequence=0)
    raw = data + control_batch(2, 7, 4, commit=True) + control_batch(3, 7, 5, commit=False)
    batches = parse_batches(raw + raw[:20])  # a partial batch at the end, as a Fetch may return, is ignored
    assert [(b.kind, b.producer_id, b.producer_epoch) for b in batches] == [
        ("data", 7, 3), ("commit", 7, 4), ("abort", 7, 5)]
    assert [b.base_offset for b in batches] == [0, 2, 3]
    assert not batches[0].transactional and batches[1].transactional


def test_reader_varints_round_trip():
    for n in (0, 1, -1, 63, -64, 300, -300, 1 << 40):
        assert Reader(varint(n)).varint() == n
    assert Reader(uvarint(300)).uvarint() == 300
    assert Reader(compact_string("charges")).compact_string() == "charges"


def epochs_result(data_epochs, commit_epochs, end_txn=1, produce=10, level=2) -> TransactionEpochs:
    batches = []
    for offset, (data, commit) in enumerate(zip(data_epochs, commit_epochs, strict=True)):
        batches += [StoredBatch(2 * offset, 1, data, True, None),
                    StoredBatch(2 * offset + 1, 1, commit, True, "commit")]
    return TransactionEpochs(len(data_epochs), batches, {"EndTxn": {end_txn}, "Produce": {produce}},
                             {"EndTxn": (0, 5), "Produce": (0, 13)}, {"transaction.version": level})


def test_transaction_epochs_tells_tv1_from_tv2():
    tv1 = epochs_result([0, 0], [0, 0])
    assert not tv1.client_uses_tv2 and not tv1.epoch_bumped_per_transaction
    tv2 = epochs_result([0, 1], [1, 2], end_txn=5, produce=12)
    assert tv2.client_uses_tv2 and tv2.epoch_bumped_per_transaction
    assert tv2.epochs("commit") == [1, 2] and tv2.broker_transaction_version == 2
    assert "commit" in tv2.table()


def test_reassignment_text_and_share_counts():
    result = Reassignment(seconds={CLASSIC: [2.0, 2.2, 1.9], CONSUMER: [1.0, 1.1, 0.9]}, rounds=3)
    assert result.median(CLASSIC) == 2.0
    assert "ratio consumer/classic: 0.50x" in result.as_text()
    outcome = ShareOutcome([ShareDelivery("job-1", 1, 1, "RELEASE"), ShareDelivery("job-1", 1, 2, "ACCEPT")], 1)
    assert outcome.counts("job-1") == [1, 2] and outcome.counts("job-0") == []
    assert "no share group" in ShareOutcome([], 0, "refused").as_text()


def test_reassign_once_rejects_an_unknown_protocol():
    with pytest.raises(ValueError, match="protocol"):
        kafka4.reassign_once(None, "eager", "topic")  # type: ignore[arg-type]


def test_tool_run_reads_the_printed_table():
    run = ToolRun(["--bootstrap-server", "127.0.0.1:9092", "describe", "--transactional-id", "t"], 0,
                  "CoordinatorId\tTransactionalId\tProducerId\tTransactionState\tTopicPartitions\n"
                  "1            \tt              \t7         \tOngoing         \ttopic-0\n", "")
    assert run.rows == [{"CoordinatorId": "1", "TransactionalId": "t", "ProducerId": "7",
                         "TransactionState": "Ongoing", "TopicPartitions": "topic-0"}]
    assert run.as_text().startswith("$ kafka-transactions.sh --bootstrap-server <bootstrap> describe")
    assert "topic-0" not in run.as_text(containing="another-id") and "topic-0" in run.as_text(containing="t ")
    empty = ToolRun(["--bootstrap-server", "b:1", "find-hanging"], 0, "Topic\tPartition\tProducerId\n", "")
    assert empty.rows == []
    failed = ToolRun(["--bootstrap-server", "b:1", "abort"], 1, "", "Could not find any open transactions\n")
    assert not failed.ok and failed.as_text().endswith("Could not find any open transactions")


@pytest.mark.parametrize(("backend", "flavor"), [("embedded", "tansu"), ("docker", "apache-kafka"),
                                                 ("external", "unknown")])
def test_kafka_transactions_refuses_a_stack_without_the_jars(backend, flavor):
    stack = Stack(backend=backend, kafka_bootstrap="127.0.0.1:9", base_dsn="postgresql://x", broker_flavor=flavor,
                  owned=False)
    with pytest.raises(ToolsUnavailable, match="--backend (embedded|docker)"):
        kafka4.kafka_transactions(stack, "list")
    with pytest.raises(ToolsUnavailable):
        kafka4.abandoned_transaction(stack)


