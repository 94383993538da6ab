"""The provider's contract (its OpenAPI document), checked from outside against the real process.

Each malformed request gets a 4xx naming the field, never a 5xx or a reset
connection, and moves no money; schemathesis fuzzes every route from the
document the provider serves; 40 concurrent requests with one key move money
once.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import httpx
import psycopg
import pytest

from effectively_once import stack as stack_mod
from effectively_once.payments import form
from effectively_once.payments.contract import MAX_BODY_BYTES, OPENAPI, PG_TEXT
from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER
from effectively_once.payments.provider import Faults

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
FUZZ_REQUESTS = 300
FUZZ_SECONDS = 60.0


def body(msg_id: str, **change) -> dict:
    return {"amount": 1250, "currency": "usd", "customer": "cus_001", "metadata": {"msg_id": msg_id}, **change}


def raw(charge: dict) -> bytes:
    """The body as Python's json sends it: a lone surrogate travels as the escape \\ud800."""
    return json.dumps(charge).encode()


# -- against the real process -----------------------------------------------------------------

def ledger_size(provider) -> int:
    with psycopg.connect(provider.dsn) as conn:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]


def test_the_provider_serves_its_contract_without_an_api_key(provider):
    response = httpx.get(f"{provider.url}/openapi.json")
    assert response.status_code == 200 and response.json() == json.loads(json.dumps(OPENAPI))


# The exact requests that once got a 500 (PostgreSQL's "bigint out of range", or text it cannot hold).
REGRESSIONS = [
    ("amount 10^30", raw(body("m", amount=10**30)), "amount"),
    ("lone surrogate in metadata.msg_id", raw(body("m\ud800")), "metadata.msg_id"),
    ("lone surrogate in currency", raw(body("m", currency="\ud800ab")), "currency"),
    ("NUL in customer", raw(body("m", customer="cus\x00001")), "customer"),
]


@pytest.mark.parametrize("name,content,param", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_each_request_that_once_got_a_500_gets_a_400_naming_its_field(provider, name, content, param):
    assert b"\\ud800" in content or b"\\u0000" in content or b"1000000000000000000000000000000" in content
    before = ledger_size(provider)
    response = httpx.post(f"{provider.url}/v1/charges", content=content, headers=JSON_HEADERS)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == param
    assert ledger_size(provider) == before


def test_the_bad_requests_one_after_another_on_one_connection_are_each_answered(provider):
    """Each is answered and the connection stays open for the next: none resets it."""
    before = ledger_size(provider)
    with httpx.Client(base_url=provider.url, headers=JSON_HEADERS, timeout=10) as client:
        params = [client.post("/v1/charges", content=content).json()["error"]["param"]
                  for _name, content, _param in REGRESSIONS * 2]
        # Still the same connection: a good request on it is charged.
        good = client.post("/v1/charges", content=raw(body(f"m-{stack_mod.new_run_id()}")))
    assert params == [param for _name, _content, param in REGRESSIONS] * 2
    assert good.status_code == 200
    assert ledger_size(provider) == before + 1


MALFORMED = [
    ("not JSON", b"{nope", "application/json", 400, "body"),
    ("empty body", b"", "application/json", 400, "body"),
    ("not UTF-8", b'{"amount": 1, "currency": "usd", "customer": "\xff"}', "application/json", 400, "body"),
    ("NaN", b'{"amount": NaN, "currency": "usd", "customer": "c"}', "application/json", 400, "body"),
    ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "body"),
    ("a 5000-digit amount", b'{"amount": ' + b"9" * 5000 + b"}", "application/json", 400, "body"),
    ("an array", b"[]", "application/json", 400, "body"),
    ("form-encoded, amount not a number", b"amount=12x&currency=usd&customer=c", "application/x-www-form-urlencoded",
     400, "amount"),
    ("form-encoded, a bracket left open", b"amount=1&currency=usd&customer=c&metadata[msg_id=m",
     "application/x-www-form-urlencoded", 400, "metadata[msg_id"),
    ("neither customer nor source", raw({"amount": 5, "currency": "usd"}), "application/json", 400, "source"),
    ("no content type", raw(body("m")), None, 415, "Content-Type"),
    ("text/plain", raw(body("m")), "text/plain", 415, "Content-Type"),
    ("amount a string", raw(body("m", amount="1250")), "application/json", 400, "amount"),
    ("amount a float", raw(body("m", amount=12.5)), "application/json", 400, "amount"),
    ("amount 0", raw(body("m", amount=0)), "application/json", 400, "amount"),
    ("amount 100,000,000", raw(body("m", amount=100_000_000)), "application/json", 400, "amount"),
    ("currency four letters", raw(body("m", currency="usdd")), "application/json", 400, "currency"),
    ("currency with a newline", raw(body("m", currency="usd\n")), "application/json", 400, "currency"),
    ("no currency", raw({"amount": 5, "customer": "c"}), "application/json", 400, "currency"),
    ("customer 256 characters", raw(body("m", customer="c" * 256)), "application/json", 400, "customer"),
    ("unknown parameter", raw(body("m", capture=True)), "application/json", 400, "capture"),
    ("metadata with 51 keys", raw(body("m", metadata={f"k{i}": "v" for i in range(51)})), "application/json",
     400, "metadata"),
    ("metadata key of 41 characters", raw(body("m", metadata={"k" * 41: "v"})), "application/json", 400,
     "metadata"),
    ("metadata key with brackets", raw(body("m", metadata={"a[b]": "v"})), "application/json", 400, "metadata"),
    ("metadata value of 501 characters", raw(body("m", metadata={"note": "v" * 501})), "application/json", 400,
     "metadata.note"),
    ("metadata value a number", raw(body("m", metadata={"note": 5})), "application/json", 400, "metadata.note"),
    ("a body of 2 MB", raw(body("m", customer="c" * (2 * MAX_BODY_BYTES))), "application/json", 413, "body"),
    ("a body of 30 MB", b'{"customer": "' + b"c" * (30 * 1024 * 1024) + b'"}', "application/json", 413, "body"),
]


@pytest.mark.parametrize("name,content,content_type,status,param", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_charge_gets_a_4xx_naming_the_field_and_moves_no_money(provider, name, content,
                                                                             content_type, status, param):
    before = ledger_size(provider)
    headers = dict(AUTH) if content_type is None else {**AUTH, "Content-Type": content_type}
    with httpx.Client(base_url=provider.url, timeout=30) as client:
        response = client.post("/v1/charges", content=content, headers=headers)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
        assert client.get("/healthz").status_code == 200, "the connection was not kept for the next request"
    assert ledger_size(provider) == before


@pytest.mark.parametrize("headers,param", [
    ({"Idempotency-Key": "k" * 256}, "Idempotency-Key"),
    ({"Idempotency-Key": ""}, "Idempotency-Key"),
    ({"Idempotency-Key": "k\tx"}, "Idempotency-Key"),
], ids=["256 characters", "empty", "a tab"])
def test_a_bad_idempotency_key_is_a_400_naming_the_header(provider, headers, param):
    before = ledger_size(provider)
    response = httpx.post(f"{provider.url}/v1/charges", content=raw(body("m")), headers={**JSON_HEADERS, **headers})
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert ledger_size(provider) == before


@pytest.mark.parametrize("query,param", [("msg_id=", "msg_id"), ("msg_id=m%00", "msg_id"),
                                         ("msg_id=" + "m" * 501, "msg_id"), ("limit=0", "limit"),
                                         ("limit=ten", "limit"), ("starting_after=ch_1", "starting_after"),
                                         ("msg_id=a&msg_id=b", "msg_id")])
def test_a_bad_list_query_is_a_400_naming_the_parameter(provider, query, param):
    response = httpx.get(f"{provider.url}/v1/charges?{query}", headers=AUTH)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_unknown_routes_and_methods_answer_in_stripes_error_shape(provider):
    missing = httpx.get(f"{provider.url}/v1/refunds", headers=AUTH)
    wrong = httpx.put(f"{provider.url}/v1/charges", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert wrong.status_code == 405 and "PUT" in wrong.json()["error"]["message"]


def test_admin_faults_refuses_a_number_too_large_for_a_float_by_name(provider):
    response = httpx.post(f"{provider.url}/admin/faults", content=b'{"key_ttl_seconds": ' + b"9" * 400 + b"}",
                          headers=JSON_HEADERS)
    assert response.status_code == 400 and response.json()["error"]["param"] == "key_ttl_seconds"


# -- schemathesis over HTTP -------------------------------------------------------------------
def replayed(headers) -> bool:
    """Whether a schemathesis response (headers: lowercased name -> list of values) was a replay."""
    values = {name.lower(): value for name, value in headers.items()}.get(REPLAY_HEADER.lower(), [])
    return "true" in (values if isinstance(values, list) else [values])


DEFAULT_FAULTS = asdict(Faults())


def moves_money(method: str, status: int, headers, body: bytes) -> bool:
    """Whether an answer says money moved: a fresh (not replayed) 200 whose charge or PaymentIntent succeeded."""
    if method != "POST" or status != 200 or replayed(headers):
        return False
    answer = json.loads(body)
    return answer.get("object") in ("charge", "payment_intent") and answer.get("status") == "succeeded"


def test_fuzzing_every_route_from_the_served_document_finds_no_5xx_and_no_money_moved_by_a_refusal(provider):
    """About 300 requests, positive and negative, each checked by schemathesis and against the ledger."""
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

    # The document's one custom format: any text PostgreSQL can hold (negative cases break it too).
    schemathesis.openapi.format(PG_TEXT, st.text(st.characters(codec="utf-8", exclude_characters="\x00")))
    schema = schemathesis.openapi.from_url(f"{provider.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    strategies = []
    for operation in operations:
        strategies.append(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        if operation.body or operation.query or operation.headers:
            strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    sent: list[tuple[str, str, int]] = []
    unsendable: list[str] = []
    started = time.monotonic()
    session = requests.Session()
    conn = psycopg.connect(provider.dsn, autocommit=True)

    def ledger() -> int:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]

    @hypothesis.settings(max_examples=FUZZ_REQUESTS, deadline=None, database=None, derandomize=True,
                         phases=[hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=st.one_of(strategies))
    def one_request(case) -> None:
        if time.monotonic() - started > FUZZ_SECONDS:
            return
        before = ledger()
        # Always the right API key: the fuzz is for the contract, and a 401 would stop every request there.
        case.headers = {**(case.headers or {}), **AUTH}
        if case.media_type == form.FORM and isinstance(case.body, dict):
            case.body = form.encode(case.body)  # nested objects in brackets, as the SDK sends them
        try:
            response = case.call(base_url=provider.url, session=session, timeout=15)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError) as exc:
            # The client library itself refuses to send it (a header with a newline, say): nothing reached
            # the provider. A reset or refused connection is a ConnectionError and fails the test.
            unsendable.append(type(exc).__name__)
            return
        if case.operation.path == "/admin/faults" and case.method.upper() == "POST":
            # A valid change (latency, a failure rate) would make the next requests slow or failing.
            requests.post(f"{provider.url}/admin/faults", json=DEFAULT_FAULTS, headers=AUTH, timeout=15)
        sent.append((case.method.upper(), case.operation.path, response.status_code))
        case.validate_response(response, checks=checks)
        moved = ledger() - before
        charged = moves_money(case.method.upper(), response.status_code, response.headers, response.content)
        assert moved == (1 if charged else 0), (
            f"{case.method} {case.operation.path} got {response.status_code} and moved {moved} charges")

    try:
        one_request()
    finally:
        conn.close()
        session.close()
    elapsed = time.monotonic() - started
    statuses: dict[int, int] = {}
    for _method, _path, status in sent:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"fuzzed {len(sent)} requests in {elapsed:.1f} s ({len(unsendable)} refused by the client library);"
          f" statuses {dict(sorted(statuses.items()))}")
    assert len(sent) >= 100, f"only {len(sent)} fuzzed requests reached the provider"
    assert all(status < 500 for _m, _p, status in sent)
    assert any(status == 200 for _m, p, status in sent if p == "/v1/charges"), "no valid charge was generated"
    assert any(400 <= status < 500 for _m, p, status in sent if p == "/v1/charges"), "no invalid charge was sent"
    assert elapsed < FUZZ_SECONDS + 30


# -- one key, 40 requests at once -------------------------------------------------------------
def test_forty_concurrent_requests_with_one_key_move_money_once(provider):
    msg_id = f"m-{stack_mod.new_run_id()}"
    key = f"k-{msg_id}"
    n = 40
    gate = threading.Barrier(n)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=provider.url, timeout=30) as client:
            gate.wait()
            return client.post("/v1/charges", json=body(msg_id), headers={**AUTH, "Idempotency-Key": key})

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(send, range(n)))
    first = [a for a in answers if a.status_code == 200 and a.headers.get(REPLAY_HEADER) != "true"]
    replayed = [a for a in answers if a.status_code == 200 and a.headers.get(REPLAY_HEADER) == "true"]
    in_use = [a for a in answers if a.status_code == 409]
    print(f"40 requests with one key: {len(first)} charged, {len(replayed)} replayed, {len(in_use)} got 409")
    assert len(first) == 1, [a.status_code for a in answers]
    assert len(first) + len(replayed) + len(in_use) == n, sorted(a.status_code for a in answers)
    assert all(a.json() == first[0].json() for a in replayed)
    assert all(a.json()["error"]["code"] == "idempotency_key_in_use" for a in in_use)
    with psycopg.connect(provider.dsn) as conn:
        rows = conn.execute("SELECT charge_id FROM ledger WHERE msg_id = %s", (msg_id,)).fetchall()
    assert rows == [(first[0].json()["id"],)]


