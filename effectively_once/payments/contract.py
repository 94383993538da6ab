"""The provider's contract: one OpenAPI 3.1 document, and the one validator that reads it.

``OPENAPI`` describes every route of the provider (``POST /v1/charges``,
``GET /v1/charges``, ``/healthz``, ``/admin/faults``, ``/admin/expire-keys``);
the provider serves it at ``GET /openapi.json``. Every request is checked
against it before the provider touches its database, so a malformed request
gets a 4xx that names the field, in Stripe's error shape::

    {"error": {"type": "invalid_request_error", "param": "amount", "message": "..."}}

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

Beyond Stripe's: every string must be storable in PostgreSQL ``text``, which
holds neither a NUL nor a lone UTF-16 surrogate (JSON can carry both, as
``\\u0000`` and ``\\ud800``), so each string's ``pattern`` excludes them;
``customer`` is 1 to 255 characters; a body is at most ``MAX_BODY_BYTES``
bytes of UTF-8 JSON sent as ``Content-Type: application/json``; unknown
parameters are refused, as Stripe refuses them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import fastjsonschema
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

if TYPE_CHECKING:  # jsonschema is imported when first needed: it takes seconds to import with its format extras
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

MAX_AMOUNT = 99_999_999
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500
MAX_KEY_CHARS = 255
MAX_CUSTOMER_LENGTH = 255
# The largest valid charge is about 50 x (40 + 500) characters of metadata; a client that escapes
# every character (\\uXXXX, 12 bytes for one outside the BMP) sends about 330 KB. 1 MiB covers it.
MAX_BODY_BYTES = 1024 * 1024
# A body over the limit is read to its end and discarded, up to this much, so that the client
# reads the 413 instead of a reset connection; past it the connection is closed.
MAX_DRAINED_BYTES = 64 * 1024 * 1024
JSON = "application/json"

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


_REPLAYED = {"Idempotent-Replayed": {"description": "'true' when the answer is the one stored under the key",
                                     "schema": {"type": "string", "enum": ["true"]}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "effectively_once payment provider",
        "version": "1.0.0",
        "description": (
            "A Stripe-like payment provider for the course's labs. POST /v1/charges moves money (a row in the"
            " provider's ledger) once per Idempotency-Key. Every malformed request gets a 4xx whose body names"
            f" the field. Bodies are UTF-8 JSON of at most {MAX_BODY_BYTES} bytes. The format '{PG_TEXT}' is a"
            " string PostgreSQL text can hold: no NUL character and no lone UTF-16 surrogate."),
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/charges": {
            "post": {
                "operationId": "createCharge",
                "summary": "Move money once per Idempotency-Key",
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "required": False,
                     "description": "The same key with the same body replays the first answer and moves no money.",
                     "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS,
                                "not": _CONTROL,
                                "x-error": f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters long,"
                                           " without control characters."}},
                    {"name": "traceparent", "in": "header", "required": False,
                     "description": "W3C trace context; a malformed one is ignored.", "schema": {"type": "string"}},
                ],
                "requestBody": {"required": True, "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/ChargeRequest"}}}},
                "responses": {
                    "200": {"description": "The charge (replayed when the key was seen with the same body)",
                            "headers": _REPLAYED,
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Charge"}}}},
                    "400": _error_response("A parameter is invalid (param names it), or the key was first used"
                                           " with other parameters (type idempotency_error)"),
                    "401": _error_response("No valid API key"),
                    "409": _error_response("Another request holds the key (code idempotency_key_in_use)"),
                    "413": _error_response(f"The body is over {MAX_BODY_BYTES} bytes"),
                    "415": _error_response("The body is not sent as application/json"),
                    "429": _error_response("Over the rate limit (a fault knob)"),
                    "500": _error_response("A fault knob failed the charge; the body does not say whether the"
                                           " money moved"),
                },
            },
            "get": {
                "operationId": "listCharges",
                "summary": "The ledger, oldest first (at most 100 rows), optionally of one message",
                "parameters": [
                    {"name": "msg_id", "in": "query", "required": False,
                     "schema": _text(MAX_METADATA_VALUE_LENGTH,
                                     f"msg_id must be 1 to {MAX_METADATA_VALUE_LENGTH} characters, "
                                     f"{_STORABLE_WORDS}.")},
                ],
                "responses": {
                    "200": {"description": "The charges",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/ChargeList"}}}},
                    "400": _error_response("The msg_id filter is invalid, or an unknown parameter was sent"),
                    "401": _error_response("No valid API key"),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health", "security": [],
                "responses": {"200": {"description": "The database answers", "content": {JSON: {"schema": {
                    "type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}}}}},
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
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Faults"}}}},
                    "401": _error_response("No valid API key"),
                },
            },
            "post": {
                "operationId": "setFaults",
                "summary": "Change some fault knobs; a bad one changes nothing",
                "requestBody": {"required": True, "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/FaultChanges"}}}},
                "responses": {
                    "200": {"description": "Every fault knob, after the change",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Faults"}}}},
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
                                       "description": "Authorization: Bearer <the provider's API key>"}},
        "schemas": {
            "ChargeRequest": {
                "type": "object",
                "x-error": "The body must be a JSON object with amount, currency and customer.",
                "required": ["amount", "currency", "customer"],
                "additionalProperties": False,
                "properties": {
                    "amount": {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT,
                               "description": "In the currency's smallest unit (cents for usd)",
                               "x-error": f"amount must be a whole number of the currency's smallest unit"
                                          f" (cents for usd) from 1 to {MAX_AMOUNT:,}."},
                    "currency": {"type": "string", "minLength": 3, "maxLength": 3, "pattern": "^[A-Za-z]{3}$",
                                 "description": "A three-letter ISO code, either case; stored in lowercase",
                                 "x-error": "currency must be a three-letter ISO code such as 'usd'."},
                    "customer": _text(MAX_CUSTOMER_LENGTH, f"customer must be 1 to {MAX_CUSTOMER_LENGTH}"
                                                           f" characters, {_STORABLE_WORDS}."),
                    "metadata": {
                        "type": "object",
                        "maxProperties": MAX_METADATA_KEYS,
                        "x-error": f"metadata must be an object of at most {MAX_METADATA_KEYS} string values.",
                        "propertyNames": {"type": "string", "format": PG_TEXT, "minLength": 1,
                                          "maxLength": MAX_METADATA_KEY_LENGTH, "not": _BRACKET,
                                          "x-error": f"metadata keys must be 1 to {MAX_METADATA_KEY_LENGTH}"
                                                     f" characters without square brackets, {_STORABLE_WORDS}."},
                        "properties": {
                            "msg_id": _text(MAX_METADATA_VALUE_LENGTH,
                                            f"metadata.msg_id must be 1 to {MAX_METADATA_VALUE_LENGTH}"
                                            f" characters, {_STORABLE_WORDS}.",
                                            description="The message id; GET /v1/charges?msg_id= finds it"),
                        },
                        "additionalProperties": _text(
                            MAX_METADATA_VALUE_LENGTH,
                            f"{{param}} must be a string of at most {MAX_METADATA_VALUE_LENGTH} characters,"
                            f" {_STORABLE_WORDS}.", min_length=0),
                    },
                },
            },
            "Charge": {
                "type": "object",
                "required": ["id", "object", "amount", "currency", "customer", "metadata", "status", "created"],
                "properties": {
                    "id": {"type": "string", "pattern": "^ch_"}, "object": {"const": "charge"},
                    "amount": {"type": "integer"}, "currency": {"type": "string"}, "customer": {"type": "string"},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "status": {"const": "succeeded"}, "created": {"type": "integer"},
                },
            },
            "ChargeList": {
                "type": "object", "required": ["object", "data"],
                "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
                    "type": "object",
                    "required": ["id", "msg_id", "idempotency_key", "customer", "amount", "currency", "created"],
                    "properties": {"id": {"type": "string"}, "msg_id": {"type": ["string", "null"]},
                                   "idempotency_key": {"type": ["string", "null"]}, "customer": {"type": "string"},
                                   "amount": {"type": "integer"}, "currency": {"type": "string"},
                                   "trace_id": {"type": ["string", "null"]}, "created": {"type": "string"}}}}},
            },
            "FaultChanges": {
                "type": "object",
                "x-error": "The body must be a JSON object of fault settings.",
                "additionalProperties": False,
                "properties": {
                    "latency_ms": {"type": "number", "minimum": 0, "maximum": 60_000,
                                   "x-error": "latency_ms must be a number of milliseconds from 0 to 60000."},
                    "stall_next_ms": {"type": "number", "minimum": 0, "maximum": 60_000,
                                      "x-error": "stall_next_ms must be a number of milliseconds from 0 to 60000."},
                    "fail_after_charge": {"type": "number", "minimum": 0, "maximum": 1,
                                          "x-error": "fail_after_charge must be a probability from 0 to 1."},
                    "fail_after_charge_mode": {"type": "string", "enum": ["500", "drop"],
                                               "x-error": "fail_after_charge_mode must be '500' or 'drop'."},
                    "fail_before_charge": {"type": "number", "minimum": 0, "maximum": 1,
                                           "x-error": "fail_before_charge must be a probability from 0 to 1."},
                    "rate_limit_per_second": {"type": "number", "minimum": 0, "maximum": 1_000_000,
                                              "x-error": "rate_limit_per_second must be from 0 (no limit)"
                                                         " to 1000000."},
                    "key_ttl_seconds": {"type": "number", "minimum": 0, "maximum": 10 * 365 * 86400,
                                        "x-error": "key_ttl_seconds must be from 0 to 315360000 (ten years)."},
                },
            },
            "Faults": {"$ref": "#/components/schemas/FaultChanges"},
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                                   "param": {"type": "string"}, "code": {"type": "string"}}}},
            },
        },
    },
}


class BadRequest(ValueError):
    """A request the client got wrong, naming the field: a 4xx ``invalid_request_error`` (400 unless said).

    A ``ValueError`` whose ``args[0]`` is ``(param, message)``.
    """

    def __init__(self, param: str, message: str, status: int = 400) -> None:
        super().__init__((param, message))
        self.param, self.message, self.status = param, message, status

    def __str__(self) -> str:
        return self.message

    def response(self) -> Response:
        """The answer naming the field."""
        return error_response(self.status, "invalid_request_error", self.message, param=self.param)


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


def check_query(operation_id: str, request: Request) -> dict[str, str]:
    """The query parameters of ``request``, each checked; an unknown one is a 400 naming it."""
    declared = {p["name"] for p in _operation(operation_id).get("parameters", []) if p["in"] == "query"}
    values: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in declared:
            raise BadRequest(_shown(name), f"Received unknown parameter: {_shown(name)}.")
        if name in values:
            raise BadRequest(name, f"{name} may be given once.")
        check_parameter(operation_id, "query", name, value)
        values[name] = value
    return values


async def read_json_body(request: Request, operation_id: str) -> Any:
    """The body of ``request`` as JSON, checked against the operation's request schema.

    In order: at most ``MAX_BODY_BYTES`` (413, after reading and discarding
    the rest, so the client reads the answer), ``Content-Type:
    application/json`` (415), UTF-8 (400), JSON (400), the schema (400
    naming the field). Every refusal is a ``BadRequest``.
    """
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
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON:
        raise BadRequest("Content-Type", "Send the body as JSON with the header 'Content-Type: application/json'"
                                         f" (got {_shown(media_type) or 'none'}).", status=415)
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body", "The body is not valid UTF-8.") from None
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise BadRequest("body", "The body is not valid JSON.") from None
    schema = _operation(operation_id)["requestBody"]["content"][JSON]["schema"]
    name = schema["$ref"].rsplit("/", 1)[1]
    check_schema(name, value)
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
