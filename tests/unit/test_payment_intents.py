"""The PaymentIntent path without services: the expected crash matrix of each path, the api setting, and what an
answer from the provider says about the money. The path on the real stack is in tests/integration/."""

from __future__ import annotations

import pytest

from effectively_once.payments.client import ChargeFailed, KeySpent
from effectively_once.payments.consumer_settings import CHARGES_STEP, DEFAULT_STEP, ConsumerSettings
from effectively_once.payments.lab import LAYER_SETS
from effectively_once.payments.matrix import CHARGED_ONCE, CHARGED_TWICE, LOST, expected_outcome
from effectively_once.protocol import CRASH_POINTS, INTENT_CRASH_POINTS


def test_the_expected_matrix_of_the_charges_path_is_the_recipes():
    """The one-shot path: the recipe's three traps, exactly where notebook 04 shows them."""
    got = {(p, s): expected_outcome("charges", p, s) for p in CRASH_POINTS for s in LAYER_SETS}
    wrong = {k: v for k, v in got.items() if v != CHARGED_ONCE}
    assert wrong == {("after_dedup_insert", "dedup_as_written"): LOST,
                     ("after_provider_call", "dedup_only"): CHARGED_TWICE,
                     ("after_provider_call", "none"): CHARGED_TWICE,
                     ("after_status_update", "none"): CHARGED_TWICE}
    late = {(p, s): expected_outcome("charges", p, s, keys_expired=True)
            for p in ("after_provider_call", "after_status_update") for s in ("both", "idempotency_key_only")}
    assert late == {("after_provider_call", "both"): CHARGED_TWICE,
                    ("after_provider_call", "idempotency_key_only"): CHARGED_TWICE,
                    ("after_status_update", "both"): CHARGED_ONCE,
                    ("after_status_update", "idempotency_key_only"): CHARGED_TWICE}


def test_the_expected_matrix_of_the_payment_intent_path_closes_the_dedup_tables_window():
    got = {(p, s): expected_outcome("payment_intents", p, s) for p in INTENT_CRASH_POINTS for s in LAYER_SETS}
    wrong = {k: v for k, v in got.items() if v != CHARGED_ONCE}
    assert wrong == {("after_dedup_insert", "dedup_as_written"): LOST,
                     ("after_intent_created", "dedup_as_written"): LOST,
                     ("after_intent_stored", "dedup_as_written"): LOST,
                     ("after_provider_call", "none"): CHARGED_TWICE,
                     ("after_status_update", "none"): CHARGED_TWICE}
    # The stored id outlives the key: with the dedup row, a day-late redelivery is still charged once.
    assert expected_outcome("payment_intents", "after_provider_call", "both", keys_expired=True) == CHARGED_ONCE
    assert expected_outcome("payment_intents", "after_provider_call", "idempotency_key_only",
                            keys_expired=True) == CHARGED_TWICE
    with pytest.raises(ValueError, match="the charges path has no crash point 'after_intent_created'"):
        expected_outcome("charges", "after_intent_created", "both")


def test_the_api_setting_picks_the_default_step_and_refuses_another_api():
    base = dict(bootstrap="b:9092", topic="t", group="g", shop_dsn="postgresql://x", provider_url="http://p")
    assert ConsumerSettings(**base).step_spec == DEFAULT_STEP
    assert ConsumerSettings(**base, api="charges").step_spec == CHARGES_STEP
    assert "--api=charges" in ConsumerSettings(**base, api="charges").to_argv()
    assert ConsumerSettings.from_argv(ConsumerSettings(**base, api="charges").to_argv()).api == "charges"
    with pytest.raises(ValueError, match="api: must be one of payment_intents, charges"):
        ConsumerSettings(**base, api="sources")


def test_what_an_answer_says_about_the_money():
    assert KeySpent("stored 500", 500).indeterminate
    assert ChargeFailed("retries_exhausted", "timed out", None).indeterminate
    assert ChargeFailed("retries_exhausted", "409 in flight", 409).indeterminate
    assert not ChargeFailed("retries_exhausted", "rate limited", 429).indeterminate, "a 429 never began executing"
    assert not ChargeFailed("rejected", "card declined", 402, code="card_declined").indeterminate


class _RetryingProvider:
    """A stand-in provider whose every call needed ``create`` and ``confirm`` retries (a provider down a moment)."""

    def __init__(self, create: int, confirm: int) -> None:
        self.create, self.confirm = create, confirm

    def create_intent(self, msg, idempotency_key=None):
        from effectively_once.payments.client import IntentResult
        return IntentResult(f"pi_{msg.msg_id}", "requires_confirmation", False, self.create)

    def confirm_intent(self, msg, intent_id, idempotency_key=None):
        from effectively_once.payments.client import ChargeResult
        return ChargeResult(f"ch_{msg.msg_id}", False, self.confirm, 40.0, payment_intent=intent_id)


@pytest.mark.parametrize(("create", "confirm"), [(3, 0), (0, 2), (1, 4)])
def test_a_messages_retries_count_both_calls_of_the_payment_intent_path(create, confirm):
    """A provider that died between the create and the confirm is retried on the create: those retries count too
    (consumer_events.retries, the faults test's proof that a call was in flight)."""
    from effectively_once.payments.messages import ChargeMessage
    from effectively_once.payments.steps import StepContext, process_batch, process_message

    ctx = StepContext(None, _RetryingProvider(create, confirm), ["idempotency_key"])  # type: ignore[arg-type]
    msgs = [ChargeMessage(f"m{i}", "cus_1", 100 + i, "usd") for i in range(3)]
    one = process_message(ctx, msgs[0])
    assert (one.result, one.charge_id, one.retries) == ("charged", "ch_m0", create + confirm)
    batch = process_batch(ctx, msgs)
    assert [(o.charge_id, o.retries) for o in batch] == [(f"ch_{m.msg_id}", create + confirm) for m in msgs]
