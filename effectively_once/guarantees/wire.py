"""Just enough of the Kafka wire protocol to resend a record batch exactly as a client retry would.

librdkafka offers no way to resend a batch on purpose; a retry after a lost
response is exactly "the same bytes again", which is what ``WireClient.produce``
sends when called twice with one ``record_batch``.
"""

from __future__ import annotations

import socket
import struct
import time

from effectively_once.guarantees.crc32c import crc32c


def varint(n: int) -> bytes:
    """``n`` as a zigzag varint, the encoding of lengths and deltas inside a record."""
    zigzag = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        low, zigzag = zigzag & 0x7F, zigzag >> 7
        out.append(low | 0x80 if zigzag else low)
        if not zigzag:
            return bytes(out)


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
