"""The Stripe-like provider over real HTTP and a real PostgreSQL database."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from effectively_once import protocol
from effectively_once import stack as stack_mod
from effectively_once.payments.children import ProviderProcess
from effectively_once.payments.messages import DEFAULT_API_KEY

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


@pytest.fixture
def faults_reset(provider):
    yield provider
    provider.set_faults(latency_ms=0, fail_after_charge=0, fail_after_charge_mode="500", fail_before_charge=0,
                        rate_limit_per_second=0, key_ttl_seconds=86400)


def body(msg_id: str, amount: int = 1250, **extra) -> dict:
    return {"amount": amount, "currency": "usd", "customer": "cus_001", "metadata": {"msg_id": msg_id}, **extra}


def post(provider, payload, key: str | None = None, headers: dict | None = None) -> httpx.Response:
    h = dict(AUTH if headers is None else headers)
    if key is not None:
        h["Idempotency-Key"] = key
    return httpx.post(f"{provider.url}/v1/charges", json=payload, headers=h, timeout=10)


def ledger_count(provider, msg_id: str) -> int:
    with psycopg.connect(provider.dsn) as conn:
        return conn.execute("SELECT count(*) FROM ledger WHERE msg_id = %s", (msg_id,)).fetchone()[0]


def uid() -> str:
    return stack_mod.new_run_id()


def test_the_port_is_printed_and_health_answers(provider):
    assert provider.port and f":{provider.port}" in provider.url
    announced = protocol.parse_provider_listening(provider.log_tail())
    assert announced == provider.url and announced.startswith("http://127.0.0.1:"), provider.log_tail()
    assert httpx.get(f"{provider.url}/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": DEFAULT_API_KEY}])
def test_missing_or_wrong_api_key_is_401(provider, headers):
    m = uid()
    response = post(provider, body(m), headers=headers)
    assert response.status_code == 401
    # Stripe's type for a bad key is invalid_request_error; the SDK raises AuthenticationError on the 401.
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert ledger_count(provider, m) == 0


@pytest.mark.parametrize("change,field", [
    ({"amount": 0}, "amount"), ({"amount": -5}, "amount"), ({"amount": "12"}, "amount"), ({"amount": True}, "amount"),
    ({"currency": "dollars"}, "currency"), ({"currency": 840}, "currency"),
    ({"customer": ""}, "customer"), ({"metadata": "m"}, "metadata"),
    ({"amount": 10**30}, "amount"), ({"amount": 100_000_000}, "amount"), ({"currency": "usd\n"}, "currency"),
    ({"customer": "a\x00b"}, "customer"), ({"customer": "c" * 256}, "customer"),
    ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"), ({"metadata": {"k" * 41: "v"}}, "metadata"),
    ({"metadata": {"note": "v" * 501}}, "metadata.note"), ({"metadata": {"msg_id": ""}}, "metadata.msg_id"),
])
def test_invalid_bodies_are_400_naming_the_field(provider, change, field):
    m = uid()
    response = post(provider, {**body(m), **change})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field, error
    assert ledger_count(provider, m) == 0


@pytest.mark.parametrize("field", ["customer", "currency", "metadata.msg_id"])
def test_a_lone_surrogate_is_400_naming_the_field_not_500(provider, field):
    """JSON may escape a lone UTF-16 surrogate that UTF-8, and so PostgreSQL, cannot hold."""
    m = uid()
    charge = body(m)
    if field == "metadata.msg_id":
        charge["metadata"] = {"msg_id": "m\ud800"}
    else:
        charge[field] = "\ud800ab" if field == "currency" else "c\ud800"
    raw = json.dumps(charge).encode()  # ensure_ascii: the surrogate travels as the escape \\ud800
    response = httpx.post(f"{provider.url}/v1/charges", content=raw,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field
    assert ledger_count(provider, m) == 0


def test_the_largest_amount_stripe_accepts_is_charged(provider):
    m = uid()
    response = post(provider, {**body(m), "amount": 99_999_999})
    assert response.status_code == 200 and response.json()["amount"] == 99_999_999
    assert ledger_count(provider, m) == 1


def test_a_body_that_is_not_json_is_400(provider):
    response = httpx.post(f"{provider.url}/v1/charges", content=b"{nope",
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "body"


def test_a_body_not_sent_as_json_is_415_naming_the_content_type(provider):
    m = uid()
    response = httpx.post(f"{provider.url}/v1/charges", content=json.dumps(body(m)).encode(), headers=AUTH)
    assert response.status_code == 415 and response.json()["error"]["param"] == "Content-Type"
    assert ledger_count(provider, m) == 0


def test_without_a_key_every_request_moves_money(provider):
    m = uid()
    first, second = post(provider, body(m)), post(provider, body(m))
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] != second.json()["id"]
    assert "Idempotent-Replayed" not in second.headers
    assert ledger_count(provider, m) == 2


def test_the_same_key_replays_the_stored_response_and_moves_no_money(provider):
    m = uid()
    first = post(provider, body(m), key=f"k-{m}")
    again = post(provider, body(m), key=f"k-{m}")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["id"].startswith("ch_")
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert ledger_count(provider, m) == 1
    with psycopg.connect(provider.dsn) as conn:
        row = conn.execute("SELECT charge_id, idempotency_key, amount FROM ledger WHERE msg_id = %s", (m,)).fetchone()
        state = conn.execute("SELECT state, status_code FROM idempotency_keys WHERE key = %s", (f"k-{m}",)).fetchone()
    assert row == (first.json()["id"], f"k-{m}", 1250)
    assert state == ("done", 200)


def test_the_same_key_with_other_parameters_is_an_idempotency_error(provider):
    m = uid()
    assert post(provider, body(m), key=f"k-{m}").status_code == 200
    response = post(provider, body(m, amount=9999), key=f"k-{m}")
    assert response.status_code == 400 and response.json()["error"]["type"] == "idempotency_error"
    assert ledger_count(provider, m) == 1


def test_keys_longer_than_255_characters_are_refused(provider):
    m = uid()
    assert post(provider, body(m), key="k" * 256).status_code == 400
    assert post(provider, body(m), key="k" * 256).json()["error"]["param"] == "Idempotency-Key"
    assert ledger_count(provider, m) == 0
    assert post(provider, body(m), key=m + "k" * (255 - len(m))).status_code == 200
    assert ledger_count(provider, m) == 1


def test_two_concurrent_requests_with_one_key_one_gets_409(faults_reset):
    provider = faults_reset
    provider.set_faults(latency_ms=400)  # keeps the first request in flight long enough
    m = uid()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, provider, body(m), f"k-{m}")
        time.sleep(0.1)
        second = pool.submit(post, provider, body(m), f"k-{m}")
        statuses = sorted([first.result().status_code, second.result().status_code])
    assert statuses == [200, 409]
    loser = second.result() if second.result().status_code == 409 else first.result()
    assert loser.json()["error"]["code"] == "idempotency_key_in_use"
    assert loser.json()["error"]["type"] == "invalid_request_error"
    assert ledger_count(provider, m) == 1
    # Once the first has finished, the same key replays it.
    assert post(provider, body(m), key=f"k-{m}").headers.get("Idempotent-Replayed") == "true"


def test_fail_after_charge_moves_money_and_the_key_replays_the_500(faults_reset):
    """Stripe keeps what it sent under the key, a 500 too: the retry gets the 500, and only the ledger knows."""
    provider = faults_reset
    provider.set_faults(fail_after_charge=1.0)
    m = uid()
    first = post(provider, body(m), key=f"k-{m}")
    assert first.status_code == 500
    assert ledger_count(provider, m) == 1, "the money moved although the client saw a 500"
    provider.set_faults(fail_after_charge=0)
    retry = post(provider, body(m), key=f"k-{m}")
    assert retry.status_code == 500 and retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.json() == first.json()
    assert ledger_count(provider, m) == 1
    listed = httpx.get(f"{provider.url}/v1/charges", params={"msg_id": m}, headers=AUTH)
    assert [(d["msg_id"], d["idempotency_key"]) for d in listed.json()["data"]] == [(m, f"k-{m}")]


def test_fail_after_charge_drop_with_a_key_replays_the_stored_200(faults_reset):
    provider = faults_reset
    provider.set_faults(fail_after_charge=1.0, fail_after_charge_mode="drop")
    m = uid()
    with pytest.raises(httpx.TransportError):
        post(provider, body(m), key=f"k-{m}")
    provider.set_faults(fail_after_charge=0)
    retry = post(provider, body(m), key=f"k-{m}")
    assert retry.status_code == 200 and retry.headers.get("Idempotent-Replayed") == "true"
    assert ledger_count(provider, m) == 1


def test_fail_after_charge_can_drop_the_connection_and_without_a_key_the_retry_charges_again(faults_reset):
    provider = faults_reset
    provider.set_faults(fail_after_charge=1.0, fail_after_charge_mode="drop")
    m = uid()
    with pytest.raises(httpx.TransportError):
        post(provider, body(m))
    provider.set_faults(fail_after_charge=0)
    assert post(provider, body(m)).status_code == 200
    assert ledger_count(provider, m) == 2, "a retry without a key is a second charge"


def test_a_5xx_is_stored_under_the_key_and_replayed(faults_reset):
    provider = faults_reset
    provider.set_faults(fail_before_charge=1.0)
    m = uid()
    first = post(provider, body(m), key=f"k-{m}")
    assert first.status_code == 500 and ledger_count(provider, m) == 0
    provider.set_faults(fail_before_charge=0)
    again = post(provider, body(m), key=f"k-{m}")
    assert again.status_code == 500 and again.headers.get("Idempotent-Replayed") == "true"
    assert ledger_count(provider, m) == 0


def test_the_rate_limit_answers_429(faults_reset):
    provider = faults_reset
    provider.set_faults(rate_limit_per_second=3)
    m = uid()
    # Twelve at once, so that they arrive within the limiter's one-second window even on a busy machine.
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda i: post(provider, body(m), key=f"k-{m}-{i}").status_code, range(12)))
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1 and statuses.count(200) >= 3, statuses
    assert ledger_count(provider, m) == statuses.count(200)


def test_faults_are_validated(provider):
    response = httpx.post(f"{provider.url}/admin/faults", json={"fail_after_charge": 3}, headers=AUTH)
    assert response.status_code == 400 and response.json()["error"]["param"] == "fail_after_charge"
    response = httpx.post(f"{provider.url}/admin/faults", json={"explode": 1}, headers=AUTH)
    assert response.status_code == 400 and response.json()["error"]["param"] == "explode"
    assert "unknown parameter: explode" in response.json()["error"]["message"]
    assert httpx.post(f"{provider.url}/admin/faults", json={}).status_code == 401


@pytest.mark.parametrize("value", ["", "m\x00x", "m" * 501])
def test_list_charges_answers_400_naming_a_bad_msg_id_filter(provider, value):
    response = httpx.get(f"{provider.url}/v1/charges", params={"msg_id": value}, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "msg_id"


def test_list_charges_by_msg_id(provider):
    m = uid()
    post(provider, body(m))
    post(provider, body(m))
    data = httpx.get(f"{provider.url}/v1/charges", params={"msg_id": m}, headers=AUTH).json()["data"]
    assert [d["msg_id"] for d in data] == [m, m] and len({d["id"] for d in data}) == 2


def test_a_key_past_its_ttl_counts_as_new(stack):
    run = stack_mod.new_run_id()
    dsn = stack.create_database(f"provider_ttl_{run}")
    try:
        with ProviderProcess(dsn, key_ttl_seconds=1) as provider:
            m = uid()
            assert post(provider, body(m), key=f"k-{m}").status_code == 200
            assert post(provider, body(m), key=f"k-{m}").headers.get("Idempotent-Replayed") == "true"
            time.sleep(1.3)
            late = post(provider, body(m), key=f"k-{m}")
            assert late.status_code == 200 and "Idempotent-Replayed" not in late.headers
            assert ledger_count(provider, m) == 2, "after the TTL the same key moves money again"
            # expire_keys() ages keys the same way without waiting.
            assert post(provider, body(m), key=f"k-{m}").headers.get("Idempotent-Replayed") == "true"
            provider.set_faults(key_ttl_seconds=3600)
            assert provider.expire_keys() >= 1
            assert "Idempotent-Replayed" not in post(provider, body(m), key=f"k-{m}").headers
            assert ledger_count(provider, m) == 3
    finally:
        stack.drop_database(f"provider_ttl_{run}")


