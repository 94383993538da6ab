"""Group churn: two consumers in one group, SIGKILLed at random for 45 s, on the session's broker.

Runs in both passes of `make test`. Every message must end up charged exactly
once, whatever the broker; how many were charged *while* the kills went on is
the broker's own story (the test prints it), because a group that cannot
settle between kills makes no progress until the kills stop.
"""

from __future__ import annotations

import random
import time

import psycopg
import pytest

from effectively_once.payments.lab import PaymentLab

pytestmark = [pytest.mark.integration, pytest.mark.tansu_pass]

MESSAGES = 200
CHURN_SECONDS = 45.0
SETTLE_SECONDS = 240.0


def _charged(shop_dsn: str, ids: list[str]) -> int:
    with psycopg.connect(shop_dsn) as conn:
        return conn.execute("SELECT count(*) FROM charges WHERE msg_id = ANY(%s) AND status = 'done'",
                            (ids,)).fetchone()[0]


def test_two_consumers_killed_at_random_for_45_s_charge_each_message_exactly_once(stack, capsys):
    rng = random.Random(45)
    with PaymentLab(stack, "both") as lab:
        assert len(stack.admin().list_topics(lab.topic, timeout=10).topics[lab.topic].partitions) == 3
        # Each charge takes 250 ms at the provider: 200 charges are 25 s of work for two healthy consumers,
        # so the kills land while there is work to take over.
        lab.start_provider(fail_after_charge=0.10, latency_ms=250)
        ids = lab.produce(MESSAGES, seed=45)
        slots = [lab.start_consumer(exit_when_idle=None), lab.start_consumer(exit_when_idle=None)]
        kills = 0
        started = time.monotonic()
        next_kill = started + rng.uniform(1.5, 4.0)
        while time.monotonic() - started < CHURN_SECONDS:
            now = time.monotonic()
            if now >= next_kill:
                victim = rng.randrange(2)
                if slots[victim].running:
                    slots[victim].kill()
                    kills += 1
                next_kill = now + rng.uniform(1.5, 4.0)
            for i, consumer in enumerate(slots):
                if not consumer.running:
                    assert consumer.returncode == -9, f"a consumer died on its own:\n{consumer.log_tail()}"
                    slots[i] = lab.start_consumer(exit_when_idle=None)
            time.sleep(0.05)
        during = _charged(lab.shop_dsn, ids)
        with capsys.disabled():
            print(f"\n[churn] {stack.broker_flavor}: {during} of {MESSAGES} charged during {CHURN_SECONDS:.0f} s of "
                  f"churn ({kills} SIGKILLs)", flush=True)
        for consumer in slots:
            consumer.kill()
        lab.set_faults(fail_after_charge=0, latency_ms=0)
        settle_started = time.monotonic()
        try:
            lab.run_until_settled(timeout=SETTLE_SECONDS)
        except TimeoutError as exc:
            last = lab.consumers[-1]
            raise AssertionError(f"{_charged(lab.shop_dsn, ids)} of {MESSAGES} charged {SETTLE_SECONDS:.0f} s after "
                                 f"the kills stopped ({exc}); the last consumer's log:\n{last.log_tail()}") from None
        settle = time.monotonic() - settle_started
        report = lab.report()
        charged_once = _charged(lab.shop_dsn, ids)
        with capsys.disabled():
            print(f"[churn] {stack.broker_flavor}: the rest within {settle:.1f} s after the kills stopped; "
                  f"duplicates {report.duplicate_charges}, lost {report.lost_charges}")
    assert kills >= 10, f"only {kills} kills in {CHURN_SECONDS} s: the test did not churn the group"
    assert report.ok and report.charges == MESSAGES, report
    assert charged_once == MESSAGES
