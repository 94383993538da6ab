"""Unit tests of the pure models: the Two Generals checker and the lossy channel."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effectively_once.theory import channel, generals
from effectively_once.theory.generals import ATTACK, RETREAT, Run

# --- Two Generals ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(0, 9))
def test_no_rule_meets_all_requirements(n):
    result = generals.exhaustive_check(n)
    assert result.rules_checked == 2 ** (result.views_a + result.views_b)
    assert result.meeting_all == 0
    # The requirements are not vacuous: each part alone is met by some rules.
    assert result.meeting_agreement >= 2
    if n >= 1:
        assert result.meeting_validity >= 1


def test_check_counts_match_a_plain_enumeration():
    """Recount n=3 by brute force in plain Python, independently of the numpy version."""
    n = 3
    views_a, views_b = generals._views(n)
    runs = generals.all_runs(n)
    agree = valid = both = 0
    for ka in range(2 ** len(views_a)):
        for kb in range(2 ** len(views_b)):
            da = {v: ATTACK if ka >> i & 1 else RETREAT for i, v in enumerate(views_a)}
            db = {v: ATTACK if kb >> i & 1 else RETREAT for i, v in enumerate(views_b)}
            broken = {req for r in runs for req in generals.broken_requirements(r, da[r.view_a()], db[r.view_b()])}
            agree += "agreement" not in broken
            valid += not broken & {"attack when all goes well", "retreat when told to"}
            both += not broken
    result = generals.exhaustive_check(n)
    assert (result.meeting_agreement, result.meeting_validity, result.meeting_all) == (agree, valid, both)


def test_checker_accepts_a_rule_when_the_channel_is_reliable():
    """Sanity of the requirements: if no message could be lost, 'full handshake' would be correct."""
    rule = generals.first_try_rules(4)[-1]
    for run in generals.all_runs(4):
        if run.delivered == 4:
            a, b = rule.decisions(run)
            assert not generals.broken_requirements(run, a, b)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 6])
def test_every_first_try_rule_is_broken(n):
    for rule in generals.first_try_rules(n):
        violation = generals.find_violation(rule, n)
        assert violation is not None, rule.name
        assert violation.requirement in generals.REQUIREMENTS
        a, b = rule.decisions(violation.run)
        assert violation.requirement in generals.broken_requirements(violation.run, a, b)


def test_handshake_breaks_when_the_last_message_is_lost():
    violation = generals.find_violation(generals.first_try_rules(4)[-1], 4)
    assert violation.run == Run(ATTACK, 3, 4)
    assert violation.run.lost == 4 and violation.requirement == "agreement"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_proof_walks_from_all_delivered_to_a_contradiction(n):
    steps = generals.proof_steps(n)
    assert len(steps) == n + 2
    assert steps[0].run == Run(ATTACK, n, n) and steps[0].forced == ATTACK
    for before, after in pairwise(steps[:-1]):
        assert after.run.delivered == before.run.delivered - 1
        view = Run.view_a if after.unaware == "A" else Run.view_b
        assert view(after.run) == view(before.run)
    last = steps[-1]
    assert last.run == Run(RETREAT, 0, n) and last.forced == RETREAT
    assert last.run.view_b() == steps[-2].run.view_b() and steps[-2].forced == ATTACK


def test_views_hide_whether_your_last_message_arrived():
    assert Run(ATTACK, 2, 4).view_a() == Run(ATTACK, 3, 4).view_a()
    assert Run(ATTACK, 3, 4).view_b() == Run(ATTACK, 4, 4).view_b()
    assert Run(ATTACK, 3, 4).view_a() != Run(ATTACK, 4, 4).view_a()


def test_run_rejects_bad_input():
    with pytest.raises(ValueError, match="order must be"):
        Run("charge", 0, 2)
    with pytest.raises(ValueError, match="delivered"):
        Run(ATTACK, 3, 2)
    with pytest.raises(ValueError, match="keep n_messages"):
        generals.exhaustive_check(12)


def test_dedup_log_gives_one_effect_per_id():
    demo = generals.one_sided_demo(n_messages=50, duplicate_rate=0.5, seed=3)
    assert demo["deliveries"] > demo["distinct_ids"]
    assert demo["effects"] == demo["distinct_ids"] and demo["max_effects_per_id"] == 1
    assert demo["dedup_hits"] == demo["deliveries"] - demo["distinct_ids"]


# --- the lossy channel ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 200), p=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
       q=st.sampled_from([0.0, 0.2, 0.6, 1.0]), retries=st.integers(0, 4), seed=st.integers(0, 10_000))
def test_vectorised_loop_and_events_agree(n, p, q, retries, seed):
    draws = channel.draw(n, p, q, max_retries=4, seed=seed)
    for sem in channel.SEMANTICS:
        sem = sem.with_retries(retries)
        fast = channel.simulate(draws, sem)
        assert fast == channel.simulate_loop(draws, sem)
        assert fast == channel.totals_from_events(list(channel.iter_events(draws, sem)), sem.name, n)
        assert fast.lost + fast.duplicated + fast.exactly_once == n


@settings(max_examples=30, deadline=None)
@given(p=st.floats(0, 0.95), q=st.floats(0, 0.95), seed=st.integers(0, 10_000))
def test_semantics_keep_their_promises(p, q, seed):
    draws = channel.draw(300, p, q, max_retries=5, seed=seed)
    t = channel.compare(draws)
    every_send_lost = int((draws.sends == channel.SEND_LOST).all(axis=1).sum())
    assert t["at-most-once"].duplicated == 0
    assert t["at-least-once"].lost == every_send_lost
    assert t["effectively-once"].duplicated == 0
    assert t["effectively-once"].lost == every_send_lost
    assert t["at-least-once + idempotent producer"].broker_dropped == t["at-least-once"].stored_copies - \
        t["at-least-once + idempotent producer"].stored_copies


def test_at_most_once_loses_what_the_network_loses():
    draws = channel.draw(20_000, 0.1, 0.3, seed=7)
    t = channel.simulate(draws, channel.AT_MOST_ONCE)
    assert t.lost == int((draws.sends[:, 0] == channel.SEND_LOST).sum())
    assert 0.08 < t.lost / t.sent < 0.12


def test_loss_rates_are_what_was_asked():
    draws = channel.draw(200_000, 0.2, 0.3, seed=1)
    first = draws.sends[:, 0]
    assert abs((first == channel.SEND_LOST).mean() - 0.2) < 0.005
    assert abs((first == channel.STORED_ACK_LOST).mean() - 0.8 * 0.3) < 0.005
    assert abs((draws.redeliveries[:, 0] >= 1).mean() - 0.3) < 0.005


def test_idempotent_producer_alone_still_duplicates_on_redelivery():
    t = channel.compare(channel.draw(5000, 0.1, 0.2, seed=2))
    idem = t["at-least-once + idempotent producer"]
    assert idem.stored_copies == idem.sent - idem.lost
    assert idem.duplicated > 0   # lost commits redeliver: the consumer runs the effect again
    assert t["at-least-once"].duplicated > idem.duplicated


def test_same_seed_same_run_other_seed_other_run():
    a, b, c = (channel.draw(1000, 0.2, 0.2, seed=s) for s in (5, 5, 6))
    assert np.array_equal(a.sends, b.sends) and np.array_equal(a.redeliveries, b.redeliveries)
    assert not np.array_equal(a.sends, c.sends)


def test_channel_rejects_bad_input():
    with pytest.raises(ValueError, match="probability"):
        channel.draw(10, 1.5, 0.1)
    with pytest.raises(ValueError, match="max_retries"):
        channel.draw(10, 0.1, 0.1, max_retries=99)
    with pytest.raises(ValueError, match="draw again"):
        channel.simulate(channel.draw(10, 0.1, 0.1, max_retries=2), channel.AT_LEAST_ONCE)


def test_event_log_of_a_lost_ack_shows_the_duplicate():
    draws = channel.draw(2000, 0.0, 0.5, seed=4)
    sem = channel.AT_LEAST_ONCE
    i = int(np.argmax(draws.sends[:, 0] == channel.STORED_ACK_LOST))
    kinds = [e.kind for e in channel.message_events(draws, sem, i)]
    assert kinds[:4] == ["send", "stored", "ack_lost", "timeout"]
    stored = [e for e in channel.message_events(draws, sem, i) if e.kind == "stored"]
    assert len(stored) >= 2 and stored[1].duplicate and stored[1].retry
