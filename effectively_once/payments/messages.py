"""The charge message on the wire: its shape, its validation, and the trace context it carries.

A charge message is a Kafka record whose key is the customer and whose value
is JSON ``{"msg_id", "customer", "amount", "currency"}``; its headers carry the
``msg_id`` again and a W3C ``traceparent``. Anything else is malformed and goes
to the dead-letter topic with the reason this module gives.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

# A charge request is a few hundred bytes; a value far above that is a bug or an
# attack, and parsing it would only waste the consumer's memory.
MAX_VALUE_BYTES = 64 * 1024
MAX_MSG_ID_CHARS = 200
KEY_PREFIX = "charge-"  # with MAX_MSG_ID_CHARS, an Idempotency-Key stays under 255 characters
INTENT_KEY_PREFIX = "intent-"
# The test card every charge of the pipeline is paid with (https://docs.stripe.com/testing#cards).
PAYMENT_METHOD = "pm_card_visa"
# How many keys one handling of a message may spend on 500s before it gives up (the message then
# goes to the dead-letter topic). Keys spent by earlier handlings do not count: they are skipped.
MAX_NEW_KEYS = 3

# The provider's HTTP API, shared by the provider and its clients.
DEFAULT_API_KEY = "sk_test_effectively_once"
REPLAY_HEADER = "Idempotent-Replayed"

_CURRENCY = re.compile(r"^[a-z]{3}$")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class MalformedMessage(ValueError):
    """A record that is not a valid charge message; ``str(exc)`` says what is wrong."""


@dataclass(frozen=True)
class ChargeMessage:
    """One validated charge request read from the topic."""

    msg_id: str
    customer: str
    amount: int
    currency: str
    traceparent: str | None = None
    partition: int = -1
    offset: int = -1

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id (32 hex digits) this message carries, if any."""
        return trace_id_of(self.traceparent)

    def body(self) -> dict:
        """The provider request body for this charge (``POST /v1/charges``, the one-shot call)."""
        return {"amount": self.amount, "currency": self.currency, "customer": self.customer,
                "metadata": {"msg_id": self.msg_id}}

    def intent_params(self) -> dict:
        """The parameters of this charge's PaymentIntent (``POST /v1/payment_intents``): not confirmed, so no
        money moves when it is created; the msg_id travels in its metadata, and into its charge's."""
        return {**self.body(), "payment_method": PAYMENT_METHOD, "payment_method_types": ["card"]}


def idempotency_key_for(msg_id: str) -> str:
    """The Idempotency-Key derived from a msg_id: the same message always sends the same key."""
    return f"{KEY_PREFIX}{msg_id}"


def intent_key_for(msg_id: str) -> str:
    """The Idempotency-Key of the PaymentIntent's create, derived from the msg_id: ``intent-<msg_id>``.

    Every delivery of one message creates (or is replayed) the same PaymentIntent.
    The confirm, the call that moves money, goes under ``idempotency_key_for``.
    """
    return f"{INTENT_KEY_PREFIX}{msg_id}"


def new_key_for(msg_id: str, generation: int) -> str:
    """The key of the ``generation``-th new confirm (``charge-<msg_id>-r1``, ...), once the old key is spent.

    Only after the PaymentIntent, retrieved by id, says that no money moved
    (``steps.confirm_or_recover``). Derived, never random: two consumers (or
    one restarted) recovering the same message send the same new key.
    """
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        raise ValueError(f"generation must be a whole number from 1, got {generation!r}")
    return f"{idempotency_key_for(msg_id)}-r{generation}"


def parse_charge(value: bytes | None, headers: dict[str, bytes] | None = None, *,
                 partition: int = -1, offset: int = -1) -> ChargeMessage:
    """Validate a record value (and headers) as a charge message, or raise ``MalformedMessage``."""
    headers = headers or {}
    if value is None:
        raise MalformedMessage("the record has no value (a tombstone), not a charge")
    if len(value) > MAX_VALUE_BYTES:
        raise MalformedMessage(f"the value is {len(value)} bytes, above the {MAX_VALUE_BYTES}-byte limit")
    try:
        data = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"the value is not JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"the value is JSON {type(data).__name__}, not an object")
    msg_id = data.get("msg_id")
    if not isinstance(msg_id, str) or not msg_id.strip():
        raise MalformedMessage("field msg_id is missing or not a non-empty string")
    if len(msg_id) > MAX_MSG_ID_CHARS or not msg_id.isprintable():
        raise MalformedMessage(f"field msg_id must be at most {MAX_MSG_ID_CHARS} printable characters")
    customer = data.get("customer")
    if not isinstance(customer, str) or not customer.strip() or len(customer) > 200:
        raise MalformedMessage("field customer is missing or not a non-empty string of at most 200 characters")
    amount = data.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= 10**12:
        raise MalformedMessage(f"field amount must be a positive whole number of cents, got {amount!r:.40}")
    currency = data.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency.lower()):
        raise MalformedMessage(f"field currency must be a 3-letter code, got {currency!r:.40}")
    header_id = headers.get("msg_id")
    if header_id is not None and header_id.decode("utf-8", "replace") != msg_id:
        raise MalformedMessage("header msg_id differs from the value's msg_id")
    traceparent = headers.get("traceparent")
    tp = traceparent.decode("ascii", "replace") if traceparent else None
    if tp is not None and not _TRACEPARENT.match(tp):
        tp = None  # a broken trace header must not cost a payment; the charge just starts a new trace
    return ChargeMessage(msg_id=msg_id, customer=customer, amount=amount, currency=currency.lower(),
                         traceparent=tp, partition=partition, offset=offset)


# -- W3C trace context -------------------------------------------------------------------------
def new_traceparent(trace_id: str | None = None, rng=None) -> str:
    """A W3C ``traceparent`` (sampled) with a new span id, in trace ``trace_id`` (new if None)."""
    def hexbytes(n: int) -> str:
        return (rng.randbytes(n) if rng is not None else os.urandom(n)).hex()

    return f"00-{trace_id or hexbytes(16)}-{hexbytes(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """The ``traceparent`` for a call made while handling ``parent``: same trace, new span."""
    return new_traceparent(trace_id_of(parent))


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id inside a ``traceparent`` header, or None if it is absent or malformed."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent)
    return match.group(1) if match else None
