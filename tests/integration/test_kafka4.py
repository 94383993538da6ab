"""Kafka 4.x for exactly-once, live on Apache Kafka: transactions, both group protocols, share groups, the tool."""

from __future__ import annotations

import pytest

from effectively_once.guarantees import kafka4
from effectively_once.guarantees.kafka4 import (
    CLASSIC,
    CONSUMER,
)


# -- live, on Apache Kafka -----------------------------------------------------------------------------------------
def apache_kafka(stack):
    if stack.broker_flavor != "apache-kafka":
        pytest.skip(f"Kafka 4.x features need Apache Kafka, not {stack.broker_flavor}")
    return stack


def test_librdkafka_runs_transactions_on_version_1(stack):
    result = kafka4.transaction_epochs(apache_kafka(stack), transactions=2)
    assert result.broker_transaction_version == 2
    assert [b.kind for b in result.batches] == ["data", "commit", "data", "commit"]
    assert not result.client_uses_tv2, result.client_versions
    assert len(set(result.epochs("data") + result.epochs("commit"))) == 1


def test_both_group_protocols_reassign_a_killed_consumers_partitions(stack):
    result = kafka4.measure_reassignment(apache_kafka(stack), rounds=1)
    assert all(len(result.seconds[p]) == 1 and 0 < result.seconds[p][0] < 30 for p in (CLASSIC, CONSUMER))


def test_a_share_group_redelivers_a_released_record(stack):
    outcome = kafka4.share_group_redelivery(apache_kafka(stack))
    assert outcome.error is None, outcome.error
    assert outcome.counts("job-1") == [1, 2]
    assert outcome.counts("job-0") == outcome.counts("job-2") == [1]


def with_kafka_tools(stack):
    if stack.backend not in ("embedded", "docker") or stack.broker_flavor != "apache-kafka":
        pytest.skip(f"kafka-transactions runs with the course's Apache Kafka's jars, not on {stack.backend}/"
                    f"{stack.broker_flavor}")
    return stack


def test_kafka_transactions_lists_and_describes(stack):
    stack = with_kafka_tools(stack)
    listed = kafka4.kafka_transactions(stack, "list")
    assert listed.ok, listed.stderr
    assert listed.stdout.split()[:4] == ["TransactionalId", "Coordinator", "ProducerId", "TransactionState"]
    unknown = kafka4.kafka_transactions(stack, "describe", "--transactional-id", f"{stack.namespace}.nobody")
    assert not unknown.ok and unknown.stderr


def test_a_killed_producers_transaction_holds_the_lso_until_kafka_transactions_aborts_it(stack):
    result = kafka4.abandoned_transaction(with_kafka_tools(stack), records=3)
    assert result.child_returncode == -9
    assert result.state == result.listed_state == "Ongoing", (result.described.as_text(), result.listed.as_text())
    before, after = result.before, result.after
    assert before.last_stable_offset == 0 < 3 <= before.high_watermark, before
    assert before.consumer_position in (None, 0) and before.committed_values == ()
    assert result.open_transaction_start == 0, result.producers.as_text()
    assert result.hanging.ok and result.hanging.rows == [], result.hanging.as_text()
    assert result.aborted.ok, result.aborted.as_text()
    assert after.last_stable_offset == after.high_watermark > before.high_watermark, after
    assert after.committed_values == () and after.consumer_position == after.last_stable_offset
