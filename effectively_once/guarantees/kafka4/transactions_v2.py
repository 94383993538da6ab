"""KIP-890 (transaction version 2): the producer epoch per transaction, observed on the broker at hand.

``transaction_epochs(stack)`` runs transactions with one librdkafka transactional
producer, then reads the partition's raw record batches and reports the producer epoch
the broker stored with each data batch and each commit marker, next to the request
versions the client sent and the ``transaction.version`` feature the broker finalized.
On transaction version 2 the epoch goes up with every transaction; on version 1 it stays put.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from effectively_once import stack as stack_mod
from effectively_once.guarantees.clients import OPERATION_TIMEOUT
from effectively_once.guarantees.defaults import RequestLog
from effectively_once.guarantees.kafka4.broker import wire_client
from effectively_once.guarantees.wire import StoredBatch, parse_batches

# The request versions a client must send for the broker to run its transactions on
# transaction version 2 (KIP-890 part 2): EndTxn v5+ and Produce v12+.
TV2_END_TXN_VERSION = 5
TV2_PRODUCE_VERSION = 12


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
