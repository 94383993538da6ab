"""The shop's webhook inbox: each event from the provider recorded once, by its id, with what it settles.

Webhooks arrive at least once, and in no promised order
(https://docs.stripe.com/webhooks#handle-duplicate-events,
https://docs.stripe.com/webhooks#event-ordering). So the receiver
(``payments.receiver``) hands each verified event to ``record_event``, which,
in one transaction:

1. inserts the event into ``webhook_inbox`` keyed by its id, doing nothing on
   a conflict: a second delivery of the event finds its row, returns
   ``"duplicate"``, and changes nothing else;
2. for a payment that succeeded (``payment_intent.succeeded``, or
   ``charge.succeeded`` of a one-shot charge), settles the message's dedup row:
   a 'pending' row becomes 'done' with the charge's id. Only ever forward:
   the ``UPDATE`` touches 'pending' rows, so a late or out-of-order event
   (a failure that arrives after the success) cannot move a row back;
3. sends the customer one receipt (a row in ``receipts``, standing for an
   e-mail): the effect that a duplicate must not repeat, since nothing makes a
   second e-mail harmless.

The inbox row and its effects commit together or not at all: a receiver killed
between them leaves no row, so the provider's retry of the event does the work.
``payment_intent.payment_failed`` is recorded and settles nothing: no money
moved, and the message's own handling decides what to do next.

``HANDLER`` names this function for the receiver's ``--handler``; a learner's
own version is plugged in the same way (``PluggedHandler``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import psycopg

HANDLER = "effectively_once.payments.inbox:record_event"
Handled = Literal["recorded", "duplicate"]
RECORDED: Handled = "recorded"
DUPLICATE: Handled = "duplicate"
HANDLED: tuple[str, ...] = (RECORDED, DUPLICATE)
# The events that say a payment succeeded: each settles its message's row and sends one receipt.
PAYMENT_SUCCEEDED = "payment_intent.succeeded"
CHARGE_SUCCEEDED = "charge.succeeded"


def succeeded_payment(event: dict[str, Any]) -> dict[str, Any] | None:
    """What a success event says about its payment: ``msg_id``, ``charge_id``, ``payment_intent``, ``amount``,
    ``currency``; None for any other event, and for ``charge.succeeded`` of a PaymentIntent's charge (its
    ``payment_intent.succeeded`` is the one that counts, so each payment settles and sends a receipt once)."""
    obj = event["data"]["object"]
    metadata = obj.get("metadata") or {}
    if event["type"] == PAYMENT_SUCCEEDED:
        return {"msg_id": metadata.get("msg_id"), "charge_id": obj.get("latest_charge"), "payment_intent": obj["id"],
                "amount": obj["amount"], "currency": obj["currency"]}
    if event["type"] == CHARGE_SUCCEEDED and not obj.get("payment_intent"):
        return {"msg_id": metadata.get("msg_id"), "charge_id": obj["id"], "payment_intent": None,
                "amount": obj["amount"], "currency": obj["currency"]}
    return None


def settle(conn: psycopg.Connection, payment: dict[str, Any]) -> str | None:
    """Mark the message's 'pending' row 'done' with the payment's charge; the msg_id it settled, or None."""
    if not payment.get("msg_id") or not payment.get("charge_id"):
        return None
    row = conn.execute(
        "UPDATE charges SET status = 'done', charge_id = %s, payment_intent = coalesce(%s, payment_intent),"
        " updated_at = now() WHERE msg_id = %s AND status = 'pending' RETURNING msg_id",
        (payment["charge_id"], payment["payment_intent"], payment["msg_id"])).fetchone()
    return row[0] if row else None


def send_receipt(conn: psycopg.Connection, event_id: str, payment: dict[str, Any]) -> None:
    """The receipt e-mail for a payment (a row in ``receipts``): sent once per payment, never undone."""
    conn.execute("INSERT INTO receipts (payment_intent, msg_id, amount, currency, event_id)"
                 " VALUES (%s, %s, %s, %s, %s)",
                 (payment["payment_intent"] or payment["charge_id"], payment["msg_id"], payment["amount"],
                  payment["currency"], event_id))


def record_event(conn: psycopg.Connection, event: dict[str, Any]) -> Handled:
    """Record ``event`` once in the inbox, with its effects, in one transaction; ``"duplicate"`` if it was there.

    ``event`` is the verified event as plain data (``stripe.Event.to_dict()``);
    ``conn`` is the receiver's connection to the shop database, in autocommit
    mode (so ``conn.transaction()`` is the one transaction).
    """
    from psycopg.types.json import Jsonb

    payment = succeeded_payment(event)
    obj = event["data"]["object"]
    with conn.transaction():
        new = conn.execute(
            "INSERT INTO webhook_inbox (event_id, type, object_id, msg_id, payload) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (event_id) DO NOTHING", (event["id"], event["type"], obj["id"],
                                                   (obj.get("metadata") or {}).get("msg_id"),
                                                   Jsonb(event)))
        if not new.rowcount:
            return DUPLICATE
        if payment is not None:
            settled = settle(conn, payment)
            send_receipt(conn, event["id"], payment)
            conn.execute("UPDATE webhook_inbox SET settled = %s WHERE event_id = %s", (settled, event["id"]))
    return RECORDED
