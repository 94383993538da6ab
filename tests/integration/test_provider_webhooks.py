"""The provider's webhooks, received by a small real HTTP endpoint and verified with the official SDK.

The provider process runs with ``--webhook-url`` pointing at a ``ThreadingHTTPServer`` in this test, and
``--webhook-secret``; every delivery that arrives is recorded with its raw body and headers. The endpoint
answers as each test tells it to (a 500, a slow answer), to make the provider send again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
import stripe

from effectively_once import stack as stack_mod
from effectively_once.observe import metrics as names
from effectively_once.observe.scrape import Recorder
from effectively_once.payments.children import ProviderProcess
from effectively_once.payments.messages import DEFAULT_API_KEY
from effectively_once.payments.provider import Faults

SECRET = "whsec_effectively_once_test_endpoint"


@dataclass(frozen=True)
class Delivery:
    """One POST the endpoint received."""

    event_id: str
    event_type: str
    object_id: str
    payload: bytes
    signature: str
    user_agent: str
    received: float  # time.time()


class Endpoint:
    """A webhook endpoint: records every delivery; ``answer(delivery, nth)`` says what to reply (status, delay)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        self.answer: Callable[[Delivery, int], tuple[int, float]] = lambda delivery, nth: (200, 0.0)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                payload = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event = json.loads(payload)
                delivery = Delivery(event["id"], event["type"], event["data"]["object"]["id"], payload,
                                    self.headers.get("Stripe-Signature", ""), self.headers.get("User-Agent", ""),
                                    time.time())
                with endpoint.lock:
                    endpoint.deliveries.append(delivery)
                    nth = sum(d.event_id == delivery.event_id for d in endpoint.deliveries)
                status, delay = endpoint.answer(delivery, nth)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the provider gave up waiting: that is what a timeout is

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook endpoint", daemon=True)
        self.thread.start()

    def of(self, *object_ids: str) -> list[Delivery]:
        """The deliveries about these objects, in the order they arrived."""
        with self.lock:
            return [d for d in self.deliveries if d.object_id in object_ids]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0, what: str = "the deliveries") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what} did not arrive within {timeout} s: {self.deliveries}"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def endpoint():
    receiver = Endpoint()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def hooked(stack, endpoint):
    """A provider that sends its events to ``endpoint``, on a database of its own."""
    name = f"provider_hooks_{stack_mod.new_run_id()}"
    with ProviderProcess(stack.create_database(name), webhook_url=endpoint.url, webhook_secret=SECRET) as running:
        yield running
    stack.drop_database(name)


@pytest.fixture
def provider(hooked, endpoint):
    """The hooked provider, its knobs and the endpoint's answers back to normal after the test."""
    yield hooked
    endpoint.answer = lambda delivery, nth: (200, 0.0)
    if hooked.running:
        hooked.set_faults(**asdict(Faults()))


def client(provider) -> stripe.StripeClient:
    return stripe.StripeClient(DEFAULT_API_KEY, base_addresses={"api": provider.url}, max_network_retries=0)


def pay(provider, method: str = "pm_card_visa") -> stripe.PaymentIntent:
    """A PaymentIntent created and confirmed; a declined one is returned as the error carries it."""
    try:
        return client(provider).v1.payment_intents.create(params={
            "amount": 1250, "currency": "usd", "payment_method": method, "confirm": True,
            "metadata": {"msg_id": f"m-{stack_mod.new_run_id()}"}})
    except stripe.CardError as declined:
        return declined.error.payment_intent


def metric(provider, name: str, **labels: str) -> float:
    value = provider.metrics().get(name, 0.0, **labels)
    assert value is not None
    return value


def test_every_delivery_verifies_with_the_sdk_and_is_the_event_the_api_has(provider, endpoint):
    paid, declined = pay(provider), pay(provider, "pm_card_chargeDeclined")
    legacy = client(provider).v1.charges.create(params={"amount": 300, "currency": "usd", "source": "tok_visa"})
    ids = (paid.id, paid.latest_charge, declined.id, legacy.id)
    endpoint.wait_for(lambda: len(endpoint.of(*ids)) >= 4)
    got = endpoint.of(*ids)
    assert sorted((d.event_type, d.object_id) for d in got) == sorted([
        ("charge.succeeded", paid.latest_charge), ("payment_intent.succeeded", paid.id),
        ("payment_intent.payment_failed", declined.id), ("charge.succeeded", legacy.id)])
    for delivery in got:
        event = stripe.Webhook.construct_event(delivery.payload, delivery.signature, SECRET)
        assert isinstance(event, stripe.Event) and event.id == delivery.event_id
        assert delivery.signature.startswith("t=") and ",v1=" in delivery.signature
        assert abs(int(delivery.signature[2:].split(",")[0]) - delivery.received) < 60
        assert delivery.user_agent.startswith("Stripe/")
        assert client(provider).v1.events.retrieve(event.id).to_dict() == json.loads(delivery.payload)
    # Events of types the endpoint did not enable are recorded, not sent.
    assert not [d for d in endpoint.deliveries if d.event_type in ("payment_intent.created", "charge.failed")]


def test_a_tampered_payload_a_wrong_secret_and_an_old_timestamp_are_refused_by_the_sdk(provider, endpoint):
    paid = pay(provider)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id)) == 1)
    delivery = endpoint.of(paid.id)[0]
    tampered = delivery.payload.replace(b'"amount": 1250', b'"amount": 1')
    assert tampered != delivery.payload
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, delivery.signature, SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(delivery.payload, delivery.signature, "whsec_someone_else")
    # The signature holds the time it was made: checked later than the tolerance, it is refused as a replay.
    stripe.Webhook.construct_event(delivery.payload, delivery.signature, SECRET, tolerance=300)
    time.sleep(max(0.0, int(delivery.signature[2:].split(",")[0]) + 2.5 - time.time()))
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(delivery.payload, delivery.signature, SECRET, tolerance=1)


def test_a_refused_delivery_comes_back_with_the_same_event_id_and_a_fresh_signature(provider, endpoint):
    provider.set_faults(webhook_retry_ms=300)
    endpoint.answer = lambda delivery, nth: (500 if nth <= 2 else 200, 0.0)
    before = metric(provider, f"{names.WEBHOOK_DELIVERY_RETRIES}_total")
    paid = pay(provider)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id)) == 3)
    tries = endpoint.of(paid.id)
    assert len({d.event_id for d in tries}) == 1 and len({d.payload for d in tries}) == 1
    assert all(stripe.Webhook.construct_event(d.payload, d.signature, SECRET) for d in tries)
    # Backoff: the second retry waited about twice as long as the first (300 ms, then 600 ms).
    gaps = [later.received - earlier.received for earlier, later in zip(tries, tries[1:], strict=False)]
    assert gaps[0] >= 0.25 and gaps[1] >= 0.5, gaps
    assert wait_until_delivered(provider, tries[0].event_id) == ("delivered", 3, 2, 0, 200)
    assert metric(provider, f"{names.WEBHOOK_DELIVERY_RETRIES}_total") >= before + 2
    assert metric(provider, f"{names.WEBHOOK_DELIVERY_FAILURES}_total", reason="refused") >= 2


def delivery_row(provider, event_id: str) -> tuple:
    with psycopg.connect(provider.dsn) as conn:
        return conn.execute("SELECT state, attempts, refused, timed_out, last_status FROM webhook_deliveries"
                            " WHERE event_id = %s", (event_id,)).fetchone()


def wait_until_delivered(provider, event_id: str, timeout: float = 30.0) -> tuple:
    deadline = time.monotonic() + timeout
    while (row := delivery_row(provider, event_id))[0] != "delivered":
        assert time.monotonic() < deadline, f"{event_id} was not delivered: {row}"
        time.sleep(0.1)
    return row


def test_a_delivery_that_times_out_is_sent_again(provider, endpoint):
    provider.set_faults(webhook_timeout_ms=1000, webhook_retry_ms=100)
    endpoint.answer = lambda delivery, nth: (200, 3.0 if nth == 1 else 0.0)
    paid = pay(provider)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id)) >= 2)
    first, second = endpoint.of(paid.id)[:2]
    assert first.event_id == second.event_id and second.received - first.received >= 1.0
    state, attempts, _refused, timed_out, _status = wait_until_delivered(provider, first.event_id)
    assert timed_out >= 1 and attempts == timed_out + 1


def test_the_duplicate_knob_sends_a_delivered_event_again(provider, endpoint):
    provider.set_faults(webhook_duplicate=1.0)
    before = metric(provider, f"{names.WEBHOOK_DUPLICATE_DELIVERIES}_total")
    paid = pay(provider)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id, paid.latest_charge)) == 4)
    got = endpoint.of(paid.id, paid.latest_charge)
    assert sorted(d.event_type for d in got) == ["charge.succeeded"] * 2 + ["payment_intent.succeeded"] * 2
    assert len({d.event_id for d in got}) == 2, "each event twice, with its own id both times"
    assert metric(provider, f"{names.WEBHOOK_DUPLICATE_DELIVERIES}_total") == before + 2


def test_the_out_of_order_knob_sends_events_newest_first(provider, endpoint):
    paid = pay(provider)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id, paid.latest_charge)) == 2)
    assert [d.event_type for d in endpoint.of(paid.id, paid.latest_charge)] == [
        "charge.succeeded", "payment_intent.succeeded"], "in order without the knob"
    provider.set_faults(webhook_out_of_order=1.0)
    paid = pay(provider)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id, paid.latest_charge)) == 2)
    assert [d.event_type for d in endpoint.of(paid.id, paid.latest_charge)] == [
        "payment_intent.succeeded", "charge.succeeded"]
    events = client(provider).v1.events.list(params={"limit": 10}).data
    made = [e.type for e in reversed(events) if e.data.object.id in (paid.id, paid.latest_charge)]
    assert made == ["payment_intent.created", "charge.succeeded", "payment_intent.succeeded"], "made in order"


def test_the_delay_knob_holds_every_first_delivery(provider, endpoint):
    provider.set_faults(webhook_delay_ms=1500)
    answered = time.time()
    paid = pay(provider)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id)) == 1)
    assert endpoint.of(paid.id)[0].received - answered >= 1.5


def test_the_drop_knob_loses_attempts_and_the_retry_delivers_the_same_event(provider, endpoint):
    provider.set_faults(webhook_drop=1.0, webhook_retry_ms=100, webhook_retry_max_ms=200)
    before = metric(provider, f"{names.WEBHOOK_DELIVERY_FAILURES}_total", reason="dropped")
    paid = pay(provider)
    deadline = time.monotonic() + 30
    while metric(provider, f"{names.WEBHOOK_DELIVERY_FAILURES}_total", reason="dropped") < before + 4:
        assert time.monotonic() < deadline, "the provider made no attempt"
        time.sleep(0.1)
    assert endpoint.of(paid.id) == [], "a dropped attempt never reaches the endpoint"
    provider.set_faults(webhook_drop=0.0)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id)) == 1)
    # The endpoint has the event before the provider records the answer: wait for the row to say so.
    event_id = endpoint.of(paid.id)[0].event_id
    wait_until_delivered(provider, event_id)
    with psycopg.connect(provider.dsn) as conn:
        state, attempts, dropped = conn.execute(
            "SELECT state, attempts, dropped FROM webhook_deliveries WHERE event_id = %s", (event_id,)).fetchone()
    assert state == "delivered" and dropped >= 2 and attempts == dropped + 1


def test_a_provider_killed_with_deliveries_pending_sends_them_once_restarted(stack, endpoint):
    """The deliveries live in the provider's database: SIGKILL loses none of them."""
    name = f"provider_hooks_restart_{stack_mod.new_run_id()}"
    first = ProviderProcess(stack.create_database(name), webhook_url=endpoint.url, webhook_secret=SECRET,
                            webhook_retry_ms=200)
    endpoint.answer = lambda delivery, nth: (503, 0.0)
    try:
        first.start()
        paid = pay(first)
        endpoint.wait_for(lambda: len(endpoint.of(paid.id)) >= 1, what="a refused attempt")
        event_id = endpoint.of(paid.id)[0].event_id
        deadline = time.monotonic() + 30
        while delivery_row(first, event_id)[2] < 1:  # the refusal is in the database before the kill
            assert time.monotonic() < deadline, "the refusal was never recorded"
            time.sleep(0.05)
        first.kill()
        endpoint.answer = lambda delivery, nth: (200, 0.0)
        refused = len(endpoint.of(paid.id))
        restarted = first.restarted()
        try:
            endpoint.wait_for(lambda: len(endpoint.of(paid.id)) == refused + 1, what="the delivery after the restart")
            assert len({d.event_id for d in endpoint.of(paid.id)}) == 1
            # Recorded as delivered once the endpoint's answer is back, a moment after it has the event.
            assert wait_until_delivered(restarted, endpoint.of(paid.id)[0].event_id)[0] == "delivered"
            # The counters come from the database: the refusals before the kill are still counted.
            refusals = metric(restarted, f"{names.WEBHOOK_DELIVERY_FAILURES}_total", reason="refused")
            assert 1 <= refusals < len(endpoint.of(paid.id, paid.latest_charge))
        finally:
            restarted.stop()
    finally:
        first.stop()
        endpoint.answer = lambda delivery, nth: (200, 0.0)
        stack.drop_database(name)


def test_the_courses_recorder_samples_the_webhook_counters(provider, endpoint):
    recorder = Recorder(bootstrap="unused:9092", topic="t", group="g", dlq_topic="t.dlq", targets=list,
                        acknowledged=list, provider=lambda: f"{provider.url}/metrics")
    before = recorder.sample()  # not started: no broker is asked, only the provider
    paid = pay(provider)
    endpoint.wait_for(lambda: len(endpoint.of(paid.id, paid.latest_charge)) == 2)
    after = recorder.sample()
    deliveries = f"{names.WEBHOOK_DELIVERIES}_total"
    assert after[deliveries] >= before[deliveries] + 2
    counters = {f"{name}_total" for name in names.WEBHOOK_METRIC_NAMES if name != names.WEBHOOK_EVENTS_PENDING}
    assert counters | {names.WEBHOOK_EVENTS_PENDING} <= set(after)
    gone = Recorder(bootstrap="unused:9092", topic="t", group="g", dlq_topic="t.dlq", targets=list,
                    acknowledged=list, provider=lambda: None)
    assert deliveries not in gone.sample(), "no provider: a gap, not a zero"


@pytest.mark.parametrize("flags,words", [
    (["--webhook-url", "http://127.0.0.1:9/hooks"], "go together"),
    (["--webhook-url", "http://127.0.0.1:9/hooks", "--webhook-secret", "sk_test_nope"], "whsec_"),
    (["--webhook-url", "hooks", "--webhook-secret", SECRET], "http://"),
    (["--api-key", "pk_live_123"], "sk_test_"),
])
def test_the_webhook_flags_and_the_api_key_are_checked_in_one_sentence(flags, words):
    result = subprocess.run([sys.executable, "-m", "effectively_once.payments.provider", "--dsn",
                             "postgresql://nobody@127.0.0.1:1/none", *flags], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and words in result.stderr, result.stderr
