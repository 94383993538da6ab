"""The provider's contract: one OpenAPI 3.1 document, the body reader, and the one validator that reads it.

``OPENAPI`` describes every route of the provider: the subset of Stripe's API
v1 the course uses (PaymentIntents, Charges, Search, Events), ``/healthz``,
``/metrics`` and the lab's ``/admin/...`` knobs; the provider serves it at
``GET /openapi.json``. Every request is checked against it before the
provider touches its database, so a malformed request gets a 4xx that names
the field, in Stripe's error shape (https://docs.stripe.com/api/errors)::

    {"error": {"type": "invalid_request_error", "param": "amount", "message": "..."}}

Bodies come in two media types, both described by one schema per operation:

- ``application/x-www-form-urlencoded`` with bracket nesting
  (``metadata[msg_id]=m-1``, OpenAPI's ``deepObject`` style), which is what
  Stripe's API takes and what the official SDK sends (``payments.form`` says
  how it encodes). A form carries only strings, so ``read_body`` first turns
  each value into the type the schema gives its field (``"1250"`` into
  ``1250``, ``"true"`` into ``True``, ``key[0]`` pairs into a list), and a
  value that does not convert is left for the schema to refuse by name;
- ``application/json``, which the course's own client sends.

Why a hand-written document on Starlette, not FastAPI with pydantic models:
the provider is a small Starlette app whose handlers are the course's subject
(the idempotency rules), and its limits are Stripe's, stated once here with
their sources. JSON Schema 2020-12, which OpenAPI 3.1 uses as is, says each of
them in one line (``maximum``, ``maxLength``, ``maxProperties``,
``propertyNames``, ``additionalProperties: false``), and ``jsonschema``
checks a request against exactly the document that is served and fuzzed. A
rewrite on FastAPI would bring a second web framework and pydantic for the
same result, and its validation errors are 422s in another shape that would
have to be translated back into Stripe's.

Stripe's limits, kept as Stripe documents them:

- ``amount`` is an integer from 1 to 99,999,999 in the currency's smallest
  unit: "the amount value supports up to eight digits"
  (https://docs.stripe.com/api/charges). PostgreSQL's ``bigint`` would take
  more; the contract refuses it first.
- ``currency`` is a three-letter ISO code; Stripe asks for lowercase. The
  provider accepts the three letters in either case and stores them in
  lowercase, as the consumer sends them. It does not check the code against
  the ISO 4217 list.
- ``metadata`` holds at most 50 keys of up to 40 characters, without square
  brackets, and string values of up to 500 characters
  (https://docs.stripe.com/api/metadata).
- ``Idempotency-Key`` is 1 to 255 characters
  (https://docs.stripe.com/api/idempotent_requests).
- Errors have one of Stripe's four types, ``api_error``, ``card_error``,
  ``idempotency_error`` and ``invalid_request_error``
  (https://docs.stripe.com/api/errors), with ``code`` and ``param`` where
  they apply.

Beyond Stripe's: every string must be storable in PostgreSQL ``text``, which
holds neither a NUL nor a lone UTF-16 surrogate (JSON can carry both, as
``\\u0000`` and ``\\ud800``), so each string's ``pattern`` excludes them;
``customer`` is 1 to 255 characters, ``description`` at most 1000; a body is
at most ``MAX_BODY_BYTES`` bytes; unknown parameters are refused, as Stripe
refuses them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import fastjsonschema
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from effectively_once.payments import form

if TYPE_CHECKING:  # jsonschema is imported when first needed: it takes seconds to import with its format extras
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

MAX_AMOUNT = 99_999_999
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500
MAX_KEY_CHARS = 255
MAX_CUSTOMER_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 1000
MAX_ID_LENGTH = 255
# Stripe's four error types (https://docs.stripe.com/api/errors): every error the provider sends has one.
ERROR_TYPES = ("api_error", "card_error", "idempotency_error", "invalid_request_error")
# The largest valid charge is about 50 x (40 + 500) characters of metadata; a client that escapes
# every character (\\uXXXX, 12 bytes for one outside the BMP) sends about 330 KB. 1 MiB covers it.
MAX_BODY_BYTES = 1024 * 1024
# A body over the limit is read to its end and discarded, up to this much, so that the client
# reads the 413 instead of a reset connection; past it the connection is closed.
MAX_DRAINED_BYTES = 64 * 1024 * 1024
JSON = "application/json"
FORM = form.FORM

# "pg-text" is this document's one custom format: a string PostgreSQL text can hold, so without a
# NUL and without a lone UTF-16 surrogate (which is not valid UTF-8). JSON Schema has no keyword
# for the second, and a regex over the surrogate range is more than some tools read.
PG_TEXT = "pg-text"
_CONTROL = {"pattern": "[\\u0000-\\u001f\\u007f]"}
_BRACKET = {"pattern": "[\\[\\]]"}


def is_pg_text(value: object) -> bool:
    """True for a string PostgreSQL ``text`` can hold (no NUL, valid UTF-8); other types are not strings."""
    if not isinstance(value, str):
        return True
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(max_length: int, error: str, min_length: int = 1, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "format": PG_TEXT, "minLength": min_length, "maxLength": max_length,
            "x-error": error, **extra}


_STORABLE_WORDS = "valid UTF-8 without NUL characters or lone surrogates"


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref(schema)}}}
    if headers:
        response["headers"] = headers
    return response


def _request_body(schema: str, required: bool = True) -> dict[str, Any]:
    """A body Stripe's way (form-encoded, objects in brackets: OpenAPI's deepObject style) or as JSON."""
    nested = [name for name, prop in OPENAPI_SCHEMAS[schema]["properties"].items()
              if prop.get("type") in ("object", "array") or "$ref" in prop]
    return {"required": required, "content": {
        FORM: {"schema": _ref(schema), "encoding": {name: {"style": "deepObject", "explode": True} for name in nested}},
        JSON: {"schema": _ref(schema)}}}


def _query(name: str, schema: dict[str, Any], required: bool = False, description: str = "") -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _path_id(what: str) -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "description": f"The {what}'s id; an unknown one is a 404",
            "schema": {"type": "string"}}


_REQUEST_ID = {"Request-Id": {"description": "Every response's own id (req_...)", "schema": {"type": "string"}}}
_REPLAYED = {"Idempotent-Replayed": {"description": "'true' when the answer is the one stored under the key",
                                     "schema": {"type": "string", "enum": ["true"]}},
             "Stripe-Should-Retry": {"description": "'false' on an answer the key stores: a retry only replays it",
                                     "schema": {"type": "string", "enum": ["true", "false"]}},
             **_REQUEST_ID}
_IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "The same key with the same parameters replays the first answer (API v1: stored"
                                   " once execution began, a 500 included) and moves no money.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS, "not": _CONTROL,
                               "x-error": f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters long,"
                                          " without control characters."}}
_TRACEPARENT = {"name": "traceparent", "in": "header", "required": False,
                "description": "W3C trace context; a malformed one is ignored.", "schema": {"type": "string"}}
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 100,
                          "x-error": "limit must be a whole number from 1 to 100."},
                description="How many objects to return, 1 to 100 (default 10)")

# The answers every write route can give besides its 200.
_WRITE_ERRORS = {
    "400": _error_response("A parameter is invalid (param names it), or the key was first used with other"
                           " parameters (type idempotency_error)"),
    "401": _error_response("No valid API key"),
    "402": _error_response("The card was declined (type card_error, code card_declined, decline_code)"),
    "404": _error_response("No such object (code resource_missing)"),
    "409": _error_response("Another request holds the key (code idempotency_key_in_use)"),
    "413": _error_response(f"The body is over {MAX_BODY_BYTES} bytes"),
    "415": _error_response("The body is neither form-encoded nor JSON"),
    "429": _error_response("Over the rate limit (a fault knob)"),
    "500": _error_response("A fault knob failed the call (type api_error); the body does not say whether the"
                           " money moved"),
}
_READ_ERRORS = {"400": _error_response("A query parameter is invalid (param names it)"),
                "401": _error_response("No valid API key"),
                "429": _error_response("Over the rate limit (a fault knob)")}
_NOT_FOUND = {"404": _error_response("No such object (code resource_missing, param id)")}


def _write(operation_id: str, summary: str, body: str, answer: str, *, body_required: bool = True,
           path_id: str | None = None) -> dict[str, Any]:
    parameters = ([_path_id(path_id)] if path_id else []) + [_IDEMPOTENCY_KEY, _TRACEPARENT]
    # Only a route with an id in its path can name a missing object; elsewhere an unknown id is a 400.
    errors = {code: answer for code, answer in _WRITE_ERRORS.items() if code != "404" or path_id}
    return {"operationId": operation_id, "summary": summary, "parameters": parameters,
            "requestBody": _request_body(body, body_required),
            "responses": {"200": _ok(f"The {answer} (replayed when the key was seen with the same parameters)",
                                     answer, _REPLAYED), **errors}}


def _read(operation_id: str, summary: str, answer: str, parameters: list[dict[str, Any]],
          errors: dict[str, Any]) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "parameters": parameters,
            "responses": {"200": _ok(summary, answer, _REQUEST_ID), **errors}}


_METADATA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_METADATA_KEYS,
    "x-error": f"metadata must be an object of at most {MAX_METADATA_KEYS} string values.",
    "propertyNames": {"type": "string", "format": PG_TEXT, "minLength": 1, "maxLength": MAX_METADATA_KEY_LENGTH,
                      "not": _BRACKET,
                      "x-error": f"metadata keys must be 1 to {MAX_METADATA_KEY_LENGTH} characters without square"
                                 f" brackets, {_STORABLE_WORDS}."},
    "properties": {
        "msg_id": _text(MAX_METADATA_VALUE_LENGTH, f"metadata.msg_id must be 1 to {MAX_METADATA_VALUE_LENGTH}"
                                                   f" characters, {_STORABLE_WORDS}.",
                        description="The message id; Search finds it: metadata['msg_id']:'...'"),
    },
    "additionalProperties": _text(MAX_METADATA_VALUE_LENGTH,
                                  f"{{param}} must be a string of at most {MAX_METADATA_VALUE_LENGTH} characters,"
                                  f" {_STORABLE_WORDS}.", min_length=0),
}
_AMOUNT = {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT,
           "description": "In the currency's smallest unit (cents for usd)",
           "x-error": f"amount must be a whole number of the currency's smallest unit (cents for usd)"
                      f" from 1 to {MAX_AMOUNT:,}."}
_CURRENCY = {"type": "string", "minLength": 3, "maxLength": 3, "pattern": "^[A-Za-z]{3}$",
             "description": "A three-letter ISO code, either case; stored in lowercase",
             "x-error": "currency must be a three-letter ISO code such as 'usd'."}
_CUSTOMER = _text(MAX_CUSTOMER_LENGTH, f"customer must be 1 to {MAX_CUSTOMER_LENGTH} characters, {_STORABLE_WORDS}.")
_DESCRIPTION = _text(MAX_DESCRIPTION_LENGTH, f"description must be at most {MAX_DESCRIPTION_LENGTH} characters,"
                                             f" {_STORABLE_WORDS}.", min_length=0)
_PAYMENT_METHOD = _text(MAX_ID_LENGTH, f"payment_method must be a payment method id of 1 to {MAX_ID_LENGTH}"
                                       " characters, such as pm_card_visa.",
                        description="A test payment method: pm_card_visa succeeds, pm_card_chargeDeclined is"
                                    " declined", examples=["pm_card_visa", "pm_card_chargeDeclined"])
_NULLABLE_TEXT = {"type": ["string", "null"]}
_INTEGER = {"type": "integer"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_PROBABILITY_WORDS = "must be a probability from 0 to 1."


def _milliseconds(name: str, maximum: int = 60_000) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": maximum,
            "x-error": f"{name} must be a number of milliseconds from 0 to {maximum}."}


def _probability(name: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": 1, "x-error": f"{name} {_PROBABILITY_WORDS}"}


OPENAPI_SCHEMAS: dict[str, Any] = {
    "ChargeRequest": {
        "type": "object",
        "description": "A charge needs a customer (its default card, which succeeds) or a source (a test token:"
                       " tok_visa succeeds, tok_chargeDeclined is declined).",
        "x-error": "The body must be an object with amount, currency, and customer or source.",
        "required": ["amount", "currency"],
        "additionalProperties": False,
        "properties": {
            "amount": _AMOUNT, "currency": _CURRENCY, "customer": _CUSTOMER,
            "source": _text(MAX_ID_LENGTH, f"source must be a token of 1 to {MAX_ID_LENGTH} characters, such as"
                                           " tok_visa.", examples=["tok_visa", "tok_chargeDeclined"]),
            "description": _DESCRIPTION, "metadata": _METADATA,
        },
    },
    "PaymentIntentRequest": {
        "type": "object",
        "x-error": "The body must be an object with amount and currency.",
        "required": ["amount", "currency"],
        "additionalProperties": False,
        "properties": {
            "amount": _AMOUNT, "currency": _CURRENCY, "customer": _CUSTOMER, "description": _DESCRIPTION,
            "metadata": _METADATA, "payment_method": _PAYMENT_METHOD,
            "payment_method_types": {"type": "array", "maxItems": 1, "items": {"const": "card"},
                                     "x-error": "payment_method_types must be ['card']: the provider takes cards."},
            "confirm": {"type": "boolean", "description": "true: confirm at once (needs payment_method)",
                        "x-error": "confirm must be true or false."},
        },
    },
    "ConfirmRequest": {
        "type": "object",
        "x-error": "The body must be an object (payment_method, or nothing).",
        "additionalProperties": False,
        "properties": {"payment_method": _PAYMENT_METHOD},
    },
    "Charge": {
        "type": "object",
        "required": ["id", "object", "amount", "currency", "customer", "metadata", "status", "created", "livemode",
                     "paid", "payment_intent"],
        "properties": {
            "id": {"type": "string", "pattern": "^ch_"}, "object": {"const": "charge"}, "amount": _INTEGER,
            "amount_captured": _INTEGER, "captured": {"type": "boolean"}, "currency": {"type": "string"},
            "customer": _NULLABLE_TEXT, "description": _NULLABLE_TEXT, "metadata": _STRING_MAP,
            "status": {"enum": ["succeeded", "failed"]}, "created": _INTEGER, "livemode": {"const": False},
            "paid": {"type": "boolean"}, "payment_intent": _NULLABLE_TEXT, "payment_method": _NULLABLE_TEXT,
            "failure_code": _NULLABLE_TEXT,
        },
    },
    "LedgerCharge": {
        "description": "A charge that moved money, with the course's three extras: the msg_id it was made for,"
                       " the Idempotency-Key it was made under, and its trace id",
        "allOf": [_ref("Charge"), {"type": "object", "required": ["msg_id", "idempotency_key", "trace_id"],
                                   "properties": {"msg_id": _NULLABLE_TEXT, "idempotency_key": _NULLABLE_TEXT,
                                                  "trace_id": _NULLABLE_TEXT}}],
    },
    "PaymentIntent": {
        "type": "object",
        "required": ["id", "object", "amount", "currency", "metadata", "status", "created", "livemode",
                     "latest_charge", "payment_method"],
        "properties": {
            "id": {"type": "string", "pattern": "^pi_"}, "object": {"const": "payment_intent"}, "amount": _INTEGER,
            "amount_received": _INTEGER, "currency": {"type": "string"}, "customer": _NULLABLE_TEXT,
            "metadata": _STRING_MAP, "created": _INTEGER, "livemode": {"const": False},
            "status": {"enum": ["requires_payment_method", "requires_confirmation", "succeeded"]},
            "latest_charge": _NULLABLE_TEXT, "payment_method": _NULLABLE_TEXT,
            "last_payment_error": {"type": ["object", "null"]},
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "object", "type", "created", "data", "livemode", "api_version", "request"],
        "properties": {
            "id": {"type": "string", "pattern": "^evt_"}, "object": {"const": "event"},
            "type": {"type": "string"}, "created": _INTEGER, "livemode": {"const": False},
            "api_version": {"type": "string"}, "pending_webhooks": _INTEGER,
            "data": {"type": "object", "required": ["object"], "properties": {"object": {"type": "object"}}},
            "request": {"type": "object", "properties": {"id": _NULLABLE_TEXT, "idempotency_key": _NULLABLE_TEXT}},
        },
    },
    "ChargeList": {
        "type": "object", "required": ["object", "data", "has_more", "url"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("LedgerCharge")},
                       "has_more": {"type": "boolean"}, "url": {"type": "string"}},
    },
    "EventList": {
        "type": "object", "required": ["object", "data", "has_more", "url"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Event")},
                       "has_more": {"type": "boolean"}, "url": {"type": "string"}},
    },
    "ChargeSearchResult": {
        "type": "object", "required": ["object", "data", "has_more", "next_page", "url"],
        "properties": {"object": {"const": "search_result"}, "data": {"type": "array", "items": _ref("Charge")},
                       "has_more": {"type": "boolean"}, "next_page": _NULLABLE_TEXT, "url": {"type": "string"}},
    },
    "PaymentIntentSearchResult": {
        "type": "object", "required": ["object", "data", "has_more", "next_page", "url"],
        "properties": {"object": {"const": "search_result"},
                       "data": {"type": "array", "items": _ref("PaymentIntent")},
                       "has_more": {"type": "boolean"}, "next_page": _NULLABLE_TEXT, "url": {"type": "string"}},
    },
    "FaultChanges": {
        "type": "object",
        "x-error": "The body must be a JSON object of fault settings.",
        "additionalProperties": False,
        "properties": {
            "latency_ms": _milliseconds("latency_ms"),
            "stall_next_ms": _milliseconds("stall_next_ms"),
            "fail_after_charge": _probability("fail_after_charge"),
            "fail_after_charge_mode": {"type": "string", "enum": ["500", "drop"],
                                       "x-error": "fail_after_charge_mode must be '500' or 'drop'."},
            "fail_before_charge": _probability("fail_before_charge"),
            "rate_limit_per_second": {"type": "number", "minimum": 0, "maximum": 1_000_000,
                                      "x-error": "rate_limit_per_second must be from 0 (no limit) to 1000000."},
            "key_ttl_seconds": {"type": "number", "minimum": 0, "maximum": 10 * 365 * 86400,
                                "x-error": "key_ttl_seconds must be from 0 to 315360000 (ten years)."},
            "search_delay_ms": _milliseconds("search_delay_ms", 600_000),
            "webhook_delay_ms": _milliseconds("webhook_delay_ms"),
            "webhook_duplicate": _probability("webhook_duplicate"),
            "webhook_out_of_order": _probability("webhook_out_of_order"),
            "webhook_drop": _probability("webhook_drop"),
            "webhook_retry_ms": _milliseconds("webhook_retry_ms"),
            "webhook_retry_max_ms": _milliseconds("webhook_retry_max_ms", 600_000),
            "webhook_timeout_ms": {"type": "number", "minimum": 1, "maximum": 60_000,
                                   "x-error": "webhook_timeout_ms must be a number of milliseconds from 1 to 60000."},
            "webhook_give_up_after_s": {"type": "number", "minimum": 0, "maximum": 30 * 86400,
                                        "x-error": "webhook_give_up_after_s must be from 0 to 2592000 (30 days)."},
        },
    },
    "Faults": _ref("FaultChanges"),
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["type", "message"],
            "properties": {"type": {"enum": list(ERROR_TYPES)}, "message": {"type": "string"},
                           "param": {"type": "string"}, "code": {"type": "string"},
                           "decline_code": {"type": "string"}, "charge": {"type": "string"},
                           "payment_intent": _ref("PaymentIntent")}}},
    },
}

_SEARCH_PARAMETERS = [
    _query("query", _text(1000, f"query must be a search query of 1 to 1000 characters, {_STORABLE_WORDS}."),
           required=True,
           description="Stripe's search query language, e.g. metadata['msg_id']:'m-1' (fields: amount, created,"
                       " currency, customer, metadata, status)"),
    _LIMIT,
    _query("page", _text(100, "page must be the next_page of a previous search result."),
           description="The next_page of the previous result"),
]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "effectively_once payment provider",
        "version": "2.0.0",
        "description": (
            "A Stripe-like payment provider for the course's labs: the subset of Stripe's API v1 the course uses,"
            " which the official SDK talks to unmodified. Calls that move money (POST /v1/charges, confirming a"
            " PaymentIntent) move it once per Idempotency-Key (API v1 replay semantics). Bodies are form-encoded"
            " with bracket nesting, as Stripe takes them, or JSON; at most"
            f" {MAX_BODY_BYTES} bytes. Every malformed request gets a 4xx whose body names the field. The format"
            f" '{PG_TEXT}' is a string PostgreSQL text can hold: no NUL character and no lone UTF-16 surrogate."),
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/payment_intents": {
            "post": _write("createPaymentIntent", "Create a PaymentIntent (no money moves), or create and confirm it"
                           " with confirm=true", "PaymentIntentRequest", "PaymentIntent"),
        },
        "/v1/payment_intents/search": {
            "get": _read("searchPaymentIntents", "PaymentIntents matching a query, newest first, as the index saw"
                         " them search_delay_ms ago", "PaymentIntentSearchResult", _SEARCH_PARAMETERS,
                         _READ_ERRORS),
        },
        "/v1/payment_intents/{id}": {
            "get": _read("retrievePaymentIntent", "The PaymentIntent as it is now (strongly consistent)",
                         "PaymentIntent", [_path_id("PaymentIntent")], {**_READ_ERRORS, **_NOT_FOUND}),
        },
        "/v1/payment_intents/{id}/confirm": {
            "post": _write("confirmPaymentIntent", "Confirm a PaymentIntent: the charge, once", "ConfirmRequest",
                           "PaymentIntent", body_required=False, path_id="PaymentIntent"),
        },
        "/v1/charges": {
            "post": _write("createCharge", "Charge at once (the legacy Charges API): money moves once per"
                           " Idempotency-Key", "ChargeRequest", "Charge"),
            "get": _read("listCharges", "The charges that moved money, oldest first (at most 100), optionally of"
                         " one message (msg_id, the course's filter) or one PaymentIntent", "ChargeList",
                         [_query("msg_id", _text(MAX_METADATA_VALUE_LENGTH,
                                                 f"msg_id must be 1 to {MAX_METADATA_VALUE_LENGTH} characters, "
                                                 f"{_STORABLE_WORDS}."),
                                 description="Only the charges whose metadata.msg_id is this (read-after-write"
                                             " consistent; not a Stripe parameter)"),
                          _query("payment_intent", _text(MAX_ID_LENGTH, f"payment_intent must be 1 to"
                                                                        f" {MAX_ID_LENGTH} characters.")),
                          _LIMIT],
                         {**_READ_ERRORS, "400": _error_response("A filter is invalid, or an unknown parameter"
                                                                 " was sent")}),
        },
        "/v1/charges/search": {
            "get": _read("searchCharges", "Charges matching a query, newest first, as the index saw them"
                         " search_delay_ms ago", "ChargeSearchResult", _SEARCH_PARAMETERS, _READ_ERRORS),
        },
        "/v1/charges/{id}": {
            "get": _read("retrieveCharge", "The charge, succeeded or failed", "Charge", [_path_id("charge")],
                         {**_READ_ERRORS, **_NOT_FOUND}),
        },
        "/v1/events": {
            "get": _read("listEvents", "Events, newest first", "EventList",
                         [_LIMIT, _query("type", _text(100, "type must be an event type such as"
                                                            " payment_intent.succeeded.")),
                          _query("starting_after", _text(MAX_ID_LENGTH, "starting_after must be an event id."),
                                 description="An event id: the page after it")],
                         _READ_ERRORS),
        },
        "/v1/events/{id}": {
            "get": _read("retrieveEvent", "One event", "Event", [_path_id("event")],
                         {**_READ_ERRORS, **_NOT_FOUND}),
        },
        "/healthz": {
            "get": {
                "operationId": "health", "security": [],
                "responses": {"200": {"description": "The database answers", "content": {JSON: {"schema": {
                    "type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}}}}},
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics", "security": [],
                "summary": "Webhook delivery counters, in Prometheus' text format",
                "responses": {"200": {"description": "The metrics", "content": {
                    "text/plain": {"schema": {"type": "string"}}}}},
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi", "security": [],
                "responses": {"200": {"description": "This document",
                                      "content": {JSON: {"schema": {"type": "object"}}}}},
            },
        },
        "/admin/faults": {
            "get": {
                "operationId": "getFaults",
                "responses": {
                    "200": {"description": "Every fault knob",
                            "content": {JSON: {"schema": _ref("Faults")}}},
                    "401": _error_response("No valid API key"),
                },
            },
            "post": {
                "operationId": "setFaults",
                "summary": "Change some fault knobs; a bad one changes nothing",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("FaultChanges")}}},
                "responses": {
                    "200": {"description": "Every fault knob, after the change",
                            "content": {JSON: {"schema": _ref("Faults")}}},
                    "400": _error_response("A knob is unknown or out of range (param names it)"),
                    "401": _error_response("No valid API key"),
                    "413": _error_response(f"The body is over {MAX_BODY_BYTES} bytes"),
                    "415": _error_response("The body is not sent as application/json"),
                },
            },
        },
        "/admin/expire-keys": {
            "post": {
                "operationId": "expireKeys",
                "summary": "Age every stored key past the TTL, as if a day had gone by (any body is ignored)",
                "responses": {
                    "200": {"description": "How many keys were aged", "content": {JSON: {"schema": {
                        "type": "object", "properties": {"aged": {"type": "integer", "minimum": 0}},
                        "required": ["aged"]}}}},
                    "401": _error_response("No valid API key"),
                },
            },
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "Authorization: Bearer <the provider's API key, sk_test_...>"}},
        "schemas": OPENAPI_SCHEMAS,
    },
}


class BadRequest(ValueError):
    """A request the client got wrong, naming the field: a 4xx ``invalid_request_error`` (400 unless said).

    A ``ValueError`` whose ``args[0]`` is ``(param, message)``; ``code`` is
    Stripe's error code when one applies (``resource_missing``, ...).
    """

    def __init__(self, param: str, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__((param, message))
        self.param, self.message, self.status, self.code = param, message, status, code

    def __str__(self) -> str:
        return self.message

    def response(self) -> Response:
        """The answer naming the field."""
        return error_response(self.status, "invalid_request_error", self.message, param=self.param, code=self.code)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer that can always be encoded: non-ASCII travels escaped, so a lone surrogate echoed
    back in a parameter name cannot make the answer itself fail."""
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, headers=headers,
                    media_type=JSON)


def error_response(status: int, kind: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None, code: str | None = None) -> Response:
    """Stripe's error shape: ``{"error": {"type", "message", "code"?, "param"?}}``."""
    body: dict[str, Any] = {"type": kind, "message": message}
    if code:
        body["code"] = code
    if param:
        body["param"] = param
    return json_response({"error": body}, status, headers)


def _shown(name: Any) -> str:
    """A name the client sent, fit to be echoed back: escaped where it is not printable, and short."""
    text = str(name).encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text if len(text) <= 60 else text[:57] + "..."


def _schema(name: str) -> dict[str, Any]:
    return OPENAPI["components"]["schemas"][name]


def _operation(operation_id: str) -> dict[str, Any]:
    for methods in OPENAPI["paths"].values():
        for operation in methods.values():
            if operation["operationId"] == operation_id:
                return operation
    raise KeyError(f"no operation {operation_id!r} in the provider's OpenAPI document")


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    from jsonschema import Draft202012Validator, FormatChecker

    formats = FormatChecker(formats=())
    formats.checks(PG_TEXT)(is_pg_text)
    # The components travel with every schema, so that "#/components/..." references resolve.
    return Draft202012Validator({**schema, "components": OPENAPI["components"]}, format_checker=formats)


_FAST: dict[str, Callable[[Any], Any]] = {}
_VALIDATORS: dict[str, Draft202012Validator] = {}


def _cached(key: str, schema: dict[str, Any]) -> tuple[Callable[[Any], Any], Callable[[], Draft202012Validator]]:
    """Two validators of one schema: a fast one that only says yes, and ``jsonschema``, the authority.

    ``jsonschema`` takes about 0.3 ms per charge, which the pipeline would
    feel; ``fastjsonschema`` compiles the schema to Python and takes about
    0.01 ms. A request it passes is valid; one it refuses is checked again by
    ``jsonschema``, which names the field (and which also decides, should the
    two ever disagree).
    """
    if key not in _FAST:
        full = {**schema, "components": OPENAPI["components"]}
        _FAST[key] = fastjsonschema.compile(full, formats={PG_TEXT: is_pg_text})

    def authority() -> Draft202012Validator:
        if key not in _VALIDATORS:
            _VALIDATORS[key] = _validator(schema)
        return _VALIDATORS[key]

    return _FAST[key], authority


def warm_up() -> None:
    """Import ``jsonschema`` and build the validator of every request schema now, not on the first bad request.

    The import takes seconds on a busy machine, and a request that waits for
    it waits with the whole event loop; the provider calls this in a
    background thread as it starts.
    """
    for name, schema in OPENAPI["components"]["schemas"].items():
        if name.endswith("Request") or name == "FaultChanges":
            _cached(f"schema:{name}", schema)[1]()


def _nearest_error_text(error: ValidationError) -> str | None:
    return error.schema.get("x-error") if isinstance(error.schema, dict) else None


def _bad_request(error: ValidationError, root: str | None, order: list[str]) -> tuple[tuple[int, int], BadRequest]:
    """The ``BadRequest`` one schema error becomes, with its sort key (field order, depth)."""
    path = [_shown(part) for part in error.absolute_path]
    instance = error.instance
    known = list(error.schema.get("properties", {})) if isinstance(error.schema, dict) else []
    if error.validator == "required" and isinstance(instance, dict):
        missing = next(name for name in error.validator_value if name not in instance)
        path, message = [*path, missing], f"Missing required param: {'.'.join([*path, missing])}."
    elif error.validator == "additionalProperties" and error.validator_value is False and isinstance(instance, dict):
        extra = next(name for name in instance if name not in known)
        path = [*path, _shown(extra)]
        message = f"Received unknown parameter: {'.'.join(path)}"
        message += f"; the known ones are {', '.join(known)}." if known else "."
    else:
        message = ""
    param = ".".join(path) or root or "body"
    if not message:
        text = _nearest_error_text(error)
        message = text.format(param=param) if text else f"{param} is invalid: {_shown(error.message)}"
    first = path[0] if path else ""
    rank = order.index(first) if first in order else len(order)
    return (rank, len(path)), BadRequest(param, message)


def check(schema: dict[str, Any], value: Any, *, root: str | None = None, cache_key: str | None = None) -> None:
    """Raise ``BadRequest`` naming the first field of ``value`` that breaks ``schema``.

    ``root`` names the value itself (a header or query parameter); a body's
    fields are named by their path (``metadata.msg_id``), the body itself
    ``body``. A float that is not finite (which JSON cannot carry, but a
    Python caller can) is refused by name too.
    """
    if cache_key:
        fast, authority = _cached(cache_key, schema)
        try:
            fast(value)
        except fastjsonschema.JsonSchemaException:
            validator = authority()
        else:
            _refuse_non_finite(value, root)
            return
    else:
        validator = _validator(schema)
    errors = list(validator.iter_errors(value))
    if not errors:
        _refuse_non_finite(value, root)
        return
    order = list(schema.get("properties", {}))
    raise min((_bad_request(e, root, order) for e in errors), key=lambda pair: pair[0])[1]


def _refuse_non_finite(value: Any, root: str | None, path: tuple[str, ...] = ()) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        param = ".".join(path) or root or "body"
        raise BadRequest(param, f"{param} must be a finite number.")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, root, (*path, _shown(key)))


def check_schema(name: str, value: Any) -> None:
    """``check`` against ``#/components/schemas/<name>``."""
    check(_schema(name), value, cache_key=f"schema:{name}")


def check_parameter(operation_id: str, location: str, name: str, value: str | None) -> None:
    """Check one header or query parameter of an operation (absent is fine unless it is required)."""
    for parameter in _operation(operation_id).get("parameters", []):
        if parameter["in"] == location and parameter["name"].lower() == name.lower():
            if value is None:
                if parameter.get("required"):
                    raise BadRequest(parameter["name"], f"Missing required param: {parameter['name']}.")
                return
            check(parameter["schema"], value, root=parameter["name"],
                  cache_key=f"{operation_id}:{location}:{parameter['name']}")
            return
    raise KeyError(f"{operation_id} has no {location} parameter {name!r}")


def check_query(operation_id: str, request: Request) -> dict[str, Any]:
    """The query parameters of ``request``, each converted to its schema's type and checked.

    An unknown parameter, or one given twice, is a 400 naming it; so is a
    value that breaks its schema (``limit=0``, ``limit=ten``).
    """
    declared = {p["name"]: p for p in _operation(operation_id).get("parameters", []) if p["in"] == "query"}
    values: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        if name not in declared:
            raise BadRequest(_shown(name), f"Received unknown parameter: {_shown(name)}.")
        if name in values:
            raise BadRequest(name, f"{name} may be given once.")
        typed = _typed(value, declared[name]["schema"])
        check(declared[name]["schema"], typed, root=name, cache_key=f"{operation_id}:query:{name}")
        values[name] = typed
    for name, parameter in declared.items():
        if parameter.get("required") and name not in values:
            raise BadRequest(name, f"Missing required param: {name}.")
    return values


async def _read_bytes(request: Request) -> bytes:
    """The body, at most ``MAX_BODY_BYTES`` (413 after reading and discarding the rest, so the client reads the
    answer instead of a reset connection)."""
    body = bytearray()
    size, over = 0, False
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                over = True
                if size > MAX_DRAINED_BYTES:
                    break
            else:
                body += chunk
    except ClientDisconnect:
        raise BadRequest("body", "The client went away before the body was complete.") from None
    if over:
        raise BadRequest("body", f"The body is over {MAX_BODY_BYTES} bytes: send a smaller request.", status=413)
    return bytes(body)


def _text_of(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body", "The body is not valid UTF-8.") from None


def _json_of(body: bytes) -> Any:
    try:
        return json.loads(_text_of(body), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise BadRequest("body", "The body is not valid JSON.") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _body_schema(operation_id: str) -> tuple[str, bool]:
    """The request schema's name of an operation, and whether the body is required."""
    request_body = _operation(operation_id)["requestBody"]
    return request_body["content"][JSON]["schema"]["$ref"].rsplit("/", 1)[1], request_body.get("required", False)


async def read_json_body(request: Request, operation_id: str) -> Any:
    """The body of ``request`` as JSON (the lab's admin routes take nothing else), checked against the schema.

    In order: at most ``MAX_BODY_BYTES`` (413), ``Content-Type:
    application/json`` (415), UTF-8 (400), JSON (400), the schema (400
    naming the field). Every refusal is a ``BadRequest``.
    """
    body = await _read_bytes(request)
    if _media_type(request) != JSON:
        raise BadRequest("Content-Type", "Send the body as JSON with the header 'Content-Type: application/json'"
                                         f" (got {_shown(_media_type(request)) or 'none'}).", status=415)
    value = _json_of(body)
    check_schema(_body_schema(operation_id)[0], value)
    return value


async def read_body(request: Request, operation_id: str) -> dict[str, Any]:
    """The parameters of a Stripe API call, from a form-encoded or a JSON body, checked against the schema.

    In order: at most ``MAX_BODY_BYTES`` (413); ``Content-Type``
    ``application/x-www-form-urlencoded`` (Stripe's, what the SDK sends) or
    ``application/json`` (415 otherwise; an empty body needs none where the
    operation's body is optional); UTF-8 (400); the form's names or the JSON
    (400); each form value converted to its field's type; the schema (400
    naming the field). Every refusal is a ``BadRequest``. The same parameters
    give the same dict whichever way they were sent.
    """
    body = await _read_bytes(request)
    name, required = _body_schema(operation_id)
    media_type = _media_type(request)
    if not body and not required and media_type in ("", FORM, JSON):
        value: Any = {}
    elif media_type == FORM:
        try:
            value = _typed(form.decode(_text_of(body)), _schema(name))
        except form.FormError as exc:
            raise BadRequest(exc.param, exc.message) from None
    elif media_type == JSON:
        value = _json_of(body)
    else:
        raise BadRequest("Content-Type", f"Send the body form-encoded ('Content-Type: {FORM}', as Stripe takes it)"
                                         f" or as JSON ('Content-Type: {JSON}'); got "
                                         f"{_shown(media_type) or 'no Content-Type'}.", status=415)
    check_schema(name, value)
    return value


def _resolved(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = _schema(schema["$ref"].rsplit("/", 1)[1])
    return schema


_INTEGER_TEXT = re.compile(r"^-?[0-9]{1,30}$")
_NUMBER_TEXT = re.compile(r"^-?[0-9]{1,30}(\.[0-9]{1,30})?$")


def _typed(value: Any, schema: dict[str, Any], param: str = "") -> Any:
    """A form value (strings, and objects of them) in the type its schema gives it, where it converts.

    What does not convert is returned as it is, and the schema then refuses
    it naming the field: ``amount=abc`` is a 400 on ``amount``, as a JSON
    ``"abc"`` would be.
    """
    schema = _resolved(schema)
    kind = schema.get("type")
    if isinstance(value, str):
        if kind == "integer" and _INTEGER_TEXT.match(value):
            return int(value)
        if kind == "number" and _NUMBER_TEXT.match(value):
            return float(value)
        if kind == "boolean" and value in ("true", "false"):
            return value == "true"
        return value
    if isinstance(value, dict):
        if kind == "array":
            try:
                items = form.as_list(value, param or "body")
            except form.FormError as exc:
                raise BadRequest(exc.param, exc.message) from None
            return [_typed(item, schema.get("items", {}), f"{param}.{i}") for i, item in enumerate(items)]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {key: _typed(item, properties.get(key, extra if isinstance(extra, dict) else {}),
                            f"{param}.{key}" if param else key)
                for key, item in value.items()}
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
