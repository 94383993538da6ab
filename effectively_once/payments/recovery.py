"""After a 500 that says nothing: why Search cannot settle it, and why the PaymentIntent can.

A provider that behaves like Stripe (API v1) stores the answer to any request
it began to execute under its key, a 500 included, and replays it to every
retry with the key (https://docs.stripe.com/api/idempotent_requests). The 500
does not say whether the money moved, so the caller must ask. Two ways to ask:

- **Search** (``GET /v1/charges/search?query=metadata['msg_id']:'...'``), the
  nearest thing Stripe has to "the charges of this message". Stripe documents
  it as not for read-after-write flows: objects become searchable "in under 1
  minute", later during an outage (https://docs.stripe.com/search#data-freshness).
  Right after the 500, "not found" proves nothing. ``search_then_charge`` (a
  consumer step, kept only as the counter-example) trusts it and charges again
  under a new derived key: within the index delay, that is a second charge.
- **The PaymentIntent**, retrieved by id (``GET /v1/payment_intents/{id}``),
  which is read from the object itself and strongly consistent
  (https://docs.stripe.com/api/payment_intents/retrieve). Its id exists before
  any money moves, so a consumer that stored it can always ask
  (``steps.confirm_or_recover``).

``after_a_500(stack)`` runs both, side by side, on one message each, against a
provider that fails after charging on exactly the call that moves money.

Before any of that, what the SDK does by itself: ``what_the_sdk_key_covers``
charges one message twice through the SDK without a key of the caller's (on
purpose: the lint rule flags that call). The SDK's own random key covers its
own retries of the first call; the second call is a new key and a new charge.
"""

from __future__ import annotations

import html
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import stripe

from effectively_once.payments.messages import ChargeMessage, idempotency_key_for, new_key_for

if TYPE_CHECKING:
    import psycopg

    from effectively_once.payments.children import ProviderProcess
    from effectively_once.payments.client import ChargeResult, IntentResult, ProviderClient
    from effectively_once.payments.steps import Outcome
    from effectively_once.stack import Stack

SEARCH_STEP = "effectively_once.payments.recovery:search_then_charge"


# -- what the SDK's own key covers ------------------------------------------------------------------
@dataclass
class SdkKeyCover:
    """Two calls for one message, each with the key the SDK made up: every HTTP attempt, and the ledger."""

    attempts: list[tuple[str, str, str]] = field(default_factory=list)   # (call, Idempotency-Key sent, answer)
    ledger: list[tuple[str, str]] = field(default_factory=list)          # (charge_id, idempotency_key)
    timeout: float = 0.0

    def keys_of(self, call: str) -> set[str]:
        """The distinct keys the SDK sent during one call (``"first call"`` or ``"second call"``)."""
        return {key for name, key, _ in self.attempts if name == call}

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td style='text-align:left'>{html.escape(c)}</td><td><code>{html.escape(k)}</code></td>"
                       f"<td style='text-align:left'>{html.escape(a)}</td></tr>" for c, k, a in self.attempts)
        ledger = "".join(f"<tr><td><code>{html.escape(c)}</code></td><td><code>{html.escape(k)}</code></td></tr>"
                         for c, k in self.ledger)
        return (f"<div style='display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap'>"
                f"<table><caption style='text-align:left'><b>what the SDK sent</b></caption><tr><th>call</th>"
                f"<th>Idempotency-Key (the SDK's own)</th><th>answer</th></tr>{rows}</table>"
                f"<table><caption style='text-align:left'><b>provider: ledger</b> ({len(self.ledger)} rows)"
                f"</caption><tr><th>charge_id</th><th>idempotency_key</th></tr>{ledger}</table></div>")

    def __repr__(self) -> str:
        lines = [f"{c:<12} {k}  {a}" for c, k, a in self.attempts]
        lines += [f"ledger: {c} {k}" for c, k in self.ledger]
        return "\n".join(lines)


def what_the_sdk_key_covers(stack: Stack, timeout: float = 1.0, stall_ms: float = 2500.0) -> SdkKeyCover:
    """One message charged through the SDK without a key of the caller's, twice: what the SDK's own key covers.

    The first call's answer comes later than the client's ``timeout`` (the
    provider stalls it ``stall_ms`` after taking its key): the SDK retries it
    under the key it made up, meets the key in flight (409), and is replayed
    the first charge. The second call is the same message sent again, as a
    retry loop or a redelivery would: the SDK makes up a new key, and the
    provider charges again. A provider of its own serves it, dropped after.
    """
    import psycopg

    from effectively_once.payments.children import ProviderProcess
    from effectively_once.payments.client import ObservedHTTPClient
    from effectively_once.payments.messages import DEFAULT_API_KEY

    database = f"sdk_key_{uuid.uuid4().hex[:8]}"
    dsn = stack.create_database(database)
    cover = SdkKeyCover(timeout=timeout)
    msg = ChargeMessage(f"msg-sdk-{uuid.uuid4().hex[:6]}", "customer-7", 1250, "usd")
    try:
        with ProviderProcess(dsn) as provider:
            http = ObservedHTTPClient(timeout)
            client = stripe.StripeClient(DEFAULT_API_KEY, base_addresses={"api": provider.url}, http_client=http,
                                         max_network_retries=5)
            provider.set_faults(stall_next_ms=stall_ms)
            for name in ("first call", "second call"):
                http.log = []
                try:
                    client.v1.charges.create(params=msg.body())  # type: ignore[arg-type]
                    outcome = None
                except stripe.StripeError as exc:  # the provider answers; the record says so if it did not
                    outcome = f"gave up: {type(exc).__name__}"
                for _, _, key, status, error in http.log:
                    cover.attempts.append((name, key or "", f"HTTP {status}" if status else
                                           f"no answer within {timeout:g} s ({error})"))
                if outcome:
                    cover.attempts.append((name, "", outcome))
            http.close()
        with psycopg.connect(dsn) as conn:
            cover.ledger = [(r[0], r[1]) for r in conn.execute(
                "SELECT charge_id, idempotency_key FROM ledger WHERE msg_id = %s ORDER BY created_at", (msg.msg_id,))]
    finally:
        stack.drop_database(database)
    return cover


def charge_or_search(provider: ProviderClient, msg: ChargeMessage, key: str | None) -> ChargeResult:
    """THE UNSAFE RECOVERY: charge under ``key``; on a stored 500, ask Search, and charge again if it finds nothing.

    Found: that charge is the message's (``recovered=True``). Not found: the
    step concludes that no money moved and charges under ``charge-<msg_id>-r1``.
    Within the index delay, Search finds nothing even when the money moved.
    """
    from effectively_once.payments.client import ChargeResult, KeySpent

    started = time.perf_counter()
    try:
        return provider.charge(msg, idempotency_key=key)
    except KeySpent as spent:
        found = provider.search_charges(msg.msg_id)
        if found:
            return ChargeResult(found[0], replayed=False, retries=spent.retries + 1,
                                duration_ms=(time.perf_counter() - started) * 1000, recovered=True,
                                idempotency_key=key)
        again = provider.charge(msg, idempotency_key=new_key_for(msg.msg_id, 1) if key else None)
        return replace(again, retries=spent.retries + 1 + again.retries,
                       duration_ms=(time.perf_counter() - started) * 1000)


def search_then_charge(ctx, msg: ChargeMessage) -> Outcome:
    """The Charges path (``steps.process_charge``) with the unsafe recovery: Search after a replayed 500."""
    from effectively_once.payments.steps import charge_in_one_call

    return charge_in_one_call(ctx, msg, lambda key: charge_or_search(ctx.provider, msg, key))


class _Narrated:
    """A provider client that notes each call and its answer in a ``Recovery``, and makes its first
    money-moving call fail after charging (the provider's ``fail_after_charge``, for that call only)."""

    def __init__(self, client: ProviderClient, provider: ProviderProcess) -> None:
        self.client, self.provider = client, provider
        self.recovery: Recovery | None = None
        self.fail_next = True

    def _note(self, action: str, answer: str) -> None:
        assert self.recovery is not None, "set the recovery to narrate first"
        self.recovery.saw(action, answer)

    def _moving(self, action: str, call):
        from effectively_once.payments.client import ChargeFailed

        failing, self.fail_next = self.fail_next, False
        if failing:
            self.provider.set_faults(fail_after_charge=1.0)
        try:
            result = call()
        except ChargeFailed as exc:
            self._note(action, f"HTTP {exc.status or '(none)'}: says nothing")
            raise
        finally:
            if failing:
                self.provider.set_faults(fail_after_charge=0.0)
        self._note(action, f"HTTP 200: charge {result.charge_id}")
        return result

    def charge(self, msg: ChargeMessage, idempotency_key: str | None = None) -> ChargeResult:
        return self._moving(f"POST /v1/charges ({idempotency_key})",
                            lambda: self.client.charge(msg, idempotency_key=idempotency_key))

    def confirm_intent(self, msg: ChargeMessage, intent_id: str, idempotency_key: str | None = None) -> ChargeResult:
        return self._moving(f"POST /v1/payment_intents/pi_.../confirm ({idempotency_key})",
                            lambda: self.client.confirm_intent(msg, intent_id, idempotency_key=idempotency_key))

    def create_intent(self, msg: ChargeMessage, idempotency_key: str | None = None) -> IntentResult:
        created = self.client.create_intent(msg, idempotency_key=idempotency_key)
        self._note(f"POST /v1/payment_intents ({idempotency_key})", f"{created.status}: no money moved")
        return created

    def retrieve_intent(self, intent_id: str) -> IntentResult:
        found = self.client.retrieve_intent(intent_id)
        self._note("GET /v1/payment_intents/pi_...", f"status {found.status}")
        return found

    def search_charges(self, msg_id: str) -> list[str]:
        found = self.client.search_charges(msg_id)
        self._note("GET /v1/charges/search (the msg_id)", f"{len(found)} found")
        return found


class _Kernel:
    """A step's ``ctx`` in this process: a provider, the key layer, no crash points, no shop."""

    def __init__(self, provider: _Narrated) -> None:
        self.provider = provider

    @property
    def shop(self) -> psycopg.Connection:
        raise RuntimeError("the recovery demonstration has no shop database")

    def uses(self, layer: str) -> bool:
        return layer == "idempotency_key"

    def crash_point(self, name: str) -> None:
        pass


@dataclass
class Recovery:
    """One message through one recovery: each call and its answer, and the ledger's rows for the message."""

    path: str
    msg_id: str
    steps: list[tuple[str, str]] = field(default_factory=list)
    ledger: list[tuple[str, str]] = field(default_factory=list)   # (charge_id, idempotency_key)

    def saw(self, action: str, answer: str) -> None:
        """Append one call and its answer."""
        self.steps.append((action, answer))

    @property
    def charges(self) -> int:
        """How many times money moved for the message."""
        return len(self.ledger)


@dataclass
class AfterA500:
    """The two recoveries side by side, and what Search found once its delay had passed."""

    search: Recovery
    payment_intent: Recovery
    search_delay_ms: float
    found_later: list[str] = field(default_factory=list)

    def _repr_html_(self) -> str:
        def column(recovery: Recovery) -> str:
            rows = "".join(f"<tr><td style='text-align:left'><code>{html.escape(a)}</code></td>"
                           f"<td style='text-align:left'>{html.escape(b)}</td></tr>" for a, b in recovery.steps)
            colour = "#1a7f37" if recovery.charges == 1 else "#cf222e"
            return (f"<div><b>{html.escape(recovery.path)}</b><table>{rows}</table>"
                    f"<p style='color:{colour}'>money moved {recovery.charges} time(s) for one message</p></div>")

        return (f"<div style='display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap'>{column(self.search)}"
                f"{column(self.payment_intent)}</div>")

    def __repr__(self) -> str:
        lines = []
        for recovery in (self.search, self.payment_intent):
            lines.append(f"{recovery.path}:")
            lines += [f"  {a:<56} {b}" for a, b in recovery.steps]
            lines.append(f"  money moved {recovery.charges} time(s) for one message")
        return "\n".join(lines)


def after_a_500(stack: Stack, search_delay_ms: float = 1000.0, amount: int = 1250) -> AfterA500:
    """One message recovered with Search and one with the PaymentIntent, each after a 500 that follows its charge.

    A provider of its own (its database dropped at the end) answers the first
    call that moves money with a 500 stored under its key, after moving the
    money; every other call succeeds. Both recoveries are the course's code:
    ``charge_or_search`` and ``steps.confirm_or_recover``. Once the index delay
    has passed, Search is asked again (``found_later``).
    """
    import psycopg

    from effectively_once.payments.children import ProviderProcess
    from effectively_once.payments.client import ProviderClient
    from effectively_once.payments.messages import intent_key_for
    from effectively_once.payments.steps import confirm_or_recover

    database = f"recovery_{uuid.uuid4().hex[:8]}"
    dsn = stack.create_database(database)
    run = uuid.uuid4().hex[:6]
    try:
        with ProviderProcess(dsn, search_delay_ms=search_delay_ms) as provider:
            assert provider.url is not None, "a started provider has announced its address"
            client = ProviderClient(provider.url, max_retries=2)
            narrated = _Narrated(client, provider)

            msg = ChargeMessage(f"msg-search-{run}", "customer-7", amount, "usd")
            search = narrated.recovery = Recovery("one-shot charge, then Search", msg.msg_id)
            result = charge_or_search(narrated, msg, idempotency_key_for(msg.msg_id))  # type: ignore[arg-type]
            search.saw("the message is marked 'done' with", result.charge_id)

            narrated.fail_next = True
            pim = ChargeMessage(f"msg-intent-{run}", "customer-7", amount, "usd")
            intent = narrated.recovery = Recovery("PaymentIntent, then retrieve by id", pim.msg_id)
            created = narrated.create_intent(pim, idempotency_key=intent_key_for(pim.msg_id))
            result = confirm_or_recover(_Kernel(narrated), pim, created.id, idempotency_key_for(pim.msg_id))
            intent.saw("the message is marked 'done' with", result.charge_id)

            with psycopg.connect(dsn) as conn:
                for recovery in (search, intent):
                    recovery.ledger = [(r[0], r[1]) for r in conn.execute(
                        "SELECT charge_id, idempotency_key FROM ledger WHERE msg_id = %s ORDER BY created_at",
                        (recovery.msg_id,))]
            time.sleep(search_delay_ms / 1000 + 0.3)
            found_later = client.search_charges(msg.msg_id)
            client.close()
    finally:
        stack.drop_database(database)
    return AfterA500(search, intent, search_delay_ms, found_later)
