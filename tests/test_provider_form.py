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

import psycopg
import pytest
import stripe
from starlette.requests import Request

from effectively_once.payments import form, objects, search, webhooks
from effectively_once.payments.contract import PG_TEXT, BadRequest, read_body
from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
SAMPLES = [
    {"amount": 1250, "currency": "usd", "metadata": {"msg_id": "m-1", "note": "a b&c=d[e]"}},
    {"amount": 5, "currency": "eur", "confirm": True, "payment_method_types": ["card"], "customer": None},
    {"nested": {"deeper": {"list": [1, {"x": "y"}], "flag": False}}, "unicode": "café ☕"},
]


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


# -- the form-encoded API, fuzzed -------------------------------------------------------------
FUZZ_REQUESTS = 250
FUZZ_SECONDS = 60.0


@pytest.mark.integration
def test_fuzzing_the_form_encoded_writes_finds_no_5xx_and_no_money_moved_by_a_refusal(provider):
    """Positive and negative form bodies for the three calls that can move money, bracket-encoded as the SDK does."""
    import hypothesis
    import requests
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schemathesis.openapi.format(PG_TEXT, st.text(st.characters(codec="utf-8", exclude_characters="\x00")))
    schema = schemathesis.openapi.from_url(f"{provider.url}/openapi.json")
    writes = {"/v1/charges", "/v1/payment_intents", "/v1/payment_intents/{id}/confirm"}
    operations = [op for op in (r.ok() for r in schema.get_all_operations())
                  if op.method.upper() == "POST" and op.path in writes]
    assert len(operations) == 3
    # Real PaymentIntents to confirm (one with a card already, one without), besides the unknown ids generated.
    sdk = stripe.StripeClient(DEFAULT_API_KEY, base_addresses={"api": provider.url}, max_network_retries=0)
    intents = [sdk.v1.payment_intents.create(params={"amount": 100, "currency": "usd", **extra}).id
               for extra in ({"payment_method": "pm_card_visa"}, {}, {})]
    strategies = []
    for operation in operations:
        fixed = [{"id": pi} for pi in intents] if "{id}" in operation.path else [None]
        for path_parameters in fixed:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategies.append(operation.as_strategy(generation_mode=mode, media_type=form.FORM,
                                                        path_parameters=path_parameters))
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    sent: list[tuple[str, int, bool]] = []
    as_form: list[bool] = []  # negative cases may send another media type, which must be a 415
    unsendable: list[str] = []
    started = time.monotonic()
    session = requests.Session()
    conn = psycopg.connect(provider.dsn, autocommit=True)

    def ledger() -> int:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]

    @hypothesis.settings(max_examples=FUZZ_REQUESTS, deadline=None, database=None, derandomize=True,
                         phases=[hypothesis.Phase.generate], suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=st.one_of(strategies))
    def one_request(case) -> None:
        if time.monotonic() - started > FUZZ_SECONDS:
            return
        before = ledger()
        case.headers = {**(case.headers or {}), **AUTH}
        if isinstance(case.body, dict):
            # Nested objects in brackets, as the SDK sends them (requests would write metadata=msg_id).
            case.body, case.media_type = form.encode(case.body), form.FORM
        try:
            response = case.call(base_url=provider.url, session=session, timeout=15)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError) as exc:
            unsendable.append(type(exc).__name__)
            return
        case.validate_response(response, checks=checks)
        answer = json.loads(response.content)
        charged = (response.status_code == 200 and response.headers.get(REPLAY_HEADER) != "true"
                   and answer.get("status") == "succeeded")
        sent.append((case.operation.path, response.status_code, charged))
        as_form.append(response.request.headers.get("Content-Type", "").startswith(form.FORM))
        moved = ledger() - before
        assert moved == (1 if charged else 0), (
            f"POST {case.operation.path} with {case.body!r} got {response.status_code} and moved {moved} charges")

    try:
        one_request()
    finally:
        conn.close()
        session.close()
    statuses: dict[int, int] = {}
    for _path, status, _charged in sent:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"fuzzed {len(sent)} writes ({sum(as_form)} form-encoded) in {time.monotonic() - started:.1f} s "
          f"({len(unsendable)} refused by the client library); statuses {dict(sorted(statuses.items()))}")
    assert len(sent) >= 100, f"only {len(sent)} fuzzed requests reached the provider"
    assert sum(as_form) >= 0.8 * len(sent), f"only {sum(as_form)} of {len(sent)} requests were form-encoded"
    assert all(status < 500 for _p, status, _c in sent)
    assert any(charged for (_p, _s, charged), was_form in zip(sent, as_form, strict=True) if was_form), (
        "no form-encoded request moved money")
    assert sum(400 <= status < 500 for _p, status, _c in sent) >= 20, "too few refusals to say anything"
    assert writes == {p for p, _s, _c in sent}
