"""The official Stripe SDK, unmodified, against the real provider process: create, replay, errors, retries, Search,
Events.

Every call here is the SDK's own (``stripe.StripeClient`` with ``base_addresses``, or the module-level
``stripe.api_base``): form-encoded bodies, its own Idempotency-Key on every POST, its own retry rules, its own
mapping of errors to exceptions. The ledger is read from the provider's database to see whether money moved.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import httpx
import psycopg
import pytest
import stripe

from effectively_once import stack as stack_mod
from effectively_once.payments import form
from effectively_once.payments.messages import DEFAULT_API_KEY
from effectively_once.payments.provider import Faults

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


class CountingHTTPClient(stripe.RequestsClient):
    """The SDK's default HTTP client, counting the requests the SDK makes through it (its retries included)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def request(self, method, url, headers, post_data=None):
        with self._lock:
            self.sent.append((method, url))
        return super().request(method, url, headers, post_data)


@pytest.fixture
def faults(provider):
    """The provider, its fault knobs back at their defaults after the test."""
    yield provider
    provider.set_faults(**asdict(Faults()))


def sdk(provider, retries: int = 0, http_client: stripe.HTTPClient | None = None,
        api_key: str = DEFAULT_API_KEY) -> stripe.StripeClient:
    """A StripeClient pointed at the provider."""
    return stripe.StripeClient(api_key, base_addresses={"api": provider.url}, max_network_retries=retries,
                               http_client=http_client)


def msg() -> str:
    return f"m-{stack_mod.new_run_id()}"


def intent(msg_id: str, **change) -> dict:
    return {"amount": 1250, "currency": "usd", "metadata": {"msg_id": msg_id}, "payment_method": "pm_card_visa",
            "confirm": True, **change}


def ledger(provider, msg_id: str) -> list[tuple]:
    with psycopg.connect(provider.dsn) as conn:
        return conn.execute("SELECT charge_id, payment_intent, idempotency_key FROM ledger WHERE msg_id = %s"
                            " ORDER BY created_at", (msg_id,)).fetchall()


# -- create, and the replay ---------------------------------------------------------------------
def test_a_payment_intent_created_and_confirmed_is_replayed_under_its_key_with_the_same_id(provider):
    client, m = sdk(provider), msg()
    first = client.v1.payment_intents.create(params=intent(m), options={"idempotency_key": f"pi-{m}"})
    again = client.v1.payment_intents.create(params=intent(m), options={"idempotency_key": f"pi-{m}"})
    assert isinstance(first, stripe.PaymentIntent) and first.id.startswith("pi_")
    assert (first.object, first.status, first.livemode, first.amount, first.currency) == (
        "payment_intent", "succeeded", False, 1250, "usd")
    assert isinstance(first.created, int) and abs(first.created - time.time()) < 120
    assert first.latest_charge.startswith("ch_") and first.metadata["msg_id"] == m
    assert again.id == first.id and again.latest_charge == first.latest_charge
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert ledger(provider, m) == [(first.latest_charge, first.id, f"pi-{m}")], "the money moved once"


def test_the_module_level_api_with_stripe_api_base_works_too(provider, monkeypatch):
    monkeypatch.setattr(stripe, "api_key", DEFAULT_API_KEY)
    monkeypatch.setattr(stripe, "api_base", provider.url)
    m = msg()
    created = stripe.PaymentIntent.create(amount=500, currency="usd", metadata={"msg_id": m}, idempotency_key=m)
    assert created.status == "requires_payment_method" and ledger(provider, m) == []
    confirmed = stripe.PaymentIntent.confirm(created.id, payment_method="pm_card_visa")
    assert confirmed.status == "succeeded" and stripe.PaymentIntent.retrieve(created.id).status == "succeeded"
    charge = stripe.Charge.retrieve(confirmed.latest_charge)
    assert (charge.object, charge.status, charge.paid, charge.payment_intent) == ("charge", "succeeded", True,
                                                                                   created.id)
    assert [row[0] for row in ledger(provider, m)] == [charge.id]


def test_the_legacy_charges_api_through_the_sdk_and_its_replay(provider):
    client, m = sdk(provider), msg()
    params = {"amount": 700, "currency": "usd", "source": "tok_visa", "metadata": {"msg_id": m}}
    first = client.v1.charges.create(params=params, options={"idempotency_key": f"ch-{m}"})
    again = client.v1.charges.create(params=params, options={"idempotency_key": f"ch-{m}"})
    assert isinstance(first, stripe.Charge) and first.status == "succeeded" and again.id == first.id
    assert client.v1.charges.retrieve(first.id).amount == 700
    assert ledger(provider, m) == [(first.id, None, f"ch-{m}")]


def test_two_calls_without_a_key_of_ours_are_two_charges_the_sdks_own_key_covers_one_call_only(provider):
    """The SDK adds a random Idempotency-Key to each POST: a second call is a second key, and a second charge."""
    client, m = sdk(provider), msg()
    first = client.v1.payment_intents.create(params=intent(m))
    second = client.v1.payment_intents.create(params=intent(m))
    assert first.id != second.id
    keys = [row[2] for row in ledger(provider, m)]
    assert len(keys) == 2 and len(set(keys)) == 2 and all(len(key) == 36 for key in keys), keys  # two UUID4s


# -- errors, as the SDK raises them ----------------------------------------------------------------
def test_a_key_reused_with_other_parameters_is_an_idempotency_error(provider):
    client, m = sdk(provider), msg()
    client.v1.payment_intents.create(params=intent(m), options={"idempotency_key": f"pi-{m}"})
    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.payment_intents.create(params=intent(m, amount=9999), options={"idempotency_key": f"pi-{m}"})
    assert caught.value.http_status == 400 and caught.value.error.type == "idempotency_error"
    with pytest.raises(stripe.IdempotencyError):  # the same key on another route is another request too
        client.v1.charges.create(params={"amount": 1250, "currency": "usd", "source": "tok_visa"},
                                 options={"idempotency_key": f"pi-{m}"})
    assert len(ledger(provider, m)) == 1


@pytest.mark.parametrize("change,param", [
    ({"amount": 0}, "amount"), ({"amount": 100_000_000}, "amount"), ({"currency": "dollars"}, "currency"),
    ({"metadata": {"k" * 41: "v"}}, "metadata"), ({"metadata": {"note": "v" * 501}}, "metadata.note"),
    ({"payment_method": "pm_nope"}, "payment_method"), ({"capture": "later"}, "capture"),
    ({"payment_method_types": ["sepa_debit"]}, "payment_method_types.0"),
])
def test_a_bad_parameter_is_an_invalid_request_error_naming_it(provider, change, param):
    client, m = sdk(provider), msg()
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params=intent(m, **change))
    assert caught.value.http_status == 400 and caught.value.param == param, caught.value.user_message
    assert caught.value.error.type == "invalid_request_error"
    assert ledger(provider, m) == []


def test_confirm_true_without_a_payment_method_names_payment_method(provider):
    params = intent(msg())
    del params["payment_method"]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk(provider).v1.payment_intents.create(params=params)
    assert caught.value.param == "payment_method" and caught.value.code == "payment_intent_unexpected_state"


def test_a_declined_card_is_a_card_error_and_the_payment_intent_can_be_paid_with_another_card(provider):
    client, m = sdk(provider), msg()
    created = client.v1.payment_intents.create(params=intent(m, confirm=False, payment_method=None))
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_intents.confirm(created.id, params={"payment_method": "pm_card_chargeDeclined"},
                                          options={"idempotency_key": f"confirm-{m}"})
    error = caught.value
    assert error.http_status == 402 and error.code == "card_declined"
    assert error.error.type == "card_error" and error.error.decline_code == "generic_decline"
    assert error.error.payment_intent.status == "requires_payment_method"
    failed = client.v1.charges.retrieve(error.error.charge)
    assert (failed.status, failed.paid, failed.failure_code, failed.payment_intent) == ("failed", False,
                                                                                         "card_declined", created.id)
    assert ledger(provider, m) == [], "a declined card moves no money"
    # The decline is stored under the key: the same call is the same decline, replayed.
    with pytest.raises(stripe.CardError) as replayed:
        client.v1.payment_intents.confirm(created.id, params={"payment_method": "pm_card_chargeDeclined"},
                                          options={"idempotency_key": f"confirm-{m}"})
    assert replayed.value.headers["Idempotent-Replayed"] == "true"
    assert replayed.value.error.charge == error.error.charge
    # Another card, another key: the PaymentIntent succeeds, once.
    paid = client.v1.payment_intents.confirm(created.id, params={"payment_method": "pm_card_visa"})
    assert paid.status == "succeeded" and paid.last_payment_error is None
    with pytest.raises(stripe.InvalidRequestError) as twice:
        client.v1.payment_intents.confirm(created.id, params={"payment_method": "pm_card_visa"})
    assert twice.value.code == "payment_intent_unexpected_state"
    assert [row[0] for row in ledger(provider, m)] == [paid.latest_charge]


def test_a_wrong_api_key_is_an_authentication_error_and_an_unknown_id_a_404(provider):
    with pytest.raises(stripe.AuthenticationError) as caught:
        sdk(provider, api_key="sk_test_not_the_providers").v1.payment_intents.create(params=intent(msg()))
    assert caught.value.http_status == 401
    with pytest.raises(stripe.InvalidRequestError) as missing:
        sdk(provider).v1.payment_intents.retrieve("pi_doesnotexist")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    assert missing.value.param == "id"


def test_every_answer_carries_a_request_id(provider):
    client = sdk(provider)
    created = client.v1.payment_intents.create(params=intent(msg()))
    assert created.last_response.request_id.startswith("req_")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params=intent(msg(), amount=-1))
    assert caught.value.request_id.startswith("req_") and caught.value.request_id != created.last_response.request_id
    for response in (httpx.get(f"{provider.url}/v1/nothing", headers=AUTH), httpx.get(f"{provider.url}/healthz"),
                     httpx.post(f"{provider.url}/v1/charges", content=b"{", headers=AUTH)):
        assert response.headers["Request-Id"].startswith("req_"), response.status_code


def test_a_rate_limited_call_is_a_rate_limit_error_the_sdk_does_not_retry(faults):
    provider = faults
    counting = CountingHTTPClient()
    client = sdk(provider, retries=3, http_client=counting)
    provider.set_faults(rate_limit_per_second=1)
    calls = 0
    with pytest.raises(stripe.RateLimitError) as caught:
        for calls in range(1, 11):  # noqa: B007 - the count is read after the loop
            with contextlib.suppress(stripe.InvalidRequestError):  # a 404: pi_0 does not exist
                client.v1.payment_intents.retrieve("pi_0")
    assert caught.value.http_status == 429 and caught.value.error.code == "rate_limit"
    # No Stripe-Should-Retry on a rate limit: the SDK's _should_retry does not retry a 429 without it.
    assert "Stripe-Should-Retry" not in caught.value.headers
    assert len(counting.sent) == calls, "one request per call: no retry of the 429"


# -- in flight, and the 500 that replays ---------------------------------------------------------
def test_the_same_key_while_the_first_call_is_in_flight_is_a_409_and_the_sdk_retries_it_into_the_replay(faults):
    provider = faults
    m = msg()
    provider.set_faults(stall_next_ms=2500)  # the first call holds its key for 2.5 s
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(sdk(provider).v1.payment_intents.create, params=intent(m),
                            options={"idempotency_key": f"pi-{m}"})
        time.sleep(0.8)
        with pytest.raises(stripe.APIError) as in_use:  # no retries: the SDK raises the 409
            sdk(provider).v1.payment_intents.create(params=intent(m), options={"idempotency_key": f"pi-{m}"})
        counting = CountingHTTPClient()
        patient = pool.submit(sdk(provider, retries=6, http_client=counting).v1.payment_intents.create,
                              params=intent(m), options={"idempotency_key": f"pi-{m}"})
        owner, retried = first.result(timeout=60), patient.result(timeout=60)
    assert in_use.value.http_status == 409 and in_use.value.error.code == "idempotency_key_in_use"
    assert in_use.value.error.type == "invalid_request_error"
    assert in_use.value.headers["Stripe-Should-Retry"] == "true"
    # The patient client met the 409, retried with backoff, and got the first call's answer replayed.
    assert retried.id == owner.id and retried.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(counting.sent) >= 2
    assert len(ledger(provider, m)) == 1


@pytest.mark.parametrize("fault", ["fail_after_charge", "fail_before_charge"])
def test_a_500_stored_under_the_key_is_not_retried_again_and_again_and_the_payment_intent_tells_the_truth(
        faults, fault):
    provider = faults
    counting = CountingHTTPClient()
    client, m = sdk(provider, retries=5, http_client=counting), msg()
    created = client.v1.payment_intents.create(params=intent(m, confirm=False))
    provider.set_faults(**{fault: 1.0})
    with pytest.raises(stripe.APIError) as first:
        client.v1.payment_intents.confirm(created.id, options={"idempotency_key": f"confirm-{m}"})
    provider.set_faults(**{fault: 0.0})
    with pytest.raises(stripe.APIError) as again:
        client.v1.payment_intents.confirm(created.id, options={"idempotency_key": f"confirm-{m}"})
    assert first.value.http_status == again.value.http_status == 500
    assert first.value.error.type == "api_error"
    assert first.value.headers["Stripe-Should-Retry"] == "false"
    assert again.value.headers["Idempotent-Replayed"] == "true"
    confirms = [url for method, url in counting.sent if url.endswith("/confirm")]
    assert len(confirms) == 2, f"max_network_retries=5, yet one request per call: {counting.sent}"
    # The 500 says nothing; the PaymentIntent, retrieved by id, says whether the money moved.
    now = client.v1.payment_intents.retrieve(created.id)
    if fault == "fail_after_charge":
        assert now.status == "succeeded" and [r[0] for r in ledger(provider, m)] == [now.latest_charge]
    else:
        assert now.status == "requires_confirmation" and now.latest_charge is None and ledger(provider, m) == []


# -- Search: eventually consistent ----------------------------------------------------------------
def test_search_finds_an_object_only_after_the_index_delay_and_retrieve_at_once(faults):
    provider = faults
    provider.set_faults(search_delay_ms=2000)
    client, m = sdk(provider), msg()
    query = f"metadata['msg_id']:'{m}'"
    created_at = time.monotonic()
    created = client.v1.payment_intents.create(params=intent(m))
    assert client.v1.payment_intents.search(params={"query": query}).data == []
    assert client.v1.charges.search(params={"query": query}).data == []
    assert client.v1.payment_intents.retrieve(created.id).status == "succeeded", "retrieve by id is consistent"
    while not (found := client.v1.payment_intents.search(params={"query": query}).data):
        assert time.monotonic() - created_at < 30, "the PaymentIntent never became searchable"
        time.sleep(0.1)
    assert time.monotonic() - created_at >= 2.0
    assert [pi.id for pi in found] == [created.id] and found[0].status == "succeeded"
    charges = client.v1.charges.search(params={"query": f'metadata["msg_id"]:"{m}" AND status:"succeeded"'}).data
    assert [c.id for c in charges] == [created.latest_charge]


def test_search_shows_an_object_as_it_was_before_its_last_change(faults):
    provider = faults
    provider.set_faults(search_delay_ms=2000)
    client, m = sdk(provider), msg()
    query = f"metadata['msg_id']:'{m}'"
    created = client.v1.payment_intents.create(params=intent(m, confirm=False))
    deadline = time.monotonic() + 30
    while not client.v1.payment_intents.search(params={"query": query}).data:
        assert time.monotonic() < deadline, "the PaymentIntent never became searchable"
        time.sleep(0.1)
    client.v1.payment_intents.confirm(created.id)
    stale = client.v1.payment_intents.search(params={"query": query}).data
    assert [pi.status for pi in stale] == ["requires_confirmation"], "Search still shows it before the confirm"
    assert client.v1.payment_intents.retrieve(created.id).status == "succeeded"
    while client.v1.payment_intents.search(params={"query": query}).data[0].status != "succeeded":
        assert time.monotonic() < deadline + 30, "the confirm never reached Search"
        time.sleep(0.1)


def test_search_query_syntax_and_pagination(faults):
    provider = faults
    provider.set_faults(search_delay_ms=0)
    client, m = sdk(provider), msg()
    ids = {client.v1.payment_intents.create(params=intent(m, amount=100 + i, confirm=False)).id for i in range(3)}
    page = client.v1.payment_intents.search(params={"query": f"metadata['msg_id']:'{m}' AND amount>=101",
                                                    "limit": 1})
    assert page.object == "search_result" and len(page.data) == 1 and page.has_more and page.next_page
    rest = client.v1.payment_intents.search(params={"query": f"metadata['msg_id']:'{m}' AND amount>=101",
                                                    "limit": 1, "page": page.next_page})
    assert {page.data[0].id, rest.data[0].id} < ids and {page.data[0].amount, rest.data[0].amount} == {101, 102}
    assert not rest.has_more and rest.next_page is None
    none = client.v1.payment_intents.search(params={"query": f"metadata['msg_id']:'{m}' AND -currency:'usd'"})
    assert none.data == []
    for bad in ("metadata['msg_id']", "colour:'red'", "amount:'lots'", f"metadata['msg_id']:'{m}' AND status:'x'"
                " OR amount>1", "status~'succ'"):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            client.v1.payment_intents.search(params={"query": bad})
        assert caught.value.param == "query", bad


# -- Events ---------------------------------------------------------------------------------------
def test_events_are_listed_newest_first_and_retrieved_by_id(provider):
    client, m = sdk(provider), msg()
    paid = client.v1.payment_intents.create(params=intent(m))
    events = client.v1.events.list(params={"limit": 100}).data
    mine = [e for e in events if e.data.object.id in (paid.id, paid.latest_charge)]
    assert [e.type for e in mine] == ["payment_intent.succeeded", "charge.succeeded", "payment_intent.created"]
    assert all(isinstance(e, stripe.Event) and e.id.startswith("evt_") and e.livemode is False for e in mine)
    assert mine[0].data.object.status == "succeeded" and mine[2].data.object.status == "requires_confirmation"
    assert mine[0].request.idempotency_key is not None  # the SDK's own key, recorded with the event
    assert client.v1.events.retrieve(mine[1].id).data.object.id == paid.latest_charge
    only = client.v1.events.list(params={"type": "charge.succeeded", "limit": 2})
    assert {e.type for e in only.data} == {"charge.succeeded"}
    after = client.v1.events.list(params={"limit": 1, "starting_after": mine[0].id}).data
    assert after and after[0].id == mine[1].id
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.events.retrieve("evt_missing")
    assert missing.value.http_status == 404


# -- the two body encodings are one request -------------------------------------------------------
def test_a_form_encoded_body_and_the_same_json_body_are_the_same_request(provider):
    m = msg()
    params = intent(m)
    key = {"Idempotency-Key": f"pi-{m}"}
    as_form = httpx.post(f"{provider.url}/v1/payment_intents", content=form.encode(params),
                         headers={**AUTH, **key, "Content-Type": form.FORM})
    as_json = httpx.post(f"{provider.url}/v1/payment_intents", json=params, headers={**AUTH, **key})
    assert as_form.status_code == as_json.status_code == 200
    assert as_json.headers["Idempotent-Replayed"] == "true" and as_json.json()["id"] == as_form.json()["id"]
    assert len(ledger(provider, m)) == 1
