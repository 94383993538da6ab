"""The consumer's side of the provider's API, through the official Stripe SDK (``stripe``, pinned).

Every call goes through one ``stripe.StripeClient`` pointed at the provider
(``base_addresses={"api": url}``), as a payments engineer would write it:

- the PaymentIntent path: ``create_intent`` (no money moves), ``confirm_intent``
  (the call that moves money) and ``retrieve_intent`` (what became of it, read
  by id, strongly consistent: https://docs.stripe.com/api/payment_intents/retrieve);
- the one-shot Charges path: ``charge`` (the legacy ``POST /v1/charges``);
- Search: ``search_charges``, kept only to show why it cannot settle a payment
  (eventually consistent: https://docs.stripe.com/search#data-freshness).

What the SDK does by itself (stripe-python 16.1.0, ``_http_client.HTTPClient``):
it sends an Idempotency-Key on every POST, the one given in
``options={"idempotency_key": ...}`` or else a random one of its own, and
retries a timeout, a refused connection, a 409 and a 5xx under that same key,
up to ``max_network_retries`` times, unless the answer says
``Stripe-Should-Retry: false`` (the provider says so on every 5xx stored under a
key: a retry would only be replayed the same 5xx). So the SDK's own key
protects the SDK's own retries of one call, and nothing else: a second call,
from a retry loop around it or from a Kafka redelivery, is a new request under a
new random key.

What the SDK does not retry: a 429 (only when the answer says
``Stripe-Should-Retry: true``), and a connection that broke in the middle of
the answer (requests raises ``ChunkedEncodingError``, which the SDK does not
count as a connection error). This wrapper retries the 429 itself, waiting at
least its ``Retry-After`` (a 429 never began executing, so even a new random
key cannot move money twice); the broken answer it reports as indeterminate,
like every answer that does not say whether the money moved.

Every failure becomes a ``ChargeFailed`` with a ``kind``: ``rejected`` (a 4xx
that will fail the same way every time, a declined card included; the message
goes to the dead-letter topic), ``retries_exhausted`` (no usable answer after
the retries), or ``key_spent`` (``KeySpent``: a 5xx stored under the key, which
every retry with it gets again). ``ChargeFailed.indeterminate`` says whether
the money may have moved; on the PaymentIntent path the step then retrieves
the PaymentIntent (``steps.confirm_or_recover``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe

from effectively_once.observe.spans import outgoing_traceparent
from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER, ChargeMessage

SHOULD_RETRY_HEADER = "Stripe-Should-Retry"
# The error code of a confirm that finds its PaymentIntent already succeeded (or otherwise not confirmable).
UNEXPECTED_STATE = "payment_intent_unexpected_state"


class ChargeFailed(Exception):
    """The provider did not charge; ``kind`` is ``rejected`` (4xx), ``retries_exhausted`` or ``key_spent``.

    ``status`` is the last HTTP status (None when no answer came), ``code`` the
    Stripe error code when the answer had one (``card_declined``,
    ``payment_intent_unexpected_state``, ``idempotency_key_in_use``...).
    """

    def __init__(self, kind: str, message: str, status: int | None = None, retries: int = 0,
                 code: str | None = None, replayed: bool = False) -> None:
        super().__init__(message)
        self.kind, self.status, self.retries, self.code = kind, status, retries, code
        self.replayed = replayed  # the answer came from the key store: an earlier request spent the key

    @property
    def indeterminate(self) -> bool:
        """True when the call may have moved money: a stored 5xx, or no usable answer (timeout, dropped
        connection, 5xx, a key still in flight). A refused request (4xx) and a rate limit never began."""
        return self.kind == "key_spent" or (self.kind == "retries_exhausted" and self.status != 429)


class KeySpent(ChargeFailed):
    """The provider stored a 5xx under the key: every retry with this key gets it again.

    Whether the money moved is unknown: the attempt that stored the error may
    have failed before the charge or after it. Do not retry under this key (it
    only replays the error) and do not charge under another one before looking:
    on the PaymentIntent path, retrieve the PaymentIntent by id.
    """

    def __init__(self, message: str, status: int | None = None, retries: int = 0, code: str | None = None,
                 replayed: bool = False) -> None:
        super().__init__("key_spent", message, status, retries, code, replayed)


@dataclass(frozen=True)
class ChargeResult:
    """What one money-moving call ended with, after its retries.

    ``recovered``: the call itself gave no answer that said so; the
    PaymentIntent, retrieved by id, showed the money had moved.
    ``idempotency_key``: the key the charge was made under (the SDK's own
    random one when the caller passed none). ``payment_intent``: its
    PaymentIntent, on that path.
    """

    charge_id: str
    replayed: bool
    retries: int
    duration_ms: float
    recovered: bool = False
    idempotency_key: str | None = None
    payment_intent: str | None = None


@dataclass(frozen=True)
class IntentResult:
    """A PaymentIntent as the create (or a retrieve) returned it: enough to resume its payment from it."""

    id: str
    status: str
    replayed: bool
    retries: int
    latest_charge: str | None = None
    idempotency_key: str | None = None
    amount: int = 0
    currency: str = ""
    customer: str | None = None
    msg_id: str | None = None

    def message(self) -> ChargeMessage:
        """The charge message this PaymentIntent was created for, rebuilt from it (its metadata holds the msg_id)."""
        if not self.msg_id:
            raise ValueError(f"the PaymentIntent {self.id} carries no msg_id in its metadata")
        return ChargeMessage(self.msg_id, self.customer or "", self.amount, self.currency)


def _intent(obj: Any, replayed: bool, retries: int, key: str | None = None) -> IntentResult:
    metadata = obj.metadata.to_dict() if obj.metadata is not None else {}
    return IntentResult(obj.id, obj.status, replayed, retries, obj.latest_charge, key, obj.amount, obj.currency,
                        obj.customer, metadata.get("msg_id"))


class ObservedHTTPClient(stripe.RequestsClient):
    """The SDK's default HTTP client (requests), which also counts each attempt and tells the hooks its answer.

    One attempt is one HTTP request the SDK sends, its own retries included.
    ``last_key`` is the Idempotency-Key of the last attempt (the SDK's random
    one when the caller gave none); ``log``, when a list, gets every attempt as
    ``(method, path, key, status or None, what went wrong or None)``. The
    session ignores proxy settings from the environment: a proxy must not sit
    between the consumer and a provider on this machine.
    """

    def __init__(self, timeout: float) -> None:
        import requests

        session = requests.Session()
        session.trust_env = False
        super().__init__(timeout=timeout, session=session)
        self.attempts = 0
        self.last_key: str | None = None
        self.hooks: list[Callable[[int], None]] = []
        self.log: list[tuple[str, str, str | None, int | None, str | None]] | None = None
        self._count_lock = threading.Lock()

    def request(self, method: str, url: str, headers: Any, post_data: Any = None) -> Any:  # type: ignore[override]
        key = (headers or {}).get("Idempotency-Key")
        with self._count_lock:
            self.attempts += 1
            self.last_key = key or self.last_key
        try:
            answer = super().request(method, url, headers, post_data)
        except stripe.APIConnectionError as exc:
            if self.log is not None:
                cause = exc.__cause__
                self.log.append((method.upper(), url.split("/", 3)[-1], key, None,
                                 type(cause).__name__ if cause is not None else "no answer"))
            raise
        if self.log is not None:
            self.log.append((method.upper(), url.split("/", 3)[-1], key, answer[1], None))
        for hook in self.hooks:
            hook(answer[1])
        return answer


class ProviderClient:
    """The provider's API through the official SDK: the PaymentIntent path, the Charges path, Search.

    ``max_retries`` is the SDK's ``max_network_retries`` (and how often a 429
    is retried), ``timeout`` the seconds one attempt may take. ``on_answer``,
    when given, hears of every money-moving call the provider answered with a
    200: ``on_answer(msg_id, idempotency_key, status, replay_header, charge_id)``,
    where ``replay_header`` is the ``Idempotent-Replayed`` header as sent
    (``"true"`` for an answer replayed from the key store, None when absent).
    """

    def __init__(self, url: str, api_key: str = DEFAULT_API_KEY, *, timeout: float = 5.0, max_retries: int = 5,
                 backoff: float = 0.05, max_backoff: float = 1.0, seed: int | None = None,
                 on_answer: Callable[[str, str | None, int, str | None, str], None] | None = None) -> None:
        self.url, self.api_key = url.rstrip("/"), api_key
        self.on_answer = on_answer
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._rng = random.Random(seed)
        self.http = ObservedHTTPClient(timeout)
        self.stripe = stripe.StripeClient(api_key, base_addresses={"api": self.url},
                                          max_network_retries=max_retries, http_client=self.http)

    def add_answer_hook(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(status)`` for every HTTP answer the SDK receives, its retries included."""
        self.http.hooks.append(hook)

    # -- the PaymentIntent path --------------------------------------------------------------
    def create_intent(self, msg: ChargeMessage, idempotency_key: str | None = None) -> IntentResult:
        """Create the PaymentIntent of ``msg`` (not confirmed: no money moves); ``ChargeFailed`` if it cannot."""
        intent, retries = self._call(lambda options: self.stripe.v1.payment_intents.create(
            params=msg.intent_params(), options=options), idempotency_key, msg.traceparent)  # type: ignore[arg-type]
        return _intent(intent, _replayed(intent), retries, self.http.last_key)

    def confirm_intent(self, msg: ChargeMessage, intent_id: str, idempotency_key: str | None = None) -> ChargeResult:
        """Confirm the PaymentIntent ``intent_id``: the call that moves money.

        Raises ``ChargeFailed``: ``indeterminate`` when the money may have moved,
        ``code == "payment_intent_unexpected_state"`` when the PaymentIntent
        cannot be confirmed (it already succeeded, most likely).
        """
        started = time.perf_counter()
        intent, retries = self._call(lambda options: self.stripe.v1.payment_intents.confirm(
            intent_id, options=options), idempotency_key, msg.traceparent)
        charge_id = intent.latest_charge
        if intent.status != "succeeded" or not isinstance(charge_id, str):
            raise ChargeFailed("rejected", f"the PaymentIntent {intent_id} is {intent.status} after its confirm",
                               200, retries)
        key = self.http.last_key
        self._answered(msg, key, intent, charge_id)
        return ChargeResult(charge_id, _replayed(intent), retries, (time.perf_counter() - started) * 1000,
                            idempotency_key=key, payment_intent=intent_id)

    def retrieve_intent(self, intent_id: str) -> IntentResult:
        """The PaymentIntent as it is now, read by id (strongly consistent); ``ChargeFailed`` if no answer comes."""
        intent, retries = self._call(lambda options: self.stripe.v1.payment_intents.retrieve(
            intent_id, options=options), None, None)
        return _intent(intent, False, retries)

    # -- the one-shot Charges path ------------------------------------------------------------
    def charge(self, msg: ChargeMessage, idempotency_key: str | None = None) -> ChargeResult:
        """Charge ``msg`` in one call (``POST /v1/charges``); raise ``ChargeFailed`` if it cannot.

        Without ``idempotency_key`` the SDK sends a random key of its own: its
        retries of this call are covered, a second call is a second charge.
        """
        started = time.perf_counter()
        charge, retries = self._call(lambda options: self.stripe.v1.charges.create(
            params=msg.body(), options=options), idempotency_key, msg.traceparent)  # type: ignore[arg-type]
        key = self.http.last_key
        self._answered(msg, key, charge, charge.id)
        return ChargeResult(charge.id, _replayed(charge), retries, (time.perf_counter() - started) * 1000,
                            idempotency_key=key)

    def search_charges(self, msg_id: str) -> list[str]:
        """The ids of the succeeded charges whose ``metadata.msg_id`` is ``msg_id``, as Search finds them.

        Eventually consistent (https://docs.stripe.com/search#data-freshness):
        a charge made in the last ``search_delay_ms`` is not found. "Not found"
        is therefore no proof that no money moved; ``recovery.search_then_charge``
        shows where trusting it leads.
        """
        found, _ = self._call(lambda options: self.stripe.v1.charges.search(
            params={"query": f"metadata['msg_id']:'{msg_id}' AND status:'succeeded'"}, options=options), None, None)
        return [charge.id for charge in found.data]

    # -- plumbing ------------------------------------------------------------------------------
    def _answered(self, msg: ChargeMessage, key: str | None, obj: Any, charge_id: str) -> None:
        if self.on_answer is not None:
            self.on_answer(msg.msg_id, key, 200, obj.last_response.headers.get(REPLAY_HEADER), charge_id)

    def _call(self, call: Callable[[stripe.RequestOptions], Any], key: str | None,
              traceparent: str | None) -> tuple[Any, int]:
        """``call(options)`` with the key and the trace context, the 429s retried; (its result, retries taken)."""
        options: stripe.RequestOptions = {}
        if key is not None:
            options["idempotency_key"] = key
        if traceparent is not None:
            # The consumer's span for this message, when one is current, is the provider call's parent.
            options["headers"] = {"traceparent": outgoing_traceparent(traceparent)}
        self.http.attempts, self.http.last_key = 0, None
        limited = 0
        while True:
            try:
                return call(options), max(self.http.attempts - 1, 0)
            except stripe.RateLimitError as exc:
                if limited >= self.max_retries:
                    raise _failure(exc, max(self.http.attempts - 1, 0)) from exc
                limited += 1
                time.sleep(self._delay(limited, (exc.headers or {}).get("Retry-After")))
            except stripe.StripeError as exc:
                raise _failure(exc, max(self.http.attempts - 1, 0)) from exc

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
        self.http.close()


def _replayed(obj: Any) -> bool:
    return obj.last_response is not None and obj.last_response.headers.get(REPLAY_HEADER) == "true"


def _failure(exc: stripe.StripeError, retries: int) -> ChargeFailed:
    """The ``ChargeFailed`` an SDK error stands for (see the module's docstring)."""
    status, headers = exc.http_status, exc.headers or {}
    error = exc.error
    code = exc.code or (getattr(error, "code", None) if error is not None else None)
    kind_of_error = getattr(error, "type", None) if error is not None else None
    text = f"HTTP {status}: {kind_of_error or type(exc).__name__}: {exc.user_message or exc}" if status else \
        f"no answer: {type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"
    if status is not None and status >= 500 and (headers.get(REPLAY_HEADER) == "true"
                                                  or headers.get(SHOULD_RETRY_HEADER) == "false"):
        replayed = headers.get(REPLAY_HEADER) == "true"
        return KeySpent(f"{text} (stored under the Idempotency-Key{', replayed' if replayed else ''}: every retry "
                        "with it gets it again)", status, retries, code, replayed)
    if status is None or status >= 500 or status in (409, 429):
        return ChargeFailed("retries_exhausted", f"gave up after {retries} retries; last: {text}", status, retries,
                            code)
    return ChargeFailed("rejected", text, status, retries, code)
