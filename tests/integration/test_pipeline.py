"""The payment pipeline against the real broker, PostgreSQL, HTTP and SIGKILL.

The crash matrix runs every crash point against every layer set. One provider
and one shop database serve all its scenarios: each scenario has its own topic,
consumer group and msg_id prefix, and its report counts only its own msg_ids
and its own topic's events, so sharing them hides nothing. The scenarios run a
few at a time (they mostly wait on process start-up and group joins).
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from effectively_once import stack as stack_mod
from effectively_once.payments.children import ProviderProcess
from effectively_once.payments.lab import PaymentLab, run_scenario
from effectively_once.payments.matrix import EXPECTED_MATRIX
from effectively_once.protocol import (
    CRASH_POINTS,
    DLQ_ERROR_TYPE,
    DLQ_FIRST_SEEN,
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
)
from tests.unit.test_pipeline import _bad_records

# Charges per scenario. What each (crash point, layer set) must count lives once, in the package: EXPECTED_MATRIX.
MESSAGES = 5
FORGETFUL_STEP = "tests.integration.test_pipeline:step_that_forgets_the_key"


def step_that_forgets_the_key(ctx, msg):
    """The Stripe 2020 bug as a pluggable step on the one-shot Charges path: the call carries no key of ours."""
    from effectively_once.payments.steps import process_charge as process_message

    class WithoutKey:
        def __getattr__(self, name):
            return getattr(ctx, name)

        def uses(self, layer):
            return layer != "idempotency_key" and ctx.uses(layer)

    return process_message(WithoutKey(), msg)


@pytest.fixture(scope="module")
def shared(stack):
    """One provider (own database) and one shop database for every scenario of this module."""
    run = stack_mod.new_run_id()
    provider_dsn = stack.create_database(f"provider_t{run}")
    shop_dsn = stack.create_database(f"shop_t{run}")
    with ProviderProcess(provider_dsn) as provider:
        yield provider, shop_dsn
    stack.drop_database(f"provider_t{run}")
    stack.drop_database(f"shop_t{run}")


@pytest.fixture(scope="module")
def matrix(stack, shared):
    """The report of every (crash point, layer set) scenario, plus the expired-key one."""
    provider, shop_dsn = shared

    def scenario(args):
        point, layers, variant = args
        return run_scenario(stack, point, layers, MESSAGES, seed=7, provider=provider, shop_dsn=shop_dsn,
                            expire_keys=variant == "expired", exit_when_idle=0.5, timeout=90,
                            consumer_options={"batch_dedup": variant == "per_poll", "api": "charges",
                                              "step": FORGETFUL_STEP if variant == "forgetful" else None})

    jobs = [(point, layers, False) for point, layers in EXPECTED_MATRIX]
    jobs.append(("after_provider_call", "both", "expired"))
    jobs += [(point, "both", "per_poll") for point in CRASH_POINTS]
    jobs.append(("after_provider_call", "both", "forgetful"))
    with ThreadPoolExecutor(max_workers=3) as pool:
        reports = list(pool.map(scenario, jobs))
    return dict(zip([(p, layers, e) for p, layers, e in jobs], reports, strict=True))


@pytest.mark.parametrize("point,layers", list(EXPECTED_MATRIX))
def test_crash_matrix(matrix, point, layers):
    report = matrix[(point, layers, False)]
    got = (report.duplicate_charges, report.lost_charges, report.dedup_hits, report.key_replays)
    assert got == astuple(EXPECTED_MATRIX[(point, layers)]), (
        f"crash at {point} with layers {layers}: (duplicates, lost, dedup hits, key replays) = {got}, "
        f"expected {EXPECTED_MATRIX[(point, layers)]}; duplicated {report.duplicated}, lost {report.lost}")
    assert report.messages == MESSAGES and report.dlq == 0
    # Every charge in the ledger is one of ours: the money that moved is messages + duplicates - lost.
    assert report.charges == MESSAGES + report.duplicate_charges - report.lost_charges


def test_both_layers_never_duplicate_nor_lose(matrix):
    for point in CRASH_POINTS:
        report = matrix[(point, "both", False)]
        assert report.ok, f"both layers failed at {point}: {report}"


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_both_layers_with_dedup_per_poll_never_duplicate_nor_lose(matrix, point):
    """The faster consumer (one dedup INSERT and one UPDATE per poll batch) keeps the guarantee."""
    report = matrix[(point, "both", "per_poll")]
    assert report.ok and report.charges == MESSAGES, f"dedup per poll failed at {point}: {report}"
    if point in ("after_dedup_insert", "after_provider_call", "after_status_update"):
        assert report.dedup_hits >= 1, "the restarted consumer should have met the rows of the crashed one"


def test_a_key_past_its_ttl_lets_a_duplicate_through(matrix):
    """Trap 2: the key only closes the window while the provider keeps it."""
    report = matrix[("after_provider_call", "both", "expired")]
    assert report.duplicate_charges == 1 and report.key_replays == 0, report
    assert report.lost_charges == 0


def test_a_step_plugged_in_with_step_is_the_one_that_runs(matrix):
    """``--step module:function``: a step that drops the key loses the guarantee at the Stripe 2020 point."""
    report = matrix[("after_provider_call", "both", "forgetful")]
    assert report.duplicate_charges == 1 and report.key_replays == 0, report


def test_reports_render_as_html(matrix):
    bad = matrix[("after_provider_call", "none", False)]._repr_html_()
    good = matrix[("after_provider_call", "both", False)]._repr_html_()
    assert "1 charged twice" in bad and "duplicate_charges</th><td>1" in bad
    assert "exactly once" in good and "after_provider_call" in good


# -- the demo command ------------------------------------------------------------------------
def _database_exists(stack, dsn: str) -> bool:
    with psycopg.connect(stack.postgres_dsn("postgres")) as conn:
        name = dsn.rsplit("/", 1)[1].split("?")[0]
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_demo_prints_the_report_as_json_and_drops_its_databases(stack):
    from tests.conftest import run_cli

    result = run_cli("demo", "--crash-at", "after_provider_call", "--layers", "none", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"messages", "charges", "duplicate_charges", "lost_charges", "dedup_hits",
                           "key_replays", "dlq", "shop_dsn", "provider_dsn"}
    assert (report["messages"], report["duplicate_charges"], report["charges"]) == (5, 1, 6)
    assert not _database_exists(stack, report["shop_dsn"])
    assert not _database_exists(stack, report["provider_dsn"])


def test_demo_keep_leaves_the_databases_to_inspect(stack):
    from tests.conftest import run_cli

    result = run_cli("demo", "--crash-at", "after_dedup_insert", "--layers", "dedup_as_written", "--json", "--keep")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["lost_charges"] == 1 and report["duplicate_charges"] == 0
    try:
        with psycopg.connect(report["shop_dsn"]) as conn:
            assert conn.execute("SELECT count(*) FROM charges WHERE status = 'pending'").fetchone() == (1,)
        with psycopg.connect(report["provider_dsn"]) as conn:
            assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (4,)
    finally:
        for dsn in (report["shop_dsn"], report["provider_dsn"]):
            stack.drop_database(dsn.rsplit("/", 1)[1].removeprefix(f"{stack.namespace}_"))
        for topic in stack.list_topics():
            if topic.startswith(stack.topic("payments.charges.")) and report["shop_dsn"].endswith(
                    topic.removeprefix(stack.topic("payments.charges.")).removesuffix(".dlq")):
                stack.delete_topics(topic)


# -- random kills ----------------------------------------------------------------------------
def _wait_for_first_event(shop_dsn, topic, consumer, timeout: float) -> bool:
    """Wait until ``consumer`` has handled a message; False if it exits or times out first."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline and consumer.running:
            if conn.execute("SELECT 1 FROM consumer_events WHERE topic = %s AND consumer_pid = %s LIMIT 1",
                            (topic, consumer.pid)).fetchone():
                return True
            time.sleep(0.02)
    return False


def test_random_sigkills_from_outside_still_charge_each_message_exactly_once(stack, shared):
    """Kill the consumer at random moments, many times, while the provider also fails after charging."""
    provider, shop_dsn = shared
    rng = random.Random(2024)
    with PaymentLab(stack, "both", provider=provider, shop_dsn=shop_dsn) as lab:
        lab.set_faults(fail_after_charge=0.05)
        ids = lab.produce(300, seed=11)
        kills = 0
        for _ in range(8):
            consumer = lab.start_consumer(exit_when_idle=2.0)
            # A random moment once it is charging (before that, a kill only tests the group join).
            if not _wait_for_first_event(shop_dsn, lab.topic, consumer, timeout=20):
                break
            time.sleep(rng.uniform(0.0, 0.4))
            if consumer.running:
                consumer.kill()
                kills += 1
        lab.set_faults(fail_after_charge=0)
        lab.run_until_settled(timeout=120)
        report = lab.report()
        with psycopg.connect(shop_dsn) as conn:
            workers = conn.execute("SELECT count(DISTINCT consumer_pid) FROM consumer_events WHERE topic = %s",
                                   (lab.topic,)).fetchone()[0]
            done = conn.execute("SELECT count(*) FROM charges WHERE msg_id = ANY(%s) AND status = 'done'",
                                (ids,)).fetchone()[0]
    assert kills >= 5, f"only {kills} consumers were still running when killed: the test did not test much"
    assert workers >= 6, "the messages should have been spread over several killed consumers"
    assert report.ok and report.charges == 300 and report.dlq == 0, report
    assert done == 300


def test_a_paused_consumer_waits_for_the_learners_sigkill_and_the_restart_logs_the_replay(stack, shared):
    """pause_at stops at the crash point; the kill comes from outside; the restart gets Idempotent-Replayed."""
    provider, shop_dsn = shared
    with PaymentLab(stack, "both", provider=provider, shop_dsn=shop_dsn, partitions=1) as lab:
        ids = lab.produce(2, seed=5)
        consumer = lab.start_consumer(pause_at="after_provider_call", log_answers=True)
        assert consumer.wait_until_paused(30) == ("after_provider_call", ids[0])
        time.sleep(1.5)
        assert consumer.running, "a paused consumer waits; it does not kill itself"
        kill = lab.kill_consumer()
        assert (kill.paused_at, kill.msg_id, kill.charged, kill.pending, kill.done) == (
            "after_provider_call", ids[0], 1, 1, 0), kill
        assert consumer.killed_by_sigkill and not consumer.crashed_at_point
        assert lab.kill_consumer(consumer) is kill, "a second call reports the same kill, it does not kill twice"
        assert [(r["key"], r["state"]) for r in lab.key_rows()] == [(f"charge-{ids[0]}", "done"),
                                                                     (f"intent-{ids[0]}", "done")]
        restarted = lab.start_consumer(log_answers=True)
        assert restarted.wait(30) == 0, restarted.log_tail()
        answers = restarted.provider_answers()
        assert [(a["msg_id"], a["replayed"]) for a in answers] == [(ids[0], "true"), (ids[1], "(absent)")]
        assert answers[0]["charge_id"] == consumer.provider_answers()[0]["charge_id"]
        assert lab.report().ok


def test_the_dlq_table_names_a_msg_id_found_in_the_body_or_the_key(stack, shared):
    provider, shop_dsn = shared
    with PaymentLab(stack, "both", provider=provider, shop_dsn=shop_dsn) as lab:
        lab.produce_raw([b"not json", b'{"msg_id": "m-neg", "amount": -5}'])
        lab.produce_raw([b"[1, 2]"], key=None)
        assert lab.start_consumer(exit_when_idle=0.5).wait(60) == 0
        names = sorted(lab.dlq_rows().column("msg_id"))
    assert names == ["(key raw)", "m-neg", "—"], names


# -- what cannot be charged goes to the dead-letter topic ------------------------------------
def test_a_4xx_goes_straight_to_the_dlq_with_its_reason(stack, shared):
    provider, shop_dsn = shared
    with PaymentLab(stack, "both", provider=provider, shop_dsn=shop_dsn) as lab:
        lab.produce(3, seed=1)
        lab.start_consumer(api_key="sk_wrong", exit_when_idle=0.5).wait(60)
        report = lab.report()
        dlq = lab.dlq_records()
        with psycopg.connect(shop_dsn) as conn:
            retries = conn.execute("SELECT max(retries) FROM consumer_events WHERE topic = %s",
                                   (lab.topic,)).fetchone()[0]
    assert report.dlq == 3 and report.charges == 0 and report.lost_charges == 0, report
    assert {r["headers"][DLQ_ERROR_TYPE] for r in dlq} == {"rejected"}
    assert all("HTTP 401" in r["headers"][DLQ_REASON] for r in dlq)
    assert retries == 0, "a 4xx will fail the same way again: it must not be retried"




@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(bad=st.lists(_bad_records, min_size=1, max_size=8))
def test_malformed_messages_end_in_the_dlq_and_the_consumer_survives(stack, shared, bad):
    provider, shop_dsn = shared
    with PaymentLab(stack, "both", provider=provider, shop_dsn=shop_dsn) as lab:
        lab.produce(2, seed=3)
        sent_bad = lab.produce_raw(bad)
        lab.produce(2, seed=4)
        consumer = lab.start_consumer(exit_when_idle=0.5)
        assert consumer.wait(90) == 0, f"the consumer did not survive bad input:\n{consumer.log_tail()}"
        report = lab.report()
        dlq = lab.dlq_records()
    assert report.lost_charges == 0 and report.duplicate_charges == 0, report
    assert report.charges == 4 and report.dlq == len(bad), report
    by_source = {(int(r["headers"][DLQ_SOURCE_PARTITION]), int(r["headers"][DLQ_SOURCE_OFFSET])): r for r in dlq}
    for sent, value in zip(sent_bad, bad, strict=True):
        record = by_source[(sent.partition, sent.offset)]
        assert record["value"] == value, "the DLQ must keep the original bytes"
        assert record["headers"][DLQ_ERROR_TYPE] == "malformed"
        assert record["headers"][DLQ_REASON] and record["headers"][DLQ_FIRST_SEEN]
        assert record["headers"][DLQ_SOURCE_TOPIC] == lab.topic


# -- trace context and the command lines -----------------------------------------------------
def test_the_trace_id_travels_from_the_producer_to_the_provider(stack, shared):
    from effectively_once.payments.messages import trace_id_of
    from effectively_once.payments.producer import charge_records

    provider, shop_dsn = shared
    with PaymentLab(stack, "both", provider=provider, shop_dsn=shop_dsn) as lab:
        ids = lab.produce(3, seed=9)
        lab.run_until_settled(60, exit_when_idle=0.5)
        with psycopg.connect(provider.dsn) as conn:
            ledger = dict(conn.execute("SELECT msg_id, trace_id FROM ledger WHERE msg_id = ANY(%s)", (ids,)))
        events = dict((e["msg_id"], e["trace_id"]) for e in lab.event_rows())
    sent = {json.loads(value)["msg_id"]: trace_id_of(dict(headers)["traceparent"].decode())
            for _, value, headers in charge_records(3, seed=9, prefix=lab.run_id)}
    assert set(sent) == set(ids) and all(sent.values())
    assert ledger == sent, "the provider must see the producer's trace id"
    assert events == sent


def test_the_producer_command_publishes_charges(stack):
    import subprocess
    import sys

    topic = stack.create_topic(f"producer.cli.{stack_mod.new_run_id()}", partitions=1)
    try:
        result = subprocess.run([sys.executable, "-m", "effectively_once.payments.producer", "--bootstrap",
                                 stack.kafka_bootstrap, "--topic", topic, "--messages", "4", "--prefix", "cli"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "produced 4 charge message(s)" in result.stdout and "msg-cli-00000 .. msg-cli-00003" in result.stdout
    finally:
        stack.delete_topics(topic)


def test_a_lab_refuses_bad_consumer_settings_before_starting_a_process(stack):
    """The dedup/dedup_as_written conflict used to surface as a child exiting with code 2."""
    with PaymentLab(stack, run_id="badsettings") as lab:
        lab.start_provider()
        with pytest.raises(ValueError, match="^layers: dedup and dedup_as_written .*pick one"):
            lab.start_consumer(layers=("dedup", "dedup_as_written"))
        with pytest.raises(ValueError, match="^crash_on: must be at least 1"):
            lab.start_consumer(crash_at="after_provider_call", crash_on=0)
        with pytest.raises(ValueError, match="^batch_sise: not a consumer setting"):
            lab.start_consumer(batch_sise=10)
        assert lab.consumers == []
        settings = lab.consumer_settings(crash_at="after_provider_call", max_retries=2)
        assert (settings.topic, settings.group, settings.layers) == (lab.topic, lab.group, lab.layers)
        assert settings.max_retries == 2 and settings.exit_when_idle == 1.0
