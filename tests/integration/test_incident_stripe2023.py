"""Stripe 2023 replayed on the real pipeline: redrive-all is throttled by the provider, a paced redrive is not."""

from __future__ import annotations

import pytest

from effectively_once.incidents import stripe2023
from effectively_once.incidents.redrive import RedriveResult

MESSAGES = 180
LIMIT = 30.0
RATE = 12.0


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


@pytest.fixture(scope="module")
def runs(stack):
    with stripe2023.FloodLab(stack, provider_limit=LIMIT) as lab:
        flood = lab.run(None, MESSAGES, seed=1)
        paced = lab.run(RATE, MESSAGES, seed=2)
    return flood, paced


@pytest.mark.integration
def test_redrive_all_arrives_in_one_burst_and_is_throttled(runs):
    flood, _ = runs
    assert flood.redrive.sent == MESSAGES and flood.redrive.max_in_window(1.0) == MESSAGES
    assert flood.throttled > 0, f"the pool should have outrun the provider's {LIMIT}/s: {flood.summary()}"
    assert flood.retries >= 1, flood.summary()
    # The provider's limiter was full when it refused: the pool reached the limit.
    assert max(flood.accepted_in_last_second()[1]) >= LIMIT - 1
    # Throttled, not broken: every charge went through once, thanks to retries with the same key.
    assert flood.charged_messages == MESSAGES and flood.duplicate_charges == 0, flood.summary()


@pytest.mark.integration
def test_the_flood_refuses_and_delays_live_checkouts_and_the_paced_redrive_does_not(runs):
    flood, paced = runs
    assert flood.checkouts_refused > 0, f"live checkouts shared the limit with the flood: {flood.summary()}"
    assert flood.checkout_latency(0.99) >= 1.0, "a refused checkout waits its Retry-After second"
    assert paced.checkouts_refused == 0 and paced.checkout_latency(0.99) < 1.0, paced.summary()
    assert len(paced.checkouts) > 0


@pytest.mark.integration
def test_a_paced_redrive_drains_without_a_single_429(runs):
    _, paced = runs
    assert paced.redrive.max_in_window(1.0) <= RATE + 1, "the token bucket keeps any second at rate + burst"
    assert paced.throttled == 0 and paced.retries == 0 and paced.live_throttled == 0, paced.summary()
    assert len(paced.live) > 0, "live checkouts ran during the paced redrive"
    assert paced.charged_messages == MESSAGES and paced.duplicate_charges == 0 and paced.redead_lettered == 0
    assert max(paced.accepted_in_last_second()[1]) < LIMIT
    # Pacing costs time: it cannot finish before MESSAGES / RATE seconds of sending.
    assert paced.drain_seconds >= (MESSAGES - 1) / RATE


@pytest.mark.integration
def test_both_render(runs):
    import matplotlib

    matplotlib.use("Agg")
    flood, paced = runs
    assert "429" in flood._repr_html_() and "no 429" in paced._repr_html_()
    fig = stripe2023.plot_side_by_side(flood, paced)
    assert len(fig.axes) == 6, "arrivals, the limiter and the live checkouts, for each run"


def test_live_checkouts_count_refusals_and_waits():
    replay = _replay([(0.0, 200)], finished=[(1.0, "charged", 0)])
    replay.checkouts = [(0.1, 0.02, 1, 200), (0.2, 1.03, 2, 200), (0.3, 2.05, 3, 429), (0.4, 0.03, 1, 200)]
    assert replay.checkouts_refused == 2 and replay.checkouts_failed == 1
    assert replay.checkout_latency(0.5) == 0.03 and replay.checkout_latency(0.99) == 2.05
    assert "2 of 4 live checkouts were refused at least once" in replay.verdict()
