"""What each Kafka 4.x proposal module asks the broker at hand, on the wire and through its admin API.

- ``FeatureWireClient`` and ``wire_client(stack)``: the probe's wire client, plus
  ApiVersions v3 (the feature levels the cluster finalized) and Fetch v4 (a partition's
  raw record batches, control batches included);
- ``finalized_features(stack)``: those feature levels (``transaction.version``,
  ``group.version``, ``share.version``...);
- ``broker_setting(stack, name)``: one setting of the broker as it runs.
"""

from __future__ import annotations

import struct

from effectively_once import stack as stack_mod
from effectively_once.guarantees.clients import OPERATION_TIMEOUT
from effectively_once.guarantees.wire import Reader, WireClient, compact_string, nullable_string


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
