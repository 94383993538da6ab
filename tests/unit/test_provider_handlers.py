"""The provider's pure decisions, called directly: validation, the idempotency key, faults, replays."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER
from effectively_once.payments.provider import (
    MAX_KEY_CHARS,
    BadRequest,
    Faults,
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
        # Stripe's field for it is the error's code; its type is one of Stripe's four.
        assert error_of(response)["code"] == "idempotency_key_in_use"
        assert error_of(response)["type"] == "invalid_request_error"
        assert response.headers["Stripe-Should-Retry"] == "true"
        assert error_of(response)["param"] == "Idempotency-Key"
