"""The pipeline's pieces without a broker: the charge validator under hypothesis, the commands' refusals,
the consumer's handling of a refused commit and of a refused dead-letter write.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effectively_once.payments.messages import MAX_VALUE_BYTES, MalformedMessage, parse_charge
from effectively_once.protocol import EventKind, parse_events


def test_demo_refuses_an_unknown_layer():
    from tests.conftest import run_cli

    result = run_cli("demo", "--layers", "dedupe")
    assert result.returncode == 2 and "unknown layer" in result.stderr


# -- bad input (hypothesis) ------------------------------------------------------------------
_GOOD = {"msg_id": "m", "customer": "cus_001", "amount": 500, "currency": "usd"}


_BAD_VALUES = {
    "msg_id": st.one_of(st.none(), st.integers(), st.just(""), st.just("   "), st.lists(st.text(max_size=3))),
    "customer": st.one_of(st.none(), st.integers(), st.just(""), st.text(min_size=201, max_size=240)),
    "amount": st.one_of(st.none(), st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(),
                        st.text(max_size=6), st.integers(min_value=10**12 + 1)),
    "currency": st.one_of(st.none(), st.integers(), st.text(max_size=8).filter(
        lambda s: not (len(s) == 3 and s.isascii() and s.isalpha()))),
}


def _with_bad_field(field_and_value):
    field, value = field_and_value
    return {**_GOOD, field: value}


_bad_records = st.one_of(
    st.binary(max_size=120).filter(lambda b: not b.strip().startswith(b"{")),
    st.one_of(st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3), st.none()).map(
        lambda v: json.dumps(v).encode()),
    st.sampled_from(sorted(_GOOD)).map(lambda f: json.dumps({k: v for k, v in _GOOD.items() if k != f}).encode()),
    st.sampled_from(sorted(_BAD_VALUES)).flatmap(lambda f: _BAD_VALUES[f].map(lambda v: (f, v))).map(
        lambda fv: json.dumps(_with_bad_field(fv)).encode()),
    st.integers(MAX_VALUE_BYTES + 1, 3 * MAX_VALUE_BYTES).map(
        lambda n: json.dumps({**_GOOD, "note": "x" * n}).encode()),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_bad_records, st.binary(max_size=300)))
def test_parse_charge_either_accepts_or_says_why(value):
    """No input makes the validator fail in any way other than MalformedMessage with a reason."""
    try:
        msg = parse_charge(value)
    except MalformedMessage as exc:
        assert str(exc)
    else:
        assert msg.amount > 0 and len(msg.currency) == 3 and msg.msg_id


@settings(max_examples=300, deadline=None)
@given(_bad_records)
def test_every_generated_bad_record_is_malformed(value):
    with pytest.raises(MalformedMessage):
        parse_charge(value)


@pytest.mark.parametrize("args,message", [
    (["--layers", "dedup,bogus"], "unknown layer"),
    (["--layers", "dedup,dedup_as_written"], "pick one"),
    (["--step", "no_colon"], "module:function"),
    (["--step", "effectively_once.payments.steps:nothing_here"], "not a function"),
])
def test_the_consumer_command_refuses_bad_options(args, message):
    import subprocess
    import sys

    base = [sys.executable, "-m", "effectively_once.payments.consumer", "--bootstrap", "127.0.0.1:1", "--topic", "t",
            "--group", "g", "--shop-dsn", "postgresql://x@127.0.0.1:1/x", "--provider-url", "http://127.0.0.1:1"]
    result = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("code", ["ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS"])
def test_a_commit_refused_by_a_rebalance_is_logged_not_fatal(code):
    """Under group churn the coordinator refuses a commit from a generation that moved on (seen on Tansu):
    the consumer carries on, since the new owner redelivers and the dedup table absorbs."""
    from confluent_kafka import KafkaError, KafkaException

    from effectively_once.payments.consumer import PaymentConsumer

    class Refusing:
        def __init__(self, error):
            self.error = error

        def commit(self, asynchronous=True):
            raise KafkaException(KafkaError(self.error))

    consumer = PaymentConsumer.__new__(PaymentConsumer)
    lines: list[str] = []
    consumer.log = lines.append
    consumer.consumer = Refusing(getattr(KafkaError, code))
    assert consumer.commit_offsets() is True
    assert [(e.kind, e["error"]) for e in parse_events("\n".join(lines))] == [(EventKind.COMMIT_REFUSED, code)]
    consumer.consumer = Refusing(KafkaError._TRANSPORT)
    # Anything else (the broker is down or restarting) is owed: the poll loop commits again each second.
    assert consumer.commit_offsets() is False and "_TRANSPORT" in consumer.commit_error


def test_a_refused_dead_letter_write_is_sent_again_before_the_offset_moves():
    """flush() empties the queue even when the broker refused a write: the refused copy must be resent."""
    from confluent_kafka import KafkaError

    from effectively_once.payments.consumer import PaymentConsumer

    class Sent:
        def topic(self):
            return "t.dlq"

        def key(self):
            return b"k"

        def value(self):
            return b"v"

        def headers(self):
            return []

    class FlakyDlq:
        def __init__(self, owner, refusals):
            self.owner, self.refusals, self.produced = owner, refusals, 0

        def produce(self, topic, key=None, value=None, headers=None, on_delivery=None):
            self.produced += 1

        def flush(self, timeout):
            if self.refusals:
                self.refusals -= 1
                self.owner._dlq_delivered(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION), Sent())
            return 0

    consumer = PaymentConsumer.__new__(PaymentConsumer)
    consumer.log, consumer._dlq_failed = (lambda line: None), []
    consumer.dlq = FlakyDlq(consumer, refusals=1)
    consumer.flush_dlq()
    assert consumer.dlq.produced == 1, "the refused copy was sent again"
    consumer.dlq = FlakyDlq(consumer, refusals=5)
    with pytest.raises(RuntimeError, match="offsets left uncommitted"):
        consumer.flush_dlq()
