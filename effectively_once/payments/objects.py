"""The provider's objects as Stripe shapes them: PaymentIntents, Charges, Events, lists and errors.

Each object carries Stripe's common fields (https://docs.stripe.com/api):
an ``id`` with the resource's prefix (``pi_``, ``ch_``, ``evt_``), ``object``
naming its type, ``created`` as a Unix time in seconds, and ``livemode``,
always false here (the provider is a test-mode account: its keys are
``sk_test_...``). The official SDK turns a response into a ``PaymentIntent``,
``Charge`` or ``Event`` by the ``object`` field, so it must be right.

Only the fields the course uses are filled in; the rest of Stripe's
(``shipping``, ``payment_method_details``, ...) are absent, which the SDK
tolerates.

The test payment methods are Stripe's own names
(https://docs.stripe.com/testing#cards): ``pm_card_visa`` succeeds,
``pm_card_chargeDeclined`` is declined with ``card_declined`` /
``generic_decline``, as the card 4000 0000 0000 0002 behind it is.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

# The API version the events say they were rendered with: the one stripe-python 16.1.0 pins
# (stripe._api_version._ApiVersion.CURRENT) and sends as Stripe-Version.
API_VERSION = "2026-10-28.endive"

PAYMENT_INTENT_PREFIX, CHARGE_PREFIX, EVENT_PREFIX, REQUEST_PREFIX = "pi_", "ch_", "evt_", "req_"

# The events the provider records, and the three a webhook endpoint receives by default (Stripe sends an
# endpoint only the types it enabled: https://docs.stripe.com/api/webhook_endpoints/create#enabled_events).
PAYMENT_INTENT_CREATED = "payment_intent.created"
PAYMENT_INTENT_SUCCEEDED = "payment_intent.succeeded"
PAYMENT_INTENT_PAYMENT_FAILED = "payment_intent.payment_failed"
CHARGE_SUCCEEDED = "charge.succeeded"
CHARGE_FAILED = "charge.failed"
EVENT_TYPES = (PAYMENT_INTENT_CREATED, PAYMENT_INTENT_SUCCEEDED, PAYMENT_INTENT_PAYMENT_FAILED, CHARGE_SUCCEEDED,
               CHARGE_FAILED)
WEBHOOK_EVENT_TYPES = (PAYMENT_INTENT_SUCCEEDED, PAYMENT_INTENT_PAYMENT_FAILED, CHARGE_SUCCEEDED)


def new_id(prefix: str) -> str:
    """A new object id: the prefix and 24 random characters, as Stripe's ids look."""
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True)
class Decline:
    """How a declined card fails: the ``card_error`` Stripe answers with (https://docs.stripe.com/declines/codes)."""

    decline_code: str
    message: str
    code: str = "card_declined"


GENERIC_DECLINE = Decline("generic_decline", "Your card was declined.")
INSUFFICIENT_FUNDS = Decline("insufficient_funds", "Your card has insufficient funds.")

# Test payment methods (PaymentIntents) and tokens (the legacy Charges API's ``source``), by what they do:
# None succeeds, a Decline is declined (https://docs.stripe.com/testing#declined-payments).
TEST_PAYMENT_METHODS: dict[str, Decline | None] = {
    "pm_card_visa": None,
    "pm_card_mastercard": None,
    "pm_card_chargeDeclined": GENERIC_DECLINE,
    "pm_card_chargeDeclinedInsufficientFunds": INSUFFICIENT_FUNDS,
}
TEST_SOURCES: dict[str, Decline | None] = {
    "tok_visa": None,
    "tok_mastercard": None,
    "tok_chargeDeclined": GENERIC_DECLINE,
    "tok_chargeDeclinedInsufficientFunds": INSUFFICIENT_FUNDS,
}


def payment_intent(row: dict[str, Any]) -> dict[str, Any]:
    """A PaymentIntent (https://docs.stripe.com/api/payment_intents/object) from its ``payment_intents`` row."""
    succeeded = row["status"] == "succeeded"
    return {
        "id": row["id"], "object": "payment_intent", "amount": row["amount"],
        "amount_received": row["amount"] if succeeded else 0, "capture_method": "automatic",
        "client_secret": f"{row['id']}_secret_{row['client_secret']}", "confirmation_method": "automatic",
        "created": row["created"], "currency": row["currency"], "customer": row["customer"],
        "description": row["description"], "last_payment_error": row["last_payment_error"],
        "latest_charge": row["latest_charge"], "livemode": False, "metadata": row["metadata"],
        "payment_method": row["payment_method"], "payment_method_types": ["card"], "status": row["status"],
    }


def charge(row: dict[str, Any], decline: Decline | None = None) -> dict[str, Any]:
    """A Charge (https://docs.stripe.com/api/charges/object): succeeded when ``decline`` is None, else failed."""
    obj = {
        "id": row["id"], "object": "charge", "amount": row["amount"], "amount_captured": row["amount"],
        "amount_refunded": 0, "captured": True, "created": row["created"], "currency": row["currency"],
        "customer": row["customer"], "description": row["description"], "failure_code": None,
        "failure_message": None, "livemode": False, "metadata": row["metadata"],
        "outcome": {"type": "authorized", "network_status": "approved_by_network", "reason": None},
        "paid": True, "payment_intent": row["payment_intent"], "payment_method": row["payment_method"],
        "refunded": False, "status": "succeeded",
    }
    if decline is not None:
        obj.update({"amount_captured": 0, "captured": False, "failure_code": decline.code,
                    "failure_message": decline.message, "paid": False, "status": "failed",
                    "outcome": {"type": "issuer_declined", "network_status": "declined_by_network",
                                "reason": decline.decline_code}})
    return obj


def event(event_id: str, event_type: str, created: int, obj: dict[str, Any], request_id: str | None,
          idempotency_key: str | None) -> dict[str, Any]:
    """An Event (https://docs.stripe.com/api/events/object) whose ``data.object`` is ``obj`` as it was then."""
    return {"id": event_id, "object": "event", "api_version": API_VERSION, "created": created,
            "data": {"object": obj}, "livemode": False, "pending_webhooks": 0,
            "request": {"id": request_id, "idempotency_key": idempotency_key}, "type": event_type}


def card_error(decline: Decline, *, charge_id: str, payment_method: str | None,
               payment_intent: dict[str, Any] | None = None) -> dict[str, Any]:
    """The 402 body of a declined card (https://docs.stripe.com/api/errors): type ``card_error``."""
    error: dict[str, Any] = {"type": "card_error", "code": decline.code, "decline_code": decline.decline_code,
                             "message": decline.message, "charge": charge_id,
                             "doc_url": f"https://docs.stripe.com/error-codes/{decline.code.replace('_', '-')}"}
    if payment_method is not None:
        error["payment_method"] = {"id": payment_method, "object": "payment_method", "type": "card"}
    if payment_intent is not None:
        error["payment_intent"] = payment_intent
    return {"error": error}


def last_payment_error(decline: Decline, charge_id: str, payment_method: str | None) -> dict[str, Any]:
    """What a PaymentIntent keeps of its last declined attempt (its ``last_payment_error``)."""
    return {k: v for k, v in card_error(decline, charge_id=charge_id, payment_method=payment_method)["error"].items()
            if k != "payment_intent"}


def page(data: list[dict[str, Any]], url: str, has_more: bool) -> dict[str, Any]:
    """A list object (https://docs.stripe.com/api/pagination)."""
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def search_result(data: list[dict[str, Any]], url: str, next_page: str | None) -> dict[str, Any]:
    """A search result object (https://docs.stripe.com/api/pagination/search)."""
    return {"object": "search_result", "data": data, "has_more": next_page is not None, "next_page": next_page,
            "url": url}
