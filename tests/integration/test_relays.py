"""Two outbox relays with SKIP LOCKED publish one customer's messages out of order; one relay does not."""

from __future__ import annotations

import pytest

from effectively_once.payments.relays import RelayRace


def test_two_relays_reorder_and_one_relay_keeps_the_order(stack):
    with RelayRace(stack) as race:
        two = race.run(relays=2)
        one = race.run(relays=1)
        assert race.outbox_size() == 4
        assert race.clean(older_than_seconds=3600) == 0, "nothing is an hour old yet"
        assert race.clean(older_than_seconds=0) == 4
        assert race.outbox_size() == 0
    assert two.steps == [("B", two.inserted[1]), ("A", two.inserted[0])]
    assert two.published == two.inserted[::-1] and not two.in_order
    assert one.published == one.inserted and one.in_order


def test_a_race_takes_one_or_two_relays(stack):
    with RelayRace(stack) as race, pytest.raises(ValueError, match="1 or 2"):
        race.run(relays=3)
