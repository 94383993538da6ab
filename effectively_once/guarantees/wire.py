"""Just enough of the Kafka wire protocol to resend a record batch exactly as a client retry would, and to read
the batches a broker stored.

librdkafka offers no way to resend a batch on purpose; a retry after a lost
response is exactly "the same bytes again", which is what ``WireClient.produce``
sends when called twice with one ``record_batch``. ``Reader`` and
``parse_batches`` read responses back (``guarantees.kafka4`` uses them to see
the producer epoch of each stored batch and marker); the encodings (``uvarint``,
``varint``, ``compact_string``, ``nullable_string``) live here once.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from effectively_once.guarantees.crc32c import crc32c


def uvarint(n: int) -> bytes:
    """``n`` as an unsigned varint, the encoding of lengths in the flexible (compact) protocol versions."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | 0x80 if n else low)
        if not n:
            return bytes(out)


def compact_string(value: str) -> bytes:
    """A protocol COMPACT_STRING: its length + 1 as an unsigned varint, then UTF-8 bytes."""
    data = value.encode()
    return uvarint(len(data) + 1) + data


class Reader:
    """Reads the primitive types of the Kafka protocol from a response body."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.offset = data, offset

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return values

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.offset]
            self.offset += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def varint(self) -> int:
        raw = self.uvarint()
        return (raw >> 1) ^ -(raw & 1)

    def compact_string(self) -> str:
        length = self.uvarint() - 1
        value = self.data[self.offset:self.offset + length].decode()
        self.offset += length
        return value

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.offset += self.uvarint()


@dataclass(frozen=True)
class StoredBatch:
    """One record batch as the broker stored it: its header, and for a marker whether it commits or aborts."""

    base_offset: int
    producer_id: int
    producer_epoch: int
    transactional: bool
    marker: str | None  # "commit" or "abort" for a control batch, None for data

    @property
    def kind(self) -> str:
        """``data``, ``commit`` or ``abort``."""
        return self.marker or "data"


def parse_batches(records: bytes) -> list[StoredBatch]:
    """The v2 record batches in a Fetch response's ``records`` bytes (a trailing partial batch is ignored)."""
    batches = []
    offset = 0
    while offset + 61 <= len(records):
        base_offset, length = struct.unpack_from(">qi", records, offset)
        end = offset + 12 + length
        if end > len(records):
            break
        (attributes,) = struct.unpack_from(">h", records, offset + 21)
        producer_id, epoch = struct.unpack_from(">qh", records, offset + 43)
        marker = None
        if attributes & 0x20:  # a control batch: its one record's key says commit (1) or abort (0)
            reader = Reader(records, offset + 61)
            reader.varint()  # record length
            reader.offset += 1  # record attributes
            reader.varint()  # timestamp delta
            reader.varint()  # offset delta
            reader.varint()  # key length
            _version, control_type = reader.unpack(">hh")
            marker = "commit" if control_type == 1 else "abort"
        batches.append(StoredBatch(base_offset, producer_id, epoch, bool(attributes & 0x10), marker))
        offset = end
    return batches


def varint(n: int) -> bytes:
    """``n`` as a zigzag varint, the encoding of lengths and deltas inside a record."""
    return uvarint((n << 1) ^ (n >> 63))


def nullable_string(value: str | None) -> bytes:
    """A protocol NULLABLE_STRING: an int16 length (-1 for None), then UTF-8 bytes."""
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def record_batch(values: list[bytes], producer_id: int, epoch: int, base_sequence: int) -> bytes:
    """A v2 record batch of ``values``; producer id -1 means a producer without idempotence."""
    now = int(time.time() * 1000)
    records = b""
    for i, value in enumerate(values):
        body = b"\x00" + varint(0) + varint(i) + varint(-1) + varint(len(value)) + value + varint(0)
        records += varint(len(body)) + body
    after_crc = struct.pack(">hiqqqhii", 0, len(values) - 1, now, now, producer_id, epoch,
                            base_sequence, len(values)) + records
    after_length = struct.pack(">ibI", -1, 2, crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


class WireClient:
    """A connection to one broker that can get a producer id and send one batch (as often as asked)."""

    API_PRODUCE, API_VERSIONS, API_INIT_PRODUCER_ID = 0, 18, 22

    def __init__(self, host: str, port: int, timeout: float):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.correlation = 0
        self.versions = self._api_versions()

    def close(self) -> None:
        """Close the connection."""
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
        """Send one request and return the body of its response."""
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + nullable_string("eo-probe")
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
            data = self.call(self.API_INIT_PRODUCER_ID, 0, nullable_string(None) + struct.pack(">i", 60000))
        _throttle, error, producer_id, epoch = struct.unpack(">ihqh", data[:16])
        if error:
            raise RuntimeError(f"InitProducerId failed with Kafka error code {error}")
        return producer_id, epoch

    def produce(self, topic: str, partition: int, batch: bytes) -> tuple[int, int]:
        """Send one batch with acks=all; return (error code, base offset)."""
        low, high = self.versions.get(self.API_PRODUCE, (0, 0))
        if not low <= 3 <= high:
            raise RuntimeError(f"the broker does not speak Produce v3 (it offers v{low}..v{high})")
        body = (nullable_string(None) + struct.pack(">hi", -1, int(self.timeout * 1000))
                + struct.pack(">i", 1) + nullable_string(topic) + struct.pack(">i", 1)
                + struct.pack(">ii", partition, len(batch)) + batch)
        data = self.call(self.API_PRODUCE, 3, body)
        offset = 4  # one topic in the answer
        (name_length,) = struct.unpack_from(">h", data, offset)
        offset += 2 + name_length + 4  # one partition in the answer
        _partition, error, base_offset, _append_time = struct.unpack_from(">ihqq", data, offset)
        return error, base_offset
