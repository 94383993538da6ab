"""Stripe's wire format on the provider's side: form bodies with bracket nesting, the search query language, the
webhook signature; and the form-encoded API fuzzed against the real process.

The unit tests compare with the official SDK's own encoder and verifier, so "as the SDK does" is checked, not
assumed.
"""

from __future__ import annotations

import json
import time

import psycopg
import stripe

from effectively_once.payments import form
from effectively_once.payments.contract import PG_TEXT
from effectively_once.payments.messages import DEFAULT_API_KEY, REPLAY_HEADER

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


# -- the form-encoded API, fuzzed -------------------------------------------------------------
FUZZ_REQUESTS = 250


FUZZ_SECONDS = 60.0


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
