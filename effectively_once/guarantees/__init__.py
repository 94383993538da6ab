"""Which Kafka guarantees does the broker at hand actually give? ``probe(stack)`` asks it, live.

Each check makes the broker face one situation that Kafka's exactly-once rests on,
and reports what a ``read_committed`` consumer (or the group coordinator) actually did:

- ``idempotent_producer``: an idempotent producer with ``acks=all`` is accepted,
  and a resent batch (same producer id, epoch and sequence, exactly what a
  client retry sends after a lost response) is stored once. Apache Kafka
  recognises such a resend only while it is one of the last five batches it
  cached for that producer and partition; the probe resends at once. The same
  resend without a producer id is shown as the control: it is stored twice.
- ``read_committed_hides_aborted``: records of an aborted transaction never
  reach a ``read_committed`` consumer.
- ``zombie_fenced``: a second producer initialising the same ``transactional.id``
  aborts the first one's open transaction; the zombie's records never reach a
  ``read_committed`` consumer.
- ``stale_generation_rejected``: a transactional offset commit carrying the
  consumer-group metadata of a member that has since been replaced is refused
  (KIP-447), and the group's committed offset does not move.

Apache Kafka gives all four. Tansu, the Kafka-protocol broker the ``tansu``
backend runs when neither Docker nor Java is at hand, gives only the first; the
probe shows that rather than assuming it.

``kafka_txn_vs_postgres(stack)`` shows why none of this reaches PostgreSQL: a
Kafka transaction and a database transaction side by side commit and roll back
independently.

``compare_leaks()`` (pure, no broker; notebook 04 shows it) tells when a consumer's
dedup table makes up for a broker that shows aborted records or does not fence
zombies: only when every aborted transaction is retried and each ``msg_id`` is
derived from the input.

The package, by concern:

- ``broker_checks``: the four checks, ``probe`` and ``compare_brokers``;
- ``report``: the guarantee names, ``Check``, ``ProbeReport``, ``BrokerComparison`` and how they render;
- ``clients``: the confluent-kafka clients the checks share, and their timeouts;
- ``wire``: a minimal Kafka wire-protocol client that resends a batch as a client retry would;
- ``crc32c``: the record batch checksum;
- ``txn_vs_postgres``: ``kafka_txn_vs_postgres``, a Kafka and a PostgreSQL transaction side by side;
- ``leak``: ``compare_leaks``, what a dedup table keyed by ``msg_id`` absorbs of an aborted or zombie transaction;
- ``kafka4``: what Kafka 4.x changed, live, one module per proposal: the producer epoch per transaction
  (KIP-890), the time each group protocol takes to reassign a killed consumer's partitions (KIP-848), a share
  group's redelivery (KIP-932), ``kafka-transactions`` on a transaction a dead producer left open (KIP-664);
- ``defaults``: what librdkafka does when a setting is left out (idempotence, the group protocol), on the wire;
- ``cli``: ``python -m effectively_once probe`` (and ``python -m effectively_once.guarantees``).
"""

from __future__ import annotations

from effectively_once.guarantees.broker_checks import (
    CHECKS,
    check_idempotent_producer,
    check_read_committed,
    check_stale_generation,
    check_zombie_fenced,
    compare_brokers,
    probe,
    try_zombie_commit,
)
from effectively_once.guarantees.clients import (
    OPERATION_TIMEOUT,
    READ_TIMEOUT,
    ZOMBIE_COMMIT_TIMEOUT,
    delete_groups,
    kafka_error,
    read_values,
    transactional_producer,
)
from effectively_once.guarantees.crc32c import crc32c as _crc32c  # noqa: F401 (a private name, see below)
from effectively_once.guarantees.kafka4 import (
    CLASSIC,
    CONSUMER,
    TV2_END_TXN_VERSION,
    TV2_PRODUCE_VERSION,
    Reassignment,
    ShareOutcome,
    StoredBatch,
    TransactionEpochs,
    measure_reassignment,
    share_group_redelivery,
    transaction_epochs,
)
from effectively_once.guarantees.leak import (
    DERIVED,
    FRESH,
    ID_SCHEMES,
    PHANTOM,
    RETRIED,
    STORIES,
    ZOMBIE,
    LeakComparison,
    LeakOutcome,
    compare_leaks,
)
from effectively_once.guarantees.probe_command import HELP, add_arguments, run
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
from effectively_once.guarantees.txn_vs_postgres import (
    KAFKA_COMMITS,
    POSTGRES_COMMITS,
    SplitOutcome,
    TxnVsPostgres,
    kafka_txn_vs_postgres,
)
from effectively_once.guarantees.wire import WireClient, nullable_string, record_batch, varint

# Private names that code outside the package imported when it was a single module
# (and _crc32c, imported above under its private name so the submodule attribute stays the module).
_varint = varint
_read_values = read_values
_transactional_producer = transactional_producer

__all__ = [
    "BrokerComparison", "CHECKS", "CLASSIC", "CONSUMER", "Check", "DERIVED", "FRESH", "HELP", "IDEMPOTENT_PRODUCER",
    "ID_SCHEMES", "KAFKA_COMMITS", "LeakComparison", "LeakOutcome", "OPERATION_TIMEOUT", "PHANTOM",
    "POSTGRES_COMMITS", "ProbeReport", "READ_COMMITTED", "READ_TIMEOUT", "RETRIED", "Reassignment",
    "STALE_GENERATION", "STORIES", "ShareOutcome", "SplitOutcome", "StoredBatch", "TITLES", "TV2_END_TXN_VERSION",
    "TV2_PRODUCE_VERSION", "TransactionEpochs", "TxnVsPostgres", "WireClient", "ZOMBIE", "ZOMBIE_COMMIT_TIMEOUT",
    "ZOMBIE_FENCED", "add_arguments", "check_idempotent_producer", "check_read_committed", "check_stale_generation",
    "check_zombie_fenced", "compare_brokers", "compare_leaks", "delete_groups", "kafka_error",
    "kafka_txn_vs_postgres", "measure_reassignment", "nullable_string", "probe", "read_values", "record_batch",
    "run", "share_group_redelivery", "transaction_epochs", "transactional_producer", "try_zombie_commit", "varint",
]
