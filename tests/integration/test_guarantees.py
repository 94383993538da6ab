"""The broker guarantee probe against the real embedded broker (or Apache Kafka with EO_BACKEND=docker).

On Apache Kafka every guarantee must hold. On Tansu the probe must detect the
three failures that broker is known for, and the idempotent producer must hold.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from effectively_once import guarantees
from effectively_once.guarantees import IDEMPOTENT_PRODUCER, READ_COMMITTED, STALE_GENERATION, ZOMBIE_FENCED
from tests.conftest import run_cli

pytestmark = pytest.mark.tansu_pass


@pytest.fixture(scope="module")
def report(stack):
    return guarantees.probe(stack)


def on_tansu(stack) -> bool:
    return stack.broker_flavor == "tansu"


def test_the_probe_runs_one_check_per_guarantee(report, stack):
    assert [c.guarantee for c in report.checks] == [IDEMPOTENT_PRODUCER, READ_COMMITTED, ZOMBIE_FENCED,
                                                     STALE_GENERATION]
    assert all(c.evidence for c in report.checks)
    assert report.broker_flavor == stack.broker_flavor
    # How long it takes is benchmarks/probe.py's to measure, against its goal of a minute.


def test_idempotent_producer_holds_and_the_control_shows_a_retry_would_duplicate(report):
    check = report[IDEMPOTENT_PRODUCER]
    assert check.holds, check.evidence
    assert set(check.seen["client_records"].values()) == {1}
    assert set(check.seen["retried_batch"].values()) == {1}
    # Without a producer id the very same resend is stored twice: the check can see a duplicate.
    assert set(check.seen["control_without_producer_id"].values()) == {2}


def test_read_committed_and_aborted_records(report, stack):
    check = report[READ_COMMITTED]
    leaked = [v for v in check.seen["seen"] if v in check.seen["aborted"]]
    assert [v for v in check.seen["seen"] if v in check.seen["committed"]] == check.seen["committed"]
    if on_tansu(stack):
        assert not check.holds
        assert leaked == check.seen["aborted"], "Tansu is known to deliver aborted records to read_committed"
        assert "aborted records" in check.evidence
    else:
        assert check.holds, check.evidence
        assert leaked == []


def test_zombie_producer(report, stack):
    check = report[ZOMBIE_FENCED]
    zombie_seen = [v for v in check.seen["seen"] if v in check.seen["zombie_records"]]
    if on_tansu(stack):
        assert not check.holds
        assert zombie_seen == check.seen["zombie_records"], "Tansu is known not to abort the zombie's transaction"
    else:
        assert check.holds, check.evidence
        assert zombie_seen == []
        assert check.seen["zombie_commit"].startswith("refused")


def test_stale_generation(report, stack):
    check = report[STALE_GENERATION]
    if on_tansu(stack):
        assert not check.holds
        assert check.seen["answer"] == "accepted"
        assert check.seen["committed_offset"] == check.seen["stale_offset"]
    else:
        assert check.holds, check.evidence
        assert check.seen["answer"].startswith("rejected")
        assert check.seen["committed_offset"] != check.seen["stale_offset"]
    assert check.seen["stale_member"]["member_id"] != check.seen["current_member"]["member_id"]


def test_report_renders_and_serialises(report, stack):
    page = report._repr_html_()
    assert page.count("<tr style=") == 4
    assert "#d4edda" in page  # the idempotent producer holds everywhere
    assert ("#f8d7da" in page) == on_tansu(stack)
    data = json.loads(json.dumps(report.as_dict()))
    assert data["all_hold"] == (not on_tansu(stack))
    assert [c["holds"] for c in data["checks"]] == [c.holds for c in report.checks]


def test_probe_leaves_no_topic_behind(report, stack):
    assert not [t for t in stack.list_topics() if ".probe-" in t]


def test_kafka_transaction_and_postgres_commit_independently(stack):
    result = guarantees.kafka_txn_vs_postgres(stack)
    kafka_first = result[guarantees.KAFKA_COMMITS]
    assert len(kafka_first.kafka_holds) == 1 and kafka_first.postgres_holds == []
    postgres_first = result[guarantees.POSTGRES_COMMITS]
    assert postgres_first.kafka_holds == [] and len(postgres_first.postgres_holds) == 1
    assert not kafka_first.agree and not postgres_first.agree
    assert "<table>" in result._repr_html_()
    assert not [t for t in stack.list_topics() if ".txn-vs-pg-" in t]
    with psycopg.connect(stack.postgres_dsn("postgres")) as conn:
        left = conn.execute("select datname from pg_database where datname like %s",
                            (stack.database("txn_vs_pg_") + "%",)).fetchall()
    assert left == []


def test_probe_command_prints_json(stack):
    result = run_cli("probe", "--json", "--only", IDEMPOTENT_PRODUCER, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["broker_flavor"] == stack.broker_flavor
    assert [c["guarantee"] for c in data["checks"]] == [IDEMPOTENT_PRODUCER]
    assert data["checks"][0]["holds"] is True


