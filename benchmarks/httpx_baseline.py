"""The consumer's client before it took the official SDK, as a ``--step``: the baseline of benchmarks/pipeline.py.

The consumer itself calls the provider only through the SDK (``payments.client``).
This step is the one-shot charge as the course's consumer made it before: one
kept-alive ``httpx`` connection, a JSON body, the same retries (the same key on
every attempt; 5xx, 429, 409 and dropped connections retried with backoff).
Raw HTTP on purpose, and only here: it is what the SDK-based consumer is
measured against, side by side.
"""

from __future__ import annotations

import random
import time

import httpx

from effectively_once.payments.client import ChargeFailed, ChargeResult, KeySpent
from effectively_once.payments.messages import REPLAY_HEADER, ChargeMessage
from effectively_once.payments.steps import Outcome, charge_in_one_call

RETRYABLE_STATUS = {409, 429, 500, 502, 503, 504}
_clients: dict[tuple[str, str], httpx.Client] = {}


def _client(url: str, api_key: str) -> httpx.Client:
    """One kept-alive connection per provider, for the life of the consumer process."""
    if (url, api_key) not in _clients:
        _clients[(url, api_key)] = httpx.Client(base_url=url, timeout=5.0, trust_env=False,
                                                headers={"Authorization": f"Bearer {api_key}"})
    return _clients[(url, api_key)]


def charge_over_httpx(http: httpx.Client, msg: ChargeMessage, key: str | None, max_retries: int = 5) -> ChargeResult:
    """``POST /v1/charges`` with a JSON body; retried with the same key; ``ChargeFailed`` when it gives up."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    started, retries = time.perf_counter(), 0
    while True:
        try:
            response = http.post("/v1/charges", json=msg.body(), headers=headers)
            status = response.status_code
        except httpx.TransportError as exc:
            response, status, reason = None, None, f"{type(exc).__name__}: {exc}"
        if response is not None and status == 200:
            return ChargeResult(response.json()["id"], response.headers.get(REPLAY_HEADER) == "true", retries,
                                (time.perf_counter() - started) * 1000, idempotency_key=key)
        if response is not None:
            reason = f"HTTP {status}: {response.text[:200]}"
            if status >= 500 and response.headers.get(REPLAY_HEADER) == "true":
                raise KeySpent(reason, status, retries)
            if status not in RETRYABLE_STATUS:
                raise ChargeFailed("rejected", reason, status, retries)
        if retries >= max_retries:
            raise ChargeFailed("retries_exhausted", f"gave up after {retries} retries; last: {reason}", status, retries)
        retries += 1
        time.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** retries)))


def process_charge_httpx(ctx, msg: ChargeMessage) -> Outcome:
    """``steps.process_charge`` with the httpx client instead of the SDK."""
    http = _client(ctx.provider.url, ctx.provider.api_key)
    return charge_in_one_call(ctx, msg, lambda key: charge_over_httpx(http, msg, key, ctx.provider.max_retries))
