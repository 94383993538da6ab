"""The provider's contract document and its fast validator, without a server."""

from __future__ import annotations

from effectively_once.payments.contract import MAX_AMOUNT, OPENAPI


# -- the document itself, no services ---------------------------------------------------------
def test_the_document_is_openapi_3_1_that_schemathesis_loads_and_covers_every_route():
    import schemathesis

    schema = schemathesis.openapi.from_dict(OPENAPI)
    operations = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert OPENAPI["openapi"] == "3.1.0"
    assert operations == {("POST", "/v1/charges"), ("GET", "/v1/charges"), ("GET", "/v1/charges/{id}"),
                          ("GET", "/v1/charges/search"), ("POST", "/v1/payment_intents"),
                          ("GET", "/v1/payment_intents/{id}"), ("POST", "/v1/payment_intents/{id}/confirm"),
                          ("GET", "/v1/payment_intents/search"), ("GET", "/v1/events"), ("GET", "/v1/events/{id}"),
                          ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/admin/faults"),
                          ("POST", "/admin/faults"), ("POST", "/admin/expire-keys")}
    amount = OPENAPI["components"]["schemas"]["ChargeRequest"]["properties"]["amount"]
    assert (amount["minimum"], amount["maximum"]) == (1, MAX_AMOUNT) == (1, 99_999_999)


# -- the fast validator and the authority agree --------------------------------------------------
def test_the_fast_validator_never_accepts_what_jsonschema_refuses():
    """``fastjsonschema`` only ever says yes on the hot path: it must never pass a body ``jsonschema`` refuses."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from effectively_once.payments import contract

    fast, authority = contract._cached("schema:ChargeRequest", OPENAPI["components"]["schemas"]["ChargeRequest"])
    text = st.text(max_size=6) | st.sampled_from(["usd", "EUR", "usd\n", "a\x00", "\ud800ab", "m" * 41])
    scalars = st.none() | st.booleans() | st.integers(-2, 10**9) | st.floats(allow_nan=False) | text
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner,
                                                                                               max_size=3),
                          max_leaves=6)
    bodies = st.fixed_dictionaries({}, optional={"amount": values | st.integers(-1, 10**8 + 1), "currency": values,
                                                 "customer": values, "metadata": values, "extra": values})

    @settings(max_examples=300, deadline=None, database=None)
    @given(body=bodies)
    def agree(body):
        try:
            fast(body)
        except contract.fastjsonschema.JsonSchemaException:
            return
        assert authority().is_valid(body), body

    agree()
