"""Group churn: two consumers in one group, SIGKILLed at random for 45 s while new charges keep arriving.

Runs in make test and again in make test-tansu, on the run's stack. The
provider fails after charging one request in ten, so retries meet the key
store; a new batch of 100 charges arrives every 5 s, so the kills land while
there is work to take over. Every 5 s no message may have been charged twice;
at the end every message is charged exactly once and every shop row is 'done'.
How many were charged *while* the kills went on is the broker's own story (the
test prints it): a group that cannot settle between kills makes no progress
until the kills stop.
"""

from __future__ import annotations

import random
import signal
import time

import psycopg
import pytest

from effectively_once.payments.lab import PaymentLab
from tests.integration.test_faults import PATIENT, ledger_counts, replace_exited, wait_for_charges

pytestmark = pytest.mark.tansu_pass

MESSAGES = 200
CHURN_SECONDS = 45.0
SETTLE_SECONDS = 240.0


def _charged(shop_dsn: str, ids: list[str]) -> int:
    with psycopg.connect(shop_dsn) as conn:
        return conn.execute("SELECT count(*) FROM charges WHERE msg_id = ANY(%s) AND status = 'done'",
                            (ids,)).fetchone()[0]


def test_two_consumers_killed_at_random_for_45_s_charge_each_message_exactly_once(stack, capsys):
    rng = random.Random(45)
    with PaymentLab(stack, "both", partitions=3) as lab:
        assert len(stack.admin().list_topics(lab.topic, timeout=10).topics[lab.topic].partitions) == 3
        lab.start_provider(fail_after_charge=0.10, latency_ms=50, in_flight_timeout=3)
        lab.produce(MESSAGES, seed=45)
        for _ in range(2):
            lab.start_consumer(exit_when_idle=None, batch_size=20, **PATIENT)
        exits: list[int] = []
        started = time.monotonic()
        kills, next_report, next_batch = 0, started + 5, started + 5
        while time.monotonic() - started < CHURN_SECONDS:
            time.sleep(rng.uniform(1.0, 4.0))
            running = [c for c in lab.consumers if c.running]
            if running:
                rng.choice(running).kill()
                kills += 1
            if rng.random() < 0.7:  # most kills are followed at once by a new consumer, some a little later
                exits += replace_exited(lab, 2, batch_size=20)
            now = time.monotonic()
            if now >= next_batch:
                lab.produce(100, seed=rng.randrange(10**6))
                next_batch = now + 5
            if now >= next_report:
                rows, distinct = ledger_counts(lab)
                with capsys.disabled():
                    print(f"[churn] {stack.broker_flavor} t={now - started:4.1f} s: {kills} SIGKILLs, "
                          f"{len(lab.consumers)} consumers started, {len(lab.sent)} produced, {distinct} charged "
                          f"({rows - distinct} twice), lag {lab.lag()}", flush=True)
                assert rows == distinct, f"{rows - distinct} message(s) charged twice during the kills"
                next_report = now + 5
        messages = len(lab.sent)
        during = _charged(lab.shop_dsn, lab.msg_ids)
        with capsys.disabled():
            print(f"\n[churn] {stack.broker_flavor}: {during} of {messages} charged during {CHURN_SECONDS:.0f} s "
                  f"of churn ({kills} SIGKILLs)", flush=True)
        lab.set_faults(fail_after_charge=0, latency_ms=0)
        settle_started = time.monotonic()
        exits += replace_exited(lab, 2, batch_size=20)
        try:
            wait_for_charges(lab, messages, SETTLE_SECONDS,
                             keep=lambda: exits.extend(replace_exited(lab, 2, batch_size=20)))
        except TimeoutError as exc:
            raise AssertionError(f"not every message charged {SETTLE_SECONDS:.0f} s after the kills stopped: "
                                 f"{exc}") from None
        assert set(exits) <= {-signal.SIGKILL}, f"a consumer died on its own: exit codes {sorted(set(exits))}"
        # Every message is charged; now the offsets: a last consumer, alone in the group, commits what the killed
        # ones left and exits once idle (on Tansu a group settles only once the kills stop).
        for consumer in lab.consumers:
            if consumer.running:
                consumer.kill()
        try:
            lab.run_until_settled(timeout=SETTLE_SECONDS)
        except TimeoutError as exc:
            raise AssertionError(f"the group had not settled {SETTLE_SECONDS:.0f} s after the kills stopped ({exc}); "
                                 f"the last consumer's log:\n{lab.consumers[-1].log_tail()}") from None
        with psycopg.connect(lab.shop_dsn) as conn:
            done = conn.execute("SELECT count(*) FILTER (WHERE status = 'done'), count(*) FROM charges"
                                " WHERE msg_id = ANY(%s)", (lab.msg_ids,)).fetchone()
        report = lab.report()
        charged_once = _charged(lab.shop_dsn, lab.msg_ids)
        with psycopg.connect(lab.shop_dsn) as conn:
            workers, redone = conn.execute(
                "SELECT count(DISTINCT consumer_pid), count(*) FILTER (WHERE dedup_hit) FROM consumer_events"
                " WHERE topic = %s", (lab.topic,)).fetchone()
        with capsys.disabled():
            print(f"[churn] {stack.broker_flavor}: {kills} SIGKILLs over {len(lab.consumers)} consumers "
                  f"({workers} charged something); all {messages} charged "
                  f"{time.monotonic() - settle_started:.1f} s after the kills stopped; {redone} redeliveries "
                  f"absorbed by the dedup table; duplicates {report.duplicate_charges}, lost {report.lost_charges}")
    assert kills >= 10, f"only {kills} kills in {CHURN_SECONDS:.0f} s: the test did not churn the group"
    assert report.ok and report.charges == messages, report
    assert report.dlq == 0, report
    assert done == (messages, messages), f"shop rows done/total {done}, expected {messages} of each"
    assert charged_once == messages
