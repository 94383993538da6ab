"""Kafka client quotas by user: set, read and remove them, as the instructor, over the wire.

librdkafka (and so confluent-kafka) has no call for the AlterClientQuotas and
DescribeClientQuotas requests of the Admin API (KIP-546), and Kafka's own
``kafka-configs`` starts a JVM per user. So this module speaks those two
requests itself, on one connection logged in with SASL/SCRAM (RFC 5802, the
mechanism the secured stack's listener takes): a room of thirty gets its
quotas in one request, in well under a second.

Each request's layout is the one Kafka's message definitions give
(``clients/src/main/resources/common/message/AlterClientQuotasRequest.json``
and its siblings); only the non-flexible versions are spoken, which Kafka
4.x still accepts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import struct
from collections.abc import Iterable

from effectively_once.stack.room import Quota

API_SASL_HANDSHAKE, API_API_VERSIONS, API_SASL_AUTHENTICATE = 17, 18, 36
API_DESCRIBE_CLIENT_QUOTAS, API_ALTER_CLIENT_QUOTAS = 48, 49
QUOTA_KEYS = ("producer_byte_rate", "consumer_byte_rate", "request_percentage")


class QuotaError(RuntimeError):
    """The broker refused a login or a quota request; the message says which and why."""


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _nullable_string(value: str | None) -> bytes:
    return struct.pack(">h", -1) if value is None else _string(value)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        value = self.data[self.offset:self.offset + length].decode()
        self.offset += length
        return value

    def bytes_(self) -> bytes:
        length = self.take(">i")
        value = self.data[self.offset:self.offset + max(length, 0)]
        self.offset += max(length, 0)
        return value


class QuotaClient:
    """One SASL/SCRAM-authenticated connection to a broker, for client-quota requests."""

    def __init__(self, bootstrap: str, username: str, password: str, mechanism: str = "SCRAM-SHA-512",
                 timeout: float = 30.0) -> None:
        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self.correlation = 0
        try:
            self.versions = self._api_versions()
            self._login(username, password, mechanism)
        except Exception:
            self.sock.close()
            raise

    # -- framing -----------------------------------------------------------------------------
    def call(self, api_key: int, version: int, body: bytes) -> _Reader:
        """Send one request (header v1) and return a reader on its response body (header v0)."""
        self.correlation += 1
        message = struct.pack(">hhi", api_key, version, self.correlation) + _nullable_string("eo-workshop") + body
        self.sock.sendall(struct.pack(">i", len(message)) + message)
        size = struct.unpack(">i", self._recv(4))[0]
        data = self._recv(size)
        if struct.unpack_from(">i", data)[0] != self.correlation:
            raise QuotaError("the broker answered out of order")
        return _Reader(data[4:])

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise QuotaError("the broker closed the connection (a refused login closes it)")
            buf += chunk
        return buf

    def _version(self, api_key: int, wanted: tuple[int, ...]) -> int:
        low, high = self.versions.get(api_key, (0, -1))
        for version in wanted:
            if low <= version <= high:
                return version
        raise QuotaError(f"the broker speaks none of versions {wanted} of request {api_key} (it offers "
                         f"{low}..{high})")

    def _api_versions(self) -> dict[int, tuple[int, int]]:
        reader = self.call(API_API_VERSIONS, 0, b"")
        error, count = reader.take(">hi")
        if error:
            raise QuotaError(f"ApiVersions failed with Kafka error code {error}")
        return {key: (low, high) for key, low, high in (reader.take(">hhh") for _ in range(count))}

    # -- SASL/SCRAM (RFC 5802) ----------------------------------------------------------------
    def _login(self, username: str, password: str, mechanism: str) -> None:
        reader = self.call(API_SASL_HANDSHAKE, self._version(API_SASL_HANDSHAKE, (1,)), _string(mechanism))
        error = reader.take(">h")
        if error:
            offered = [reader.string() for _ in range(reader.take(">i"))]
            raise QuotaError(f"the broker does not take {mechanism} (it offers {', '.join(map(str, offered))})")
        algorithm = {"SCRAM-SHA-512": "sha512", "SCRAM-SHA-256": "sha256"}[mechanism]
        version = self._version(API_SASL_AUTHENTICATE, (1, 0))
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        name = username.replace("=", "=3D").replace(",", "=2C")
        first_bare = f"n={name},r={nonce}"
        server_first = self._authenticate(version, ("n,," + first_bare).encode()).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        if not fields.get("r", "").startswith(nonce):
            raise QuotaError("the broker's SCRAM answer does not carry our nonce")
        salted = hashlib.pbkdf2_hmac(algorithm, password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(salted, b"Client Key", algorithm)
        stored_key = hashlib.new(algorithm, client_key).digest()
        final_bare = f"c=biws,r={fields['r']}"
        auth_message = f"{first_bare},{server_first},{final_bare}".encode()
        signature = hmac.digest(stored_key, auth_message, algorithm)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_final = self._authenticate(version, f"{final_bare},p={base64.b64encode(proof).decode()}".encode())
        server_key = hmac.digest(salted, b"Server Key", algorithm)
        expected = base64.b64encode(hmac.digest(server_key, auth_message, algorithm)).decode()
        if server_final.decode() != f"v={expected}":
            raise QuotaError("the broker's SCRAM signature is wrong: this is not the broker we logged in to")

    def _authenticate(self, version: int, token: bytes) -> bytes:
        reader = self.call(API_SASL_AUTHENTICATE, version, struct.pack(">i", len(token)) + token)
        error = reader.take(">h")
        message = reader.string()
        answer = reader.bytes_()
        if error:
            raise QuotaError(f"the broker refused the login: {message or f'Kafka error code {error}'}")
        return answer

    # -- quotas -------------------------------------------------------------------------------
    def alter(self, changes: dict[str, Quota | None]) -> None:
        """Set each user's quota (``None`` removes every quota of that user), in one request."""
        version = self._version(API_ALTER_CLIENT_QUOTAS, (0,))
        body = struct.pack(">i", len(changes))
        for user, quota in changes.items():
            body += struct.pack(">i", 1) + _string("user") + _nullable_string(user)
            ops = quota.as_dict() if quota is not None else dict.fromkeys(QUOTA_KEYS, 0.0)
            body += struct.pack(">i", len(ops))
            for key, value in ops.items():
                body += _string(key) + struct.pack(">d?", float(value), quota is None)
        body += struct.pack(">?", False)  # validate_only
        reader = self.call(API_ALTER_CLIENT_QUOTAS, version, body)
        reader.take(">i")  # throttle_time_ms
        refused = []
        for _ in range(reader.take(">i")):
            error, message = reader.take(">h"), reader.string()
            entity = [(reader.string(), reader.string()) for _ in range(reader.take(">i"))]
            if error:
                refused.append(f"{entity}: {message or f'Kafka error code {error}'}")
        if refused:
            raise QuotaError("the broker refused quotas for " + "; ".join(refused))

    def describe(self, users: Iterable[str] | None = None) -> dict[str, Quota]:
        """The quotas set for each user (of ``users``, or every user with one), by user name."""
        version = self._version(API_DESCRIBE_CLIENT_QUOTAS, (0,))
        names = list(users) if users is not None else None
        if names is None:  # match_type 2: any user with a quota of their own
            components = struct.pack(">i", 1) + _string("user") + struct.pack(">b", 2) + _nullable_string(None)
            found = self._describe(version, components)
        else:
            found = {}
            for name in names:  # match_type 0: this user, exactly
                components = struct.pack(">i", 1) + _string("user") + struct.pack(">b", 0) + _nullable_string(name)
                found.update(self._describe(version, components))
        return {user: Quota(**{key: values.get(key, 0.0) for key in QUOTA_KEYS}) for user, values in found.items()}

    def _describe(self, version: int, components: bytes) -> dict[str, dict[str, float]]:
        reader = self.call(API_DESCRIBE_CLIENT_QUOTAS, version, components + struct.pack(">?", True))
        reader.take(">i")  # throttle_time_ms
        error, message = reader.take(">h"), reader.string()
        if error:
            raise QuotaError(f"the broker refused to describe quotas: {message or f'Kafka error code {error}'}")
        found: dict[str, dict[str, float]] = {}
        for _ in range(max(reader.take(">i"), 0)):
            entity = dict((reader.string(), reader.string()) for _ in range(reader.take(">i")))
            values = {}
            for _ in range(reader.take(">i")):
                key = reader.string()
                values[key or ""] = reader.take(">d")
            if entity.get("user"):
                found[str(entity["user"])] = values
        return found

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> QuotaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def instructor_quota_client(bootstrap: str) -> QuotaClient:
    """A ``QuotaClient`` logged in with the SASL settings of this process (the instructor's, once attached)."""
    from effectively_once.kafka import client_settings

    settings = client_settings()
    if "sasl.username" not in settings:
        raise QuotaError("no SASL login in EO_KAFKA_CONFIG: quotas are set by the instructor of a secured stack")
    return QuotaClient(bootstrap, settings["sasl.username"], settings["sasl.password"],
                       settings.get("sasl.mechanism", "SCRAM-SHA-512"))
