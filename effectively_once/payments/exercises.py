"""The checks of the payment exercises (labs 04 and 04e): what is wrong, and only then a hint.

A lab's check cell calls one of these on the live run it made. Each raises an
``AssertionError`` whose message says what went wrong and, for that case only,
the hint or the reasoning; a learner who has not tried yet sees none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from effectively_once.payments.matrix import ABSORBERS, DEDUP, DID_NOT_RUN, KEY, CrashMatrix
from effectively_once.protocol import CRASH_POINTS

if TYPE_CHECKING:
    from effectively_once.payments.webhook_lab import HandlerRun

# Exercise 1, writing charge_once: what to look at when the crash at each point went wrong.
_STEP_HINTS = {
    "before_dedup_insert": "nothing had happened yet, so the restart is a first attempt: a plain INSERT, "
                           "charge, UPDATE should pass here",
    "after_dedup_insert": "the crashed attempt left a 'pending' row and moved no money: on a conflict, "
                          "read the row's status and charge unless it is 'done'",
    "after_provider_call": "the money moved but the row still says 'pending': the second call must carry "
                           "the same Idempotency-Key, derived from the message (idempotency_key_for(msg.msg_id))",
    "after_status_update": "the row is 'done': return Outcome('skipped', dedup_hit=True) before calling "
                           "the provider",
}

# Exercise 2, which layer absorbs the redelivery: why the live run says what it says.
_WHY = {
    "before_dedup_insert": "the process died before writing anything, so the redelivery is the first attempt",
    "after_dedup_insert": "the row was 'pending' and no money had moved: the dedup table is consulted, "
                          "but the right thing is to charge, for the first time",
    "after_provider_call": "the money moved while the row still said 'pending', so the consumer calls "
                           "again and only the provider's key store stops a second charge",
    "after_status_update": "the row says 'done', so the dedup table skips the message before any call",
}


def check_charge_step(checked: CrashMatrix) -> None:
    """Exercise 1: the learner's step, crashed at every point with both layers, charged each message once."""
    for point in checked.crash_points:
        cell = checked.cell(point, "both")
        assert cell.outcome != DID_NOT_RUN, (
            f"With a crash at {point} the consumer could not run your step: {cell.how}. "
            "Fix charge_once, run its cell again, then this one.")
        assert cell.ok, f"{cell.problem()}. Hint: {_STEP_HINTS[point]}."
        statuses = [r["status"] for r in cell.shop or ()]
        assert statuses == ["done"] * checked.messages, (
            f"crash at {point}: every charged message should end with a 'done' row in charges, found "
            f"{statuses or 'no rows'}. Insert the row first and mark it 'done' after the provider call.")
    late = checked.cell("after_status_update", "both")
    assert late.absorbed_by == DEDUP, (
        f"crash at after_status_update: the redelivered message reached the provider ({late.how}). "
        f"Hint: {_STEP_HINTS['after_status_update']}.")
    middle = checked.cell("after_provider_call", "both")
    assert middle.absorbed_by == KEY, (
        f"crash at after_provider_call: the provider did not replay the first charge ({middle.how}). "
        f"Hint: {_STEP_HINTS['after_provider_call']}.")


def check_absorber_answer(answer: Mapping[str, str]) -> None:
    """Exercise 2, before the live run: one answer per crash point, each one of ``ABSORBERS``."""
    assert set(answer) == set(CRASH_POINTS), (
        f"give one answer for each crash point: {', '.join(CRASH_POINTS)} (you gave {sorted(answer)})")
    bad = {p: a for p, a in answer.items() if a not in ABSORBERS}
    assert not bad, f"each answer must be one of {ABSORBERS}, not {bad}"


def check_absorbers(answer: Mapping[str, str], live: CrashMatrix) -> None:
    """Exercise 2: the predicted absorbing layer at each crash point is the one the live run shows."""
    check_absorber_answer(answer)
    for point in CRASH_POINTS:
        cell = live.cell(point, "both")
        assert cell.ok, f"the live run itself went wrong: {cell.problem()}"
        assert answer[point] == cell.absorbed_by, (
            f"at {point} you said {answer[point]!r}, the live run says {cell.absorbed_by!r} "
            f"({cell.how}): {_WHY[point]}.")


# Lab 04e, writing the inbox's record_event: what to look at when a part of the live run went wrong.
_INBOX_HINTS = {
    "failed": "the receiver answered 500 because record_event raised; its log is above. Fix the function, run its "
              "cell again, then this one",
    "recorded": "INSERT the event into webhook_inbox (event_id, type, object_id, msg_id, payload) ... ON CONFLICT "
                "(event_id) DO NOTHING, first thing in the transaction",
    "receipt twice": "a duplicate delivery repeated the receipt: when the INSERT inserted no row (rowcount 0), "
                     "return \"duplicate\" before any effect",
    "no receipt": "for a payment that succeeded (payment is not None), call send_receipt(conn, event[\"id\"], "
                  "payment) after the INSERT",
    "pending": "settle the message's row from the event: settle(conn, payment) marks a 'pending' row 'done'",
    "answer": "return \"duplicate\" when the inbox already held the event, \"recorded\" otherwise",
}


def check_inbox_handler(run: HandlerRun) -> None:
    """Lab 04e: the learner's ``record_event``, run in the real receiver, recorded each event once and did its
    effects once, with every event delivered twice and out of order."""
    assert run.error is None, f"{run.error}.\n{run.receiver_log[-1500:]}\nHint: {_INBOX_HINTS['failed']}."
    assert run.inbox_rows, (f"webhook_inbox has no rows, although the provider sent {run.events} events. "
                            f"Hint: {_INBOX_HINTS['recorded']}.")
    assert run.inbox_rows == run.distinct_events == run.events, (
        f"webhook_inbox holds {run.inbox_rows} rows for {run.events} events: each event once. "
        f"Hint: {_INBOX_HINTS['recorded']}.")
    twice = {m: n for m, n in run.receipts_per_message.items() if n > 1}
    assert not twice, (f"{len(twice)} customers got more than one receipt ({twice}): every event came twice. "
                       f"Hint: {_INBOX_HINTS['receipt twice']}.")
    none = [m for m, n in run.receipts_per_message.items() if n == 0]
    assert not none, f"{len(none)} payments got no receipt ({none}). Hint: {_INBOX_HINTS['no receipt']}."
    assert run.crashed_row == "done", (
        f"the consumer that crashed after charging {run.crashed_msg_id} left its row {run.crashed_row!r}, and the "
        f"payment_intent.succeeded event did not settle it. Hint: {_INBOX_HINTS['pending']}.")
    assert run.duplicate_answers >= run.events, (
        f"the receiver counted {run.duplicate_answers:g} duplicate answers for {run.events} events each delivered "
        f"twice. Hint: {_INBOX_HINTS['answer']}.")
