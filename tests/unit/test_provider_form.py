"""Stripe's wire format on the provider's side: form bodies with bracket nesting, the search query language, the
webhook signature; and the form-encoded API fuzzed against the real process.

The unit tests compare with the official SDK's own encoder and verifier, so "as the SDK does" is checked, not
assumed.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import parse_qsl, urlencode

import pytest
import stripe
from starlette.requests import Request

from effectively_once.payments import form, objects, search, webhooks
from effectively_once.payments.contract import BadRequest, read_body

SAMPLES = [
    {"amount": 1250, "currency": "usd", "metadata": {"msg_id": "m-1", "note": "a b&c=d[e]"}},
    {"amount": 5, "currency": "eur", "confirm": True, "payment_method_types": ["card"], "customer": None},
    {"nested": {"deeper": {"list": [1, {"x": "y"}], "flag": False}}, "unicode": "café ☕"},
]


def _request(body: bytes, content_type: str | None) -> Request:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    sent = [False]

    async def receive() -> dict:
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)


def read(body: bytes, content_type: str | None, operation: str = "createPaymentIntent"):
    return asyncio.run(read_body(_request(body, content_type), operation))


# -- form bodies ------------------------------------------------------------------------------
@pytest.mark.parametrize("params", SAMPLES)
def test_our_encoding_sends_the_same_pairs_as_the_sdks_encoder(params):
    from stripe._encode import _api_encode  # the SDK's own, as its requestor calls it

    sdk = urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")
    assert parse_qsl(form.encode(params), keep_blank_values=True) == parse_qsl(sdk, keep_blank_values=True)


def test_decoding_nests_brackets_and_keeps_every_leaf_a_string():
    decoded = form.decode("amount=1250&metadata[msg_id]=m-1&metadata[note]=&types[]=card&types[]=x&confirm=true")
    assert decoded == {"amount": "1250", "metadata": {"msg_id": "m-1", "note": ""}, "types": {"0": "card", "1": "x"},
                       "confirm": "true"}
    assert form.as_list(decoded["types"], "types") == ["card", "x"]
    assert form.decode("") == {}


@pytest.mark.parametrize("body,param", [
    ("amount=1&amount=2", "amount"), ("metadata=x&metadata[a]=b", "metadata"), ("metadata[a]=b&metadata=x", "metadata"),
    ("a[b=1", "a[b"), ("[x]=1", "[x]"), ("a[b][c][d][e][f]=1", "a[b][c][d][e][f]"), ("amount=%ff", "body"),
])
def test_a_form_body_that_is_not_one_is_refused_naming_the_parameter(body, param):
    with pytest.raises(form.FormError) as caught:
        form.decode(body)
    assert caught.value.param == param


@pytest.mark.parametrize("node,error", [({"1": "a"}, "0, 1, 2"), ({"0": "a", "2": "b"}, "gap"), ({"x": "a"}, "[0]"),
                                        ({"00": "a"}, "[0]")])
def test_a_list_must_be_indexed_from_zero_without_gaps(node, error):
    with pytest.raises(form.FormError, match=error.replace("[", r"\[").replace("]", r"\]")):
        form.as_list(node, "types")


def test_a_form_body_and_a_json_body_read_as_the_same_parameters():
    params = {"amount": 1250, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa",
              "metadata": {"msg_id": "m-1"}, "payment_method_types": ["card"]}
    as_json = read(json.dumps(params).encode(), "application/json")
    assert read(form.encode(params).encode(), form.FORM) == params == as_json


@pytest.mark.parametrize("body,param", [
    (b"amount=12.5&currency=usd", "amount"), (b"amount=ten&currency=usd", "amount"),
    (b"amount=1&currency=usd&confirm=yes", "confirm"), (b"amount=1&currency=usd&metadata[k]=v%00", "metadata.k"),
    (b"amount=1&currency=usd&payment_method_types[1]=card", "payment_method_types"),
    (b"amount=1&currency=usd&amount[x]=1", "amount"), (b"amount=1&currency=usd&colour=red", "colour"),
    (b"amount=" + b"9" * 5000 + b"&currency=usd", "amount"),
])
def test_a_form_value_of_the_wrong_type_is_a_400_naming_its_field(body, param):
    with pytest.raises(BadRequest) as caught:
        read(body, form.FORM)
    assert caught.value.param == param and caught.value.status == 400


def test_an_empty_body_is_no_parameters_where_the_body_is_optional_and_neither_media_type_is_a_415():
    assert read(b"", form.FORM, "confirmPaymentIntent") == {} == read(b"", None, "confirmPaymentIntent")
    with pytest.raises(BadRequest) as caught:
        read(b"amount=1", "text/plain")
    assert caught.value.status == 415 and caught.value.param == "Content-Type"
    with pytest.raises(BadRequest) as missing:
        read(b"", form.FORM)
    assert missing.value.param == "amount"


# -- the search query language ----------------------------------------------------------------
@pytest.mark.parametrize("query,clauses,connector", [
    ("metadata['msg_id']:'m-1'", [("metadata", ":", "m-1", False, "msg_id")], "AND"),
    ('metadata["msg_id"]:"it\\"s"', [("metadata", ":", 'it"s', False, "msg_id")], "AND"),
    ("status:'succeeded' AND amount>=1000", [("status", ":", "succeeded", False, None),
                                             ("amount", ">=", 1000.0, False, None)], "AND"),
    ("-currency:'eur' OR created<1700000000", [("currency", ":", "eur", True, None),
                                                ("created", "<", 1.7e9, False, None)], "OR"),
])
def test_search_queries_parse_into_clauses(query, clauses, connector):
    parsed = search.parse(query, "payment_intent")
    assert [(c.field, c.op, c.value, c.negated, c.key) for c in parsed.clauses] == clauses
    assert parsed.connector == connector
    condition, params = search.to_sql(parsed)
    assert condition.count("%s") == len(params) and "succeeded" not in condition and "m-1" not in condition


@pytest.mark.parametrize("query,words", [
    ("", "empty"), ("colour:'red'", "unsupported search field"), ("status:succeeded", "Quote"),
    ("amount:'lots'", "numeric"), ("status>'a'", "exact match"), ("metadata:'x'", "metadata key"),
    ("status:'a' AND", "ends with"), ("status:'a' status:'b'", "AND or OR"),
    ("status:'a' AND amount>1 OR amount<5", "mixes"), ("status~'suc'", "substring"), ("customer:null", "null"),
    (" AND ".join(["amount>1"] * 11), "at most 10"),
])
def test_a_search_query_the_provider_cannot_run_says_why(query, words):
    with pytest.raises(search.SearchError, match=words):
        search.parse(query, "charge")


# -- the webhook signature and the API version ------------------------------------------------
def test_the_signature_is_the_one_the_sdk_verifies_and_computes():
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "charge.succeeded", "data": {"object": {}}})
    header = webhooks.signature_header(payload, "whsec_abc", timestamp=int(time.time()))
    assert stripe.WebhookSignature.verify_header(payload, header, "whsec_abc", tolerance=300)
    t = int(header[2:].split(",")[0])
    assert header == stripe.WebhookSignature.generate_signature_header(payload, "whsec_abc", timestamp=t)
    for secret in ("sk_test_1", "whsec_", "whsec_a b\n"):
        with pytest.raises(ValueError, match="whsec_"):
            webhooks.check_secret(secret)


def test_the_events_api_version_is_the_one_the_pinned_sdk_sends():
    assert objects.API_VERSION == stripe.api_version
