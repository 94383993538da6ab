"""The transactional outbox and the inbox (payments/outbox.py), with a relay killed by SIGKILL, on the real stack."""

from __future__ import annotations

import psycopg
import pytest

from effectively_once.payments.outbox import OutboxLab, place_order


def test_a_relay_killed_between_publish_and_mark_loses_nothing_and_the_inbox_doubles_nothing(stack):
    with OutboxLab(stack, seed=5) as lab:
        ids = lab.place_orders(4)
        crashed = lab.start_relay(crash_after_publish=True)
        crashed.wait(60)
        assert crashed.crashed_after_publish, crashed.log_tail()
        assert not any(lab.outbox_rows().column("published")), "the crashed relay's UPDATE must not have committed"
        assert sorted(lab.published()) == sorted(ids)
        again = lab.start_relay()
        assert again.wait(60) == 0, again.log_tail()
        assert all(lab.outbox_rows().column("published"))
        assert sorted(lab.published()) == sorted(ids + ids), "the restarted relay publishes every row again"
        assert lab.apply_inbox() == {"records": 8, "shipped": 4, "duplicates_absorbed": 4}
        assert lab.counts() == {"orders": 4, "outbox": 4, "inbox": 4, "shipments": 4}
        assert lab.apply_inbox()["shipped"] == 0, "a second pass over the topic ships nothing"


def test_an_order_and_its_message_commit_or_vanish_together(stack):
    with OutboxLab(stack) as lab:
        lab.place_orders(1)
        with psycopg.connect(lab.dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.UniqueViolation):
            place_order(conn, "ord-000", "cus_001", 100, lab.topic)  # the order exists: the outbox row rolls back
        assert lab.counts()["outbox"] == 1 and lab.counts()["orders"] == 1
