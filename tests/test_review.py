"""The review questions: one right answer each, feedback that teaches, widgets that drive from Python."""

from __future__ import annotations

import pytest

from effectively_once.review import DEDUP_SPIKE, KAFKA_EOS_AND_POSTGRES, OPEN_QUESTIONS, Choice, MultipleChoice
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
