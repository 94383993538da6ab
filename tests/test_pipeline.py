"""The payment pipeline against the real broker, PostgreSQL, HTTP and SIGKILL.

The crash matrix runs every crash point against every layer set. One provider
and one shop database serve all its scenarios: each scenario has its own topic,
consumer group and msg_id prefix, and its report counts only its own msg_ids
and its own topic's events, so sharing them hides nothing. The scenarios run a
few at a time (they mostly wait on process start-up and group joins).
"""

from __future__ import annotations

import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from effectively_once import stack as stack_mod
from effectively_once.payments.children import ProviderProcess
from effectively_once.payments.consumer import CRASH_POINTS
from effectively_once.payments.lab import LAYER_SETS, PaymentLab, run_scenario

pytestmark = pytest.mark.integration

MESSAGES = 5

# (duplicate_charges, lost_charges, dedup_hits, key_replays) after one crash on the first
# message and a restart. Only that message is ever processed twice: the crash comes on
# the first record the consumer handles, so nothing before it waits for an offset commit.
OK = (0, 0, 0, 0)
EXPECTED = {
    ("before_dedup_insert", "both"): OK,
    ("before_dedup_insert", "dedup_only"): OK,
    ("before_dedup_insert", "idempotency_key_only"): OK,
    ("before_dedup_insert", "none"): OK,
    ("before_dedup_insert", "dedup_as_written"): OK,
    # The row is 'pending' and no money moved yet: the recovery rule retries it...
    ("after_dedup_insert", "both"): (0, 0, 1, 0),
    ("after_dedup_insert", "dedup_only"): (0, 0, 1, 0),
    ("after_dedup_insert", "idempotency_key_only"): OK,
    ("after_dedup_insert", "none"): OK,
    # ...while the lesson's literal "0 rows: skip" loses the charge (trap 1).
    ("after_dedup_insert", "dedup_as_written"): (0, 1, 1, 0),
    # The money moved but the row still says 'pending': only the key stops a second charge (trap 2).
    ("after_provider_call", "both"): (0, 0, 1, 1),
    ("after_provider_call", "dedup_only"): (1, 0, 1, 0),
    ("after_provider_call", "idempotency_key_only"): (0, 0, 0, 1),
    ("after_provider_call", "none"): (1, 0, 0, 0),
    ("after_provider_call", "dedup_as_written"): (0, 0, 1, 0),
    # 'done' but the offset was not committed: the redelivery is a dedup hit, or a replay, or a duplicate.
    ("after_status_update", "both"): (0, 0, 1, 0),
    ("after_status_update", "dedup_only"): (0, 0, 1, 0),
    ("after_status_update", "idempotency_key_only"): (0, 0, 0, 1),
    ("after_status_update", "none"): (1, 0, 0, 0),
    ("after_status_update", "dedup_as_written"): (0, 0, 1, 0),
}


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
        point, layers, expire = args
        return run_scenario(stack, point, layers, MESSAGES, seed=7, provider=provider, shop_dsn=shop_dsn,
                            expire_keys=expire, exit_when_idle=0.5, timeout=90)

    jobs = [(point, layers, False) for point, layers in EXPECTED]
    jobs.append(("after_provider_call", "both", True))
    with ThreadPoolExecutor(max_workers=3) as pool:
        reports = list(pool.map(scenario, jobs))
    return dict(zip([(p, layers, e) for p, layers, e in jobs], reports))


def test_matrix_covers_every_crash_point_and_layer_set():
    assert {p for p, _ in EXPECTED} == set(CRASH_POINTS)
    assert {layers for _, layers in EXPECTED} == set(LAYER_SETS)


@pytest.mark.parametrize("point,layers", list(EXPECTED))
def test_crash_matrix(matrix, point, layers):
    report = matrix[(point, layers, False)]
    got = (report.duplicate_charges, report.lost_charges, report.dedup_hits, report.key_replays)
    assert got == EXPECTED[(point, layers)], (
        f"crash at {point} with layers {layers}: (duplicates, lost, dedup hits, key replays) = {got}, "
        f"expected {EXPECTED[(point, layers)]}; duplicated {report.duplicated}, lost {report.lost}")
    assert report.messages == MESSAGES and report.dlq == 0
    # Every charge in the ledger is one of ours: the money that moved is messages + duplicates - lost.
    assert report.charges == MESSAGES + report.duplicate_charges - report.lost_charges


def test_both_layers_never_duplicate_nor_lose(matrix):
    for point in CRASH_POINTS:
        report = matrix[(point, "both", False)]
        assert report.ok, f"both layers failed at {point}: {report}"


def test_a_key_past_its_ttl_lets_a_duplicate_through(matrix):
    """Trap 2: the key only closes the window while the provider keeps it."""
    report = matrix[("after_provider_call", "both", True)]
    assert report.duplicate_charges == 1 and report.key_replays == 0, report
    assert report.lost_charges == 0
