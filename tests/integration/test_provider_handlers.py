"""The provider's decisions and route handlers called directly, without a server or HTTP.

The pure helpers (validation, the idempotency-key decision) need nothing; the
handlers run against a real PostgreSQL database of the test session's stack.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from starlette.requests import Request
from starlette.responses import Response

from effectively_once import stack as stack_mod
from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER
from effectively_once.payments.provider import (
    MAX_KEY_CHARS,
    BadRequest,
    Faults,
    Provider,
    StoredKey,
    answer_for_taken_key,
    check_idempotency_key,
    fingerprint,
    trace_id_of_header,
    validate_charge,
)

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


def charge(msg_id: str = "m-1", **change: Any) -> dict:
    return {"amount": 1250, "currency": "usd", "customer": "cus_001", "metadata": {"msg_id": msg_id}, **change}


def request(method: str = "POST", path: str = "/v1/charges", body: Any = None, *, raw: bytes | None = None,
            headers: dict[str, str] | None = None, query: str = "") -> Request:
    """A Starlette request as the server would hand it to a handler."""
    content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    all_headers = {**AUTH, "content-type": "application/json", **(headers or {})}
    scope = {
        "type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": path,
        "raw_path": path.encode(), "root_path": "", "query_string": query.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in all_headers.items()],
        "server": ("provider.test", 80), "client": ("127.0.0.1", 50000),
    }
    sent = [False]

    async def receive() -> dict:
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": content, "more_body": False}

    return Request(scope, receive)


def payload(response: Response) -> Any:
    return json.loads(response.body)


def error_of(response: Response) -> dict:
    return payload(response)["error"]


# -- the pure helpers -------------------------------------------------------------------------
@pytest.mark.parametrize("change,field", [
    ({"amount": 0}, "amount"), ({"amount": "12"}, "amount"), ({"amount": True}, "amount"),
    ({"amount": 100_000_000}, "amount"), ({"currency": "dollars"}, "currency"), ({"currency": "usd\n"}, "currency"),
    ({"customer": ""}, "customer"), ({"customer": "a\x00b"}, "customer"), ({"customer": "c\ud800"}, "customer"),
    ({"customer": "c" * 256}, "customer"), ({"metadata": "m"}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"), ({"metadata": {"k" * 41: "v"}}, "metadata"),
    ({"metadata": {"note": "v" * 501}}, "metadata.note"), ({"metadata": {"msg_id": ""}}, "metadata.msg_id"),
])
def test_validation_rejects_each_bad_field_with_a_400_naming_it(change, field):
    with pytest.raises(BadRequest) as caught:
        validate_charge({**charge(), **change})
    assert caught.value.param == field
    response = caught.value.response()
    assert response.status_code == 400
    assert error_of(response) == {"type": "invalid_request_error", "param": field, "message": caught.value.message}
    assert field.split(".")[0] in caught.value.message


def test_validation_rejects_a_body_that_is_not_an_object():
    with pytest.raises(BadRequest) as caught:
        validate_charge([charge()])
    assert caught.value.param == "body" and caught.value.response().status_code == 400


def test_validation_returns_the_params_it_stores():
    params = validate_charge(charge(currency="EUR", metadata={"msg_id": "m-9", "note": ""}))
    assert params == {"amount": 1250, "currency": "eur", "customer": "cus_001",
                      "metadata": {"msg_id": "m-9", "note": ""}}


def test_the_idempotency_key_must_be_1_to_255_characters():
    assert check_idempotency_key(None) is None
    assert check_idempotency_key("k" * MAX_KEY_CHARS) == "k" * MAX_KEY_CHARS
    for bad in ("", "k" * (MAX_KEY_CHARS + 1)):
        with pytest.raises(BadRequest) as caught:
            check_idempotency_key(bad)
        assert caught.value.param == "Idempotency-Key" and caught.value.response().status_code == 400


def test_faults_name_the_bad_setting_and_change_nothing():
    faults = Faults()
    for change in ({"fail_after_charge": 3}, {"latency_ms": float("nan")}, {"latency_ms": -1},
                   {"fail_after_charge_mode": "crash"}, {"explode": 1}):
        with pytest.raises(BadRequest) as caught:
            faults.update({"latency_ms": 5, **change})
        assert caught.value.param == next(iter(change)) and caught.value.response().status_code == 400
    assert faults == Faults()


def test_the_trace_id_comes_from_a_well_formed_traceparent_only():
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of_header(f"00-{trace}-00f067aa0ba902b7-01") == trace
    assert trace_id_of_header(f"00-{trace.upper()}-00f067aa0ba902b7-01") is None
    assert trace_id_of_header(None) is None and trace_id_of_header("") is None


def test_a_replayed_key_with_another_body_is_an_idempotency_error():
    first = fingerprint("/v1/charges", validate_charge(charge()))
    other = fingerprint("/v1/charges", validate_charge(charge(amount=9999)))
    stored = StoredKey(first, "done", 200, {"id": "ch_1"})
    response = answer_for_taken_key(stored, other)
    assert response.status_code == 400
    assert error_of(response)["type"] == "idempotency_error" and error_of(response)["param"] == "Idempotency-Key"
    assert REPLAY_HEADER not in response.headers


def test_a_replayed_key_with_the_same_body_gets_the_stored_answer_even_a_500():
    digest = fingerprint("/v1/charges", validate_charge(charge()))
    replay = answer_for_taken_key(StoredKey(digest, "done", 200, {"id": "ch_1"}), digest)
    assert replay.status_code == 200 and payload(replay) == {"id": "ch_1"}
    assert replay.headers[REPLAY_HEADER] == "true"
    failure = {"error": {"type": "api_error", "message": "no money moved"}}
    stored_500 = answer_for_taken_key(StoredKey(digest, "done", 500, failure), digest)
    assert stored_500.status_code == 500 and payload(stored_500) == failure


def test_a_key_in_flight_or_pruned_meanwhile_is_a_409():
    digest = fingerprint("/v1/charges", validate_charge(charge()))
    in_flight = answer_for_taken_key(StoredKey(digest, "in_flight"), digest)
    pruned = answer_for_taken_key(None, digest)
    for response in (in_flight, pruned):
        assert response.status_code == 409
        # Stripe's field for it is the error's code; the type stays for clients that matched on it.
        assert error_of(response)["code"] == "idempotency_key_in_use"
        assert error_of(response)["type"] == "idempotency_key_in_use"
        assert error_of(response)["param"] == "Idempotency-Key"


# -- the handlers, on a real database ---------------------------------------------------------
@pytest.fixture(scope="module")
def provider_dsn(stack):
    name = f"provider_handlers_{stack_mod.new_run_id()}"
    dsn = stack.create_database(name)
    yield dsn
    stack.drop_database(name)


def with_provider(dsn: str, scenario: Callable[[Provider], Awaitable[Any]], **settings: Any) -> Any:
    """Run ``scenario(provider)`` with the provider's pools open, in a fresh event loop."""
    async def main() -> Any:
        async with Provider(dsn, pool_size=2, **settings) as provider:
            return await scenario(provider)

    return asyncio.run(main())


def new_msg_id() -> str:
    return f"m-{stack_mod.new_run_id()}"


def keyed(msg_id: str, **change: Any) -> Request:
    """``POST /v1/charges`` of ``charge(msg_id, **change)`` under the key ``k-<msg_id>``."""
    return request(body=charge(msg_id, **change), headers={"Idempotency-Key": f"k-{msg_id}"})


def ledger_rows(dsn: str, msg_id: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT charge_id, idempotency_key, amount FROM ledger WHERE msg_id = %s ORDER BY"
                            " created_at", (msg_id,)).fetchall()


@pytest.mark.integration
@pytest.mark.parametrize("change,field", [({"amount": -5}, "amount"), ({"currency": 840}, "currency"),
                                          ({"metadata": {"msg_id": ""}}, "metadata.msg_id")])
def test_create_charge_answers_400_naming_the_field_and_moves_no_money(provider_dsn, change, field):
    msg_id = new_msg_id()

    async def scenario(provider: Provider):
        return await provider.create_charge(keyed(msg_id, **change))

    response = with_provider(provider_dsn, scenario)
    assert response.status_code == 400 and error_of(response)["param"] == field
    assert ledger_rows(provider_dsn, msg_id) == []


@pytest.mark.integration
def test_create_charge_answers_400_for_a_body_that_is_not_json_or_a_bad_key(provider_dsn):
    msg_id = new_msg_id()

    async def scenario(provider: Provider):
        not_json = await provider.create_charge(request(raw=b"{nope"))
        long_key = await provider.create_charge(request(body=charge(msg_id), headers={"Idempotency-Key": "k" * 256}))
        return not_json, long_key

    not_json, long_key = with_provider(provider_dsn, scenario)
    assert not_json.status_code == 400 and error_of(not_json)["param"] == "body"
    assert long_key.status_code == 400 and error_of(long_key)["param"] == "Idempotency-Key"
    assert ledger_rows(provider_dsn, msg_id) == []


@pytest.mark.integration
def test_create_charge_replays_a_key_and_refuses_it_with_another_body(provider_dsn):
    msg_id = new_msg_id()

    async def scenario(provider: Provider):
        first = await provider.create_charge(keyed(msg_id))
        again = await provider.create_charge(keyed(msg_id))
        other = await provider.create_charge(keyed(msg_id, amount=9999))
        return first, again, other

    first, again, other = with_provider(provider_dsn, scenario)
    assert first.status_code == 200 and REPLAY_HEADER not in first.headers
    assert again.status_code == 200 and again.headers[REPLAY_HEADER] == "true"
    assert payload(again) == payload(first)
    assert other.status_code == 400 and error_of(other)["type"] == "idempotency_error"
    assert ledger_rows(provider_dsn, msg_id) == [(payload(first)["id"], f"k-{msg_id}", 1250)]


def claim_twice(dsn: str, pause: float = 0.0, **settings: Any) -> tuple[str, Response | None, Response | None]:
    """Claim a new key, wait ``pause`` seconds with it in flight, claim it again: (key, first answer, second)."""
    key = f"k-{stack_mod.new_run_id()}"
    digest = fingerprint("/v1/charges", validate_charge(charge()))

    async def scenario(provider: Provider):
        async with provider.pool.connection() as conn:
            first = await provider.claim(conn, key, digest)
            await asyncio.sleep(pause)
            return first, await provider.claim(conn, key, digest)

    return key, *with_provider(dsn, scenario, **settings)


@pytest.mark.integration
def test_claim_owns_a_new_key_and_answers_409_while_it_is_in_flight(provider_dsn):
    key, owned, second = claim_twice(provider_dsn)
    assert owned is None
    assert second.status_code == 409 and error_of(second)["code"] == "idempotency_key_in_use"
    with psycopg.connect(provider_dsn) as conn:
        assert conn.execute("SELECT state FROM idempotency_keys WHERE key = %s", (key,)).fetchone() == ("in_flight",)


@pytest.mark.integration
def test_a_key_left_in_flight_past_the_timeout_is_taken_over(provider_dsn):
    _key, owned, taken_over = claim_twice(provider_dsn, pause=0.2, in_flight_timeout=0.1)
    assert owned is None and taken_over is None


@pytest.mark.integration
def test_every_route_refuses_a_wrong_api_key(provider_dsn):
    wrong = {"Authorization": "Bearer wrong"}

    async def scenario(provider: Provider):
        return [await provider.create_charge(request(body=charge(), headers=wrong)),
                await provider.list_charges(request("GET", headers=wrong)),
                await provider.admin_faults(request("GET", "/admin/faults", headers=wrong)),
                await provider.admin_expire_keys(request(path="/admin/expire-keys", headers=wrong))]

    for response in with_provider(provider_dsn, scenario):
        assert response.status_code == 401 and error_of(response)["type"] == "authentication_error"


@pytest.mark.integration
def test_admin_faults_names_the_bad_setting_and_keeps_the_good_ones(provider_dsn):
    async def scenario(provider: Provider):
        faults_body = {"latency_ms": 5, "fail_before_charge": 2}
        bad = await provider.admin_faults(request(path="/admin/faults", body=faults_body))
        not_object = await provider.admin_faults(request(path="/admin/faults", body=[1]))
        not_utf8 = await provider.admin_faults(request(path="/admin/faults", raw=b'{"latency_ms": "\xff"}'))
        good = await provider.admin_faults(request(path="/admin/faults", body={"latency_ms": 5}))
        return bad, not_object, not_utf8, good, provider.faults

    bad, not_object, not_utf8, good, faults = with_provider(provider_dsn, scenario)
    assert bad.status_code == 400 and error_of(bad)["param"] == "fail_before_charge"
    assert not_object.status_code == 400 and error_of(not_object)["param"] == "body"
    assert not_utf8.status_code == 400 and error_of(not_utf8)["param"] == "body"
    assert good.status_code == 200 and payload(good)["latency_ms"] == 5.0 and faults.latency_ms == 5.0


def fail_then_retry(dsn: str, msg_id: str, fault: str) -> tuple[Response, Response, Response]:
    """Charge ``msg_id`` with ``fault`` certain, retry with the key once it is off, then list its charges."""
    async def scenario(provider: Provider):
        failed = await provider.create_charge(keyed(msg_id))
        provider.faults.update({fault: 0})
        replayed = await provider.create_charge(keyed(msg_id))
        listed = await provider.list_charges(request("GET", query=f"msg_id={msg_id}"))
        return failed, replayed, listed

    return with_provider(dsn, scenario, faults=Faults(**{fault: 1.0}))


@pytest.mark.integration
def test_fail_before_charge_stores_the_500_under_the_key_and_list_charges_shows_no_money(provider_dsn):
    failed, replayed, listed = fail_then_retry(provider_dsn, new_msg_id(), "fail_before_charge")
    assert failed.status_code == 500 and replayed.status_code == 500
    assert replayed.headers[REPLAY_HEADER] == "true"
    assert payload(listed) == {"object": "list", "data": []}


@pytest.mark.integration
def test_fail_after_charge_stores_the_500_it_sent_and_the_ledger_lookup_finds_the_charge(provider_dsn):
    msg_id = new_msg_id()
    failed, replayed, listed = fail_then_retry(provider_dsn, msg_id, "fail_after_charge")
    # What the key keeps is exactly what was sent: the same status and the same body, not the charge.
    assert failed.status_code == replayed.status_code == 500
    assert payload(replayed) == payload(failed) and "id" not in payload(failed)
    assert REPLAY_HEADER not in failed.headers and replayed.headers[REPLAY_HEADER] == "true"
    rows = ledger_rows(provider_dsn, msg_id)
    assert len(rows) == 1 and rows[0][1] == f"k-{msg_id}", "the money moved once although both answers were 500"
    data = payload(listed)["data"]
    assert [(d["id"], d["msg_id"], d["idempotency_key"]) for d in data] == [(rows[0][0], msg_id, f"k-{msg_id}")]
    with psycopg.connect(provider_dsn) as conn:
        stored = conn.execute("SELECT state, status_code, response FROM idempotency_keys WHERE key = %s",
                              (f"k-{msg_id}",)).fetchone()
    assert stored == ("done", 500, payload(failed))


@pytest.mark.integration
def test_fail_after_charge_drop_stores_the_200_and_replays_it(provider_dsn):
    msg_id = new_msg_id()

    async def scenario(provider: Provider):
        dropped = await provider.create_charge(keyed(msg_id))
        provider.faults.update({"fail_after_charge": 0})
        return dropped, await provider.create_charge(keyed(msg_id))

    dropped, replayed = with_provider(provider_dsn, scenario,
                                      faults=Faults(fail_after_charge=1.0, fail_after_charge_mode="drop"))
    assert type(dropped).__name__ == "_DroppedResponse"
    assert replayed.status_code == 200 and replayed.headers[REPLAY_HEADER] == "true"
    assert ledger_rows(provider_dsn, msg_id) == [(payload(replayed)["id"], f"k-{msg_id}", 1250)]


@pytest.mark.integration
@pytest.mark.parametrize("query", ["msg_id=", "msg_id=m%00x", "msg_id=" + "m" * 501])
def test_list_charges_answers_400_naming_msg_id_for_a_value_the_ledger_cannot_hold(provider_dsn, query):
    async def scenario(provider: Provider):
        return await provider.list_charges(request("GET", query=query))

    response = with_provider(provider_dsn, scenario)
    assert response.status_code == 400, payload(response)
    assert error_of(response)["type"] == "invalid_request_error" and error_of(response)["param"] == "msg_id"
