"""The provider's route handlers called directly, without a server or HTTP, on a real PostgreSQL database.

The pure decisions (validation, the idempotency key) are tested in tests/unit/test_provider_handlers.py,
which also builds the requests these tests hand to the handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from starlette.requests import Request
from starlette.responses import Response

from effectively_once import stack as stack_mod
from effectively_once.payments.messages import REPLAY_HEADER
from effectively_once.payments.provider import (
    Faults,
    Provider,
    fingerprint,
    validate_charge,
)
from tests.unit.test_provider_handlers import charge, error_of, payload, request


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


@pytest.mark.parametrize("change,field", [({"amount": -5}, "amount"), ({"currency": 840}, "currency"),
                                          ({"metadata": {"msg_id": ""}}, "metadata.msg_id")])
def test_create_charge_answers_400_naming_the_field_and_moves_no_money(provider_dsn, change, field):
    msg_id = new_msg_id()

    async def scenario(provider: Provider):
        return await provider.create_charge(keyed(msg_id, **change))

    response = with_provider(provider_dsn, scenario)
    assert response.status_code == 400 and error_of(response)["param"] == field
    assert ledger_rows(provider_dsn, msg_id) == []


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


def test_claim_owns_a_new_key_and_answers_409_while_it_is_in_flight(provider_dsn):
    key, owned, second = claim_twice(provider_dsn)
    assert owned is None
    assert second.status_code == 409 and error_of(second)["code"] == "idempotency_key_in_use"
    with psycopg.connect(provider_dsn) as conn:
        assert conn.execute("SELECT state FROM idempotency_keys WHERE key = %s", (key,)).fetchone() == ("in_flight",)


def test_a_key_left_in_flight_past_the_timeout_is_taken_over(provider_dsn):
    _key, owned, taken_over = claim_twice(provider_dsn, pause=0.2, in_flight_timeout=0.1)
    assert owned is None and taken_over is None


def test_every_route_refuses_a_wrong_api_key(provider_dsn):
    wrong = {"Authorization": "Bearer wrong"}

    async def scenario(provider: Provider):
        return [await provider.create_charge(request(body=charge(), headers=wrong)),
                await provider.list_charges(request("GET", headers=wrong)),
                await provider.admin_faults(request("GET", "/admin/faults", headers=wrong)),
                await provider.admin_expire_keys(request(path="/admin/expire-keys", headers=wrong))]

    for response in with_provider(provider_dsn, scenario):
        # Stripe's type for a bad key is invalid_request_error; the SDK raises AuthenticationError on the 401.
        assert response.status_code == 401 and error_of(response)["type"] == "invalid_request_error"


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


def test_fail_before_charge_stores_the_500_under_the_key_and_list_charges_shows_no_money(provider_dsn):
    failed, replayed, listed = fail_then_retry(provider_dsn, new_msg_id(), "fail_before_charge")
    assert failed.status_code == 500 and replayed.status_code == 500
    assert replayed.headers[REPLAY_HEADER] == "true"
    assert payload(listed) == {"object": "list", "data": [], "has_more": False, "url": "/v1/charges"}


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


@pytest.mark.parametrize("query", ["msg_id=", "msg_id=m%00x", "msg_id=" + "m" * 501])
def test_list_charges_answers_400_naming_msg_id_for_a_value_the_ledger_cannot_hold(provider_dsn, query):
    async def scenario(provider: Provider):
        return await provider.list_charges(request("GET", query=query))

    response = with_provider(provider_dsn, scenario)
    assert response.status_code == 400, payload(response)
    assert error_of(response)["type"] == "invalid_request_error" and error_of(response)["param"] == "msg_id"
