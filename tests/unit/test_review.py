"""The review questions: one right answer each, feedback that teaches, widgets that drive from Python."""

from __future__ import annotations

import pytest

from effectively_once.course import review_questions
from effectively_once.course.review_questions import (
    DEDUP_SPIKE,
    KAFKA_EOS_AND_POSTGRES,
    OPEN_QUESTIONS,
    SUMMARY,
    Choice,
    MultipleChoice,
)
from effectively_once.incidents import lint, redrive, slack_zombie, sqs_visibility, stripe2020, stripe2023
from effectively_once.widgets.quiz import MultipleChoiceWidget, OpenQuestionWidget


@pytest.mark.parametrize("question", [KAFKA_EOS_AND_POSTGRES, DEDUP_SPIKE])
def test_multiple_choice_has_one_right_answer_and_feedback_for_every_choice(question):
    assert sum(c.correct for c in question.choices) == 1
    assert all(len(c.feedback) > 40 for c in question.choices)
    assert "notebook" in question.answer.feedback.lower()


def test_a_question_with_two_right_answers_is_refused():
    with pytest.raises(ValueError, match="exactly one right answer"):
        MultipleChoice("bad", "?", (Choice("a", True, "x"), Choice("b", True, "y")))


def test_multiple_choice_widget_shows_feedback():
    widget = MultipleChoiceWidget(DEDUP_SPIKE)
    right = DEDUP_SPIKE.choices.index(DEDUP_SPIKE.answer)
    assert widget.choose(right) is True and "Right." in widget.feedback.value
    wrong = (right + 1) % len(DEDUP_SPIKE.choices)
    assert widget.choose(wrong) is False and "Not quite." in widget.feedback.value
    with pytest.raises(IndexError):
        DEDUP_SPIKE.check(len(DEDUP_SPIKE.choices))


def test_open_question_points_follow_the_text():
    question = OPEN_QUESTIONS[1]
    widget = OpenQuestionWidget(question)
    assert not any(ok for _, ok in widget.answer("Kafka is fast."))
    made = dict(widget.answer("An idempotent producer, a dedup table with ON CONFLICT, and an Idempotency-Key."))
    assert all(made.values()), made
    assert "Model answer" in widget.feedback.value


def test_the_two_generals_model_answer_keeps_agreement_and_ends_in_a_contradiction():
    question = next(q for q in OPEN_QUESTIONS if q.key == "two_generals")
    answer = question.model_answer.lower()
    assert "cannot tell" in answer and "by agreement" in answer, "each step needs the agreement requirement"
    assert "no message arrives" in answer and "contradiction" in answer, "the induction must end in a contradiction"
    assert all(ok for _, ok in question.points_made(question.model_answer))
    assert not any(ok for _, ok in question.points_made("Exactly-once delivery is hard."))


def test_early_acknowledgement_is_taught_as_loss_not_as_a_cause_of_dedup_hits():
    early = next(c for c in DEDUP_SPIKE.choices if "before they finish processing" in c.text)
    assert not early.correct and "loses messages" in early.feedback
    spike = next(q for q in OPEN_QUESTIONS if q.key == "hit_rate_spike")
    for cause in ("late, missing or failed", "max.poll.interval.ms", "whole poll batch", "rebalance",
                  "re-published", "redrove"):
        assert cause in spike.model_answer, cause
    assert "acknowledges at the wrong moment" not in spike.model_answer
    assert "Committing too early is not a cause" in spike.model_answer
    assert "max.poll.interval.ms" in SUMMARY and "redrive" in SUMMARY


def test_the_review_tells_the_incidents_as_notebook_06_does():
    assert "no public post-mortem was found" in " ".join(SUMMARY.split())
    assert "a failure no public record shows" in " ".join(SUMMARY.split()), "Slack's story is a story, not evidence"
    texts = [SUMMARY, review_questions.__doc__ or "", *(q.prompt + q.model_answer for q in OPEN_QUESTIONS),
             *(c.text + c.feedback for q in (KAFKA_EOS_AND_POSTGRES, DEDUP_SPIKE) for c in q.choices)]
    texts += [module.__doc__ or "" for module in (lint, redrive, slack_zombie, sqs_visibility, stripe2020, stripe2023)]
    for text in texts:
        assert "the lesson" not in text.lower(), text[:80]
    for module in (redrive, slack_zombie, stripe2020, stripe2023):
        assert "no public post-mortem" in " ".join((module.__doc__ or "").split()), module.__name__
    assert "does not reconstruct that bug" in " ".join((sqs_visibility.__doc__ or "").split())


@pytest.mark.parametrize("question", [KAFKA_EOS_AND_POSTGRES, DEDUP_SPIKE])
def test_the_right_answer_says_right_once(question):
    widget = MultipleChoiceWidget(question)
    assert not widget.answered, "a new quiz must open with nothing picked and no feedback"
    assert widget.choose(question.choices.index(question.answer)) is True
    assert widget.feedback.value.count("Right.") == 1, widget.feedback.value
    assert not any(c.feedback.lower().startswith(("right", "not quite")) for c in question.choices), \
        "the widget says the verdict; the feedback must not say it again"


def test_the_buttons_are_as_wide_as_their_labels():
    for widget in (MultipleChoiceWidget(DEDUP_SPIKE), OpenQuestionWidget(OPEN_QUESTIONS[0])):
        assert widget.button.layout.width == "max-content", widget.button.description


# A learner's answer that says the generals can never be sure, and names the last message, but never
# removes messages one by one: it must not be credited with the induction.
NO_INDUCTION = ("Two generals must agree to attack, but any messenger can be captured, so the sender of the last "
                "message never knows it arrived and neither can be certain. Exactly-once processing still works "
                "because the consumer keeps a dedup log of the ids it has processed.")


def test_the_induction_point_needs_the_induction():
    question = next(q for q in OPEN_QUESTIONS if q.key == "two_generals")
    made = dict(question.points_made(NO_INDUCTION))
    induction = next(p.idea for p in question.points if "induction" in p.idea)
    agreement = next(p.idea for p in question.points if "agreement" in p.idea)
    assert made[induction] is False, "an answer that never removes a message was credited with the induction"
    assert made[agreement] is False, "wanting to agree is not the step that keeps agreement"
    assert made["messages can be lost, so no finite protocol gives both sides certainty"] is True
    for said in ("The proof is by induction on the number of messages.",
                 "Remove the messages one at a time, starting with the last.",
                 "Drop the last message, then the one before it, one by one, until none is left."):
        assert dict(question.points_made(said))[induction] is True, said
