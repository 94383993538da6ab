"""The consumer's side of the provider's API: one charge call, with retries done right, and the ledger lookup.

Retries keep the same Idempotency-Key (that is the whole point of the key),
back off exponentially with full jitter, and honour ``Retry-After``. What is
worth retrying: timeouts, dropped connections, 5xx, 429 and 409 (the key is in
flight elsewhere). Any other 4xx will fail the same way every time, so it is
not retried: the message goes to the dead-letter topic at once.

One 5xx is not worth retrying: a 5xx *replayed* under the key
(``Idempotent-Replayed: true``). The provider stored that error as the key's
answer and will give it to every retry with the key, and it says nothing
about whether the money moved. ``charge`` raises ``KeySpent`` for it, and the
caller reconciles: ``charges_for(msg_id)`` asks the provider's ledger
(``GET /v1/charges?msg_id=...``) whether a charge for the message exists
(see ``steps.charge_or_reconcile``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from effectively_once.observe.spans import outgoing_traceparent
from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER, ChargeMessage

RETRYABLE_STATUS = {409, 429, 500, 502, 503, 504}


class ChargeFailed(Exception):
    """The provider did not charge; ``kind`` is ``rejected`` (4xx), ``retries_exhausted`` or ``key_spent``."""

    def __init__(self, kind: str, message: str, status: int | None = None, retries: int = 0) -> None:
        super().__init__(message)
        self.kind, self.status, self.retries = kind, status, retries


class KeySpent(ChargeFailed):
    """The provider replayed a 5xx stored under the key: every retry with this key gets it again.

    Whether the money moved is unknown: the attempt that stored the error may
    have failed before the charge or after it. Do not retry under this key (it
    only replays the error) and do not charge under another one before looking:
    ask the ledger first (``ProviderClient.charges_for``).
    """

    def __init__(self, message: str, status: int | None = None, retries: int = 0) -> None:
        super().__init__("key_spent", message, status, retries)


@dataclass(frozen=True)
class ChargeResult:
    """What one charge call ended with, after its retries.

    ``reconciled``: no charge call succeeded; the charge was found in the
    provider's ledger after the key replayed a 500. ``idempotency_key``: the key
    the charge was made under (None when it was sent without one).
    """

    charge_id: str
    replayed: bool
    retries: int
    duration_ms: float
    reconciled: bool = False
    idempotency_key: str | None = None


class ProviderClient:
    """Calls the provider at ``url`` over one kept-alive connection: ``charge`` and ``charges_for``.

    ``on_answer``, when given, hears of every charge the provider answered with
    a 200: ``on_answer(msg_id, idempotency_key, status, replay_header, charge_id)``,
    where ``replay_header`` is the ``Idempotent-Replayed`` header as sent
    (``"true"`` for an answer replayed from the key store, None when absent).
    """

    def __init__(self, url: str, api_key: str = DEFAULT_API_KEY, *, timeout: float = 5.0, max_retries: int = 5,
                 backoff: float = 0.05, max_backoff: float = 1.0, seed: int | None = None,
                 on_answer: Callable[[str, str | None, int, str | None, str], None] | None = None) -> None:
        self.url = url.rstrip("/")
        self.on_answer = on_answer
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._rng = random.Random(seed)
        self._http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {api_key}"},
                                  trust_env=False)

    def charge(self, msg: ChargeMessage, idempotency_key: str | None = None) -> ChargeResult:
        """Charge ``msg`` once from the caller's point of view; raise ``ChargeFailed`` if it cannot.

        Raises ``KeySpent`` (a ``ChargeFailed``) when the provider replays a 5xx
        stored under ``idempotency_key``: the caller must reconcile.
        """
        # The consumer's span for this message, when one is current, is the provider call's parent.
        headers = {"traceparent": outgoing_traceparent(msg.traceparent)}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        started = time.perf_counter()
        response, retries = self._send("POST", "/v1/charges", json=msg.body(), headers=headers)
        charge_id, replay = response.json()["id"], response.headers.get(REPLAY_HEADER)
        if self.on_answer is not None:
            self.on_answer(msg.msg_id, idempotency_key, response.status_code, replay, charge_id)
        return ChargeResult(charge_id, replay == "true", retries,
                            (time.perf_counter() - started) * 1000, idempotency_key=idempotency_key)

    def charges_for(self, msg_id: str) -> list[dict[str, Any]]:
        """The provider's ledger rows for ``msg_id``, oldest first: ``GET /v1/charges?msg_id=...``.

        Each row has the charge's ``id`` and the ``idempotency_key`` it was made
        under. Empty means no money moved for the message. Retried like a charge
        (a GET moves no money); raises ``ChargeFailed`` when it cannot get an answer.
        """
        response, _ = self._send("GET", "/v1/charges", params={"msg_id": msg_id})
        return list(response.json()["data"])

    def _send(self, method: str, path: str, **request: Any) -> tuple[httpx.Response, int]:
        """The 200 response to the request and the retries it took, or ``ChargeFailed``."""
        retries = 0
        while True:
            retry_after = None
            try:
                response = self._http.request(method, f"{self.url}{path}", **request)
            except httpx.TransportError as exc:  # timeout, refused or dropped connection
                status, reason = None, f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status == 200:
                    return response, retries
                reason = _error_text(response)
                if status >= 500 and response.headers.get(REPLAY_HEADER) == "true":
                    raise KeySpent(f"HTTP {status} replayed under the Idempotency-Key: {reason}", status, retries)
                if status not in RETRYABLE_STATUS:
                    raise ChargeFailed("rejected", f"HTTP {status}: {reason}", status, retries)
                retry_after = response.headers.get("retry-after")
            if retries >= self.max_retries:
                raise ChargeFailed("retries_exhausted",
                                   f"gave up after {retries} retries; last: "
                                   f"{'HTTP ' + str(status) if status else 'no response'}: {reason}",
                                   status, retries)
            retries += 1
            time.sleep(self._delay(retries, retry_after))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        # Full jitter: many consumers retrying after one outage must not retry in lockstep.
        delay = self._rng.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.max_backoff))
            except ValueError:
                pass
        return delay

    def close(self) -> None:
        """Close the kept-alive connection."""
        self._http.close()


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error.get('type')}: {error.get('message')}"
    except Exception:
        return response.text[:200]
