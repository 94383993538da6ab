"""The pure models behind two claims: a dedup log needs an atomic write, and a leaked abort needs derived ids."""

from __future__ import annotations

import pytest

from effectively_once.guarantees.leak import DERIVED, FRESH, PHANTOM, RETRIED, ZOMBIE, compare_leaks, consume
from effectively_once.theory.generals import DedupLog, crash_then_redeliver


def test_only_an_atomic_dedup_log_gives_exactly_one_effect_across_a_crash():
    assert crash_then_redeliver("atomic") == {"effects": 1, "dedup_hits": 0}
    assert crash_then_redeliver("effect_then_log")["effects"] == 2, "effect done, log entry lost: charged twice"
    assert crash_then_redeliver("log_then_effect")["effects"] == 0, "log entry written, effect lost: never charged"


def test_a_dedup_log_refuses_an_unknown_write_order():
    with pytest.raises(ValueError):
        DedupLog("sometimes")


def test_a_reader_that_hides_aborted_records_charges_each_committed_order_once():
    for story in (RETRIED, ZOMBIE):
        for ids in (DERIVED, FRESH):
            outcome = consume(story, ids, hides_aborted=True)
            assert outcome.correct, (story, ids, outcome.charged)
    assert consume(PHANTOM, FRESH, hides_aborted=True).charged == {"order-1": 0, "order-2": 0, "order-3": 0}


def test_a_leaky_reader_is_saved_by_derived_ids_only_when_the_abort_is_retried():
    assert consume(RETRIED, DERIVED, hides_aborted=False).correct
    assert consume(ZOMBIE, DERIVED, hides_aborted=False).correct
    twice = consume(RETRIED, FRESH, hides_aborted=False)
    assert set(twice.charged.values()) == {2} and not twice.correct, "fresh ids charge every order twice"
    phantom = consume(PHANTOM, DERIVED, hides_aborted=False)
    assert set(phantom.charged.values()) == {1} and set(phantom.intended.values()) == {0}, \
        "an abort never retried is charged although nothing committed"


def test_the_comparison_covers_every_story_id_scheme_and_reader():
    comparison = compare_leaks()
    assert len(comparison.outcomes) == 3 * 2 * 2
    assert comparison.get(PHANTOM, DERIVED, hides_aborted=False).summary().startswith("WRONG")
