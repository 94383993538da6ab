"""Stripe 2023 without the pipeline: the limiter view and the live checkouts' arithmetic."""

from __future__ import annotations

import pytest

from effectively_once.incidents import stripe2023
from effectively_once.incidents.redrive import RedriveResult

LIMIT = 30.0


def _replay(answers, finished=(), live=(), rate=None):
    redrive = RedriveResult("dlq", "src", rate, None, len(finished), len(finished))
    return stripe2023.FloodReplay(rate=rate, messages=len(finished), provider_limit=LIMIT, consumers=1,
                                  redrive=redrive, answers=list(answers), finished=list(finished), live=list(live))


def test_the_limiter_view_counts_accepted_charges_in_the_trailing_second():
    replay = _replay([(0.0, 200), (0.2, 200), (0.4, 429), (0.9, 200), (1.1, 200)], finished=[(1.1, "charged", 1)],
                     live=[(0.5, 200), (0.6, 429)])
    times, counts = replay.accepted_in_last_second(step=0.1)
    at = dict(zip((round(t, 1) for t in times), counts, strict=True))
    assert at[0.0] == 1 and at[0.5] == 3 and at[0.9] == 4   # 0.0, 0.2, live 0.5, 0.9 (429s not counted)
    assert at[1.1] == 4                                       # 0.0 has left the window, 1.1 has come in
    assert at[1.3] == 3                                       # and 0.2 has left it too
    assert replay.throttled == 1 and replay.live_throttled == 1 and replay.retries == 1
    assert replay.peak_answer_rate(1.0) == 4                 # consumer answers in [0.0, 1.0): 0.0, 0.2, 0.4, 0.9


def test_run_needs_a_started_lab():
    with pytest.raises(RuntimeError, match="start the FloodLab"):
        stripe2023.FloodLab(object()).run(None, 10)


def test_live_checkouts_count_refusals_and_waits():
    replay = _replay([(0.0, 200)], finished=[(1.0, "charged", 0)])
    replay.checkouts = [(0.1, 0.02, 1, 200), (0.2, 1.03, 2, 200), (0.3, 2.05, 3, 429), (0.4, 0.03, 1, 200)]
    assert replay.checkouts_refused == 2 and replay.checkouts_failed == 1
    assert replay.checkout_latency(0.5) == 0.03 and replay.checkout_latency(0.99) == 2.05
    assert "2 of 4 live checkouts were refused at least once" in replay.verdict()


def test_the_outcome_counts_429s_to_the_pool_and_to_live_checkouts():
    assert _replay([(0.0, 200)], live=[(0.1, 429)]).outcome == stripe2023.THROTTLED
    calm = _replay([(0.0, 200)], rate=12.0)
    assert calm.outcome == stripe2023.NOT_THROTTLED == calm.expected_outcome
    assert _replay([(0.0, 429)]).expected_outcome == stripe2023.THROTTLED
