"""What Kafka 4.x changed for exactly-once, observed on the broker at hand rather than assumed.

One module per proposal, each standing on its own (none imports another):

- ``transactions_v2`` (KIP-890): ``transaction_epochs(stack)``, the producer epoch the broker
  stored with each transaction's data and commit marker, next to the request versions the
  client sent and the ``transaction.version`` feature the broker finalized;
- ``group_protocols`` (KIP-848): ``measure_reassignment(stack)``, how long each group protocol
  (classic, and the consumer protocol) takes to hand a SIGKILLed consumer's partitions to the survivor;
- ``share_groups`` (KIP-932): ``share_group_redelivery(stack)``, a released record comes back
  with a higher delivery count;
- ``transactions_tool`` (KIP-664): ``kafka_transactions(stack, *args)``, Kafka's own
  ``kafka-transactions.sh``, and ``abandoned_transaction(stack)``, a transaction whose producer
  was SIGKILLed mid-flight, found and aborted with it;

and what they share, ``broker``: the wire client with the broker's feature levels and a raw
fetch, ``finalized_features(stack)`` and ``broker_setting(stack, name)``.
"""

from __future__ import annotations

from effectively_once.guarantees.kafka4.broker import (
    FeatureWireClient,
    broker_setting,
    finalized_features,
    wire_client,
)
from effectively_once.guarantees.kafka4.group_protocols import (
    CLASSIC,
    CONSUMER,
    PROTOCOLS,
    Reassignment,
    end_victim,
    measure_reassignment,
    reassign_once,
    start_victim,
)
from effectively_once.guarantees.kafka4.share_groups import ShareDelivery, ShareOutcome, share_group_redelivery
from effectively_once.guarantees.kafka4.transactions_tool import (
    TOOLS_LOG4J,
    TRANSACTIONS_COMMAND,
    AbandonedTransaction,
    PartitionOffsets,
    ToolRun,
    ToolsUnavailable,
    abandoned_transaction,
    kafka_transactions,
    partition_offsets,
)
from effectively_once.guarantees.kafka4.transactions_v2 import (
    TV2_END_TXN_VERSION,
    TV2_PRODUCE_VERSION,
    TransactionEpochs,
    transaction_epochs,
)
from effectively_once.guarantees.wire import StoredBatch, parse_batches

__all__ = [
    "CLASSIC", "CONSUMER", "PROTOCOLS", "TOOLS_LOG4J", "TRANSACTIONS_COMMAND", "TV2_END_TXN_VERSION",
    "TV2_PRODUCE_VERSION", "AbandonedTransaction", "FeatureWireClient", "PartitionOffsets", "Reassignment",
    "ShareDelivery", "ShareOutcome", "StoredBatch", "ToolRun", "ToolsUnavailable", "TransactionEpochs",
    "abandoned_transaction", "broker_setting", "end_victim", "finalized_features", "kafka_transactions",
    "measure_reassignment", "parse_batches", "partition_offsets", "reassign_once", "share_group_redelivery",
    "start_victim", "transaction_epochs", "wire_client",
]
