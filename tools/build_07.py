"""Build notebooks/07_review.ipynb (the lesson's questions as widgets, and the one-page summary).

    .venv/bin/python tools/build_07.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_notebooks import build, code, ignore_output, md  # noqa: E402


def notebook_07():
    return [
        md("""
            # 07 · Review

            **You will learn**
            - whether you can answer the lesson's three review questions in your own words;
            - why Kafka's exactly-once stops at Kafka's edge, and what a dedup-hit-rate spike means, as two
              multiple-choice questions with feedback that points back to what you ran;
            - the whole course on one page, to keep.

            **Time:** about 15 minutes. No services are needed.
        """),
        code("""
            from IPython.display import Markdown, display

            from effectively_once.review import DEDUP_SPIKE, KAFKA_EOS_AND_POSTGRES, OPEN_QUESTIONS, SUMMARY
            from effectively_once.widgets.quiz import MultipleChoiceWidget, OpenQuestionWidget

            SEED = 0  # nothing here is random
        """),
        md("""
            ## Three questions in your own words

            Write an answer in the box, then press **Compare with a model answer**. The check under the model
            answer only looks for words that show each point; it is a nudge to reread a notebook, not a grade.
        """),
        ignore_output("""
            open_widgets = [OpenQuestionWidget(q) for q in OPEN_QUESTIONS]
            for w in open_widgets:
                display(w)
        """),
        md("""
            Each model answer should make every point it asks of you. The next cell holds the course to its
            own standard.
        """),
        code("""
            for question in OPEN_QUESTIONS:
                missed = [idea for idea, ok in question.points_made(question.model_answer) if not ok]
                assert not missed, f"the model answer to {question.key!r} misses: {missed}"
                print(f"{question.key}: the model answer makes all {len(question.points)} points")
        """),
        md("""
            ## Two multiple-choice questions

            Pick an answer and press **Check my answer**. Wrong answers are worth picking too: each one's
            feedback says what the course showed instead.
        """),
        ignore_output("""
            eos_widget = MultipleChoiceWidget(KAFKA_EOS_AND_POSTGRES)
            eos_widget
        """),
        ignore_output("""
            spike_widget = MultipleChoiceWidget(DEDUP_SPIKE)
            spike_widget
        """),
        md("""
            The widgets can be driven from code too. The next cell picks every choice of both questions in turn
            and checks that exactly one is right and that it is the one notebooks 03 and 05 demonstrated.
        """),
        code("""
            for question, widget in ((KAFKA_EOS_AND_POSTGRES, eos_widget), (DEDUP_SPIKE, spike_widget)):
                verdicts = [widget.choose(i) for i in range(len(question.choices))]
                assert verdicts.count(True) == 1, f"{question.key}: exactly one answer must be right"
                print(f"{question.key}: right answer is choice {verdicts.index(True) + 1} of {len(verdicts)}")
            assert "coordinator only spans Kafka" in KAFKA_EOS_AND_POSTGRES.answer.text
            assert "redelivering" in DEDUP_SPIKE.answer.text
        """),
        md("""
            ## The course on one page
        """),
        code("""
            display(Markdown(SUMMARY))
        """),
        md("""
            ## Summary

            - Exactly-once delivery is impossible; exactly-once processing is a consumer's job, done with a
              dedup log and idempotent side effects.
            - Kafka's transactions end at Kafka's edge; PostgreSQL and the payment provider need their own
              idempotency.
            - A dedup hit rate that rises outside a deploy is redelivery: the dedup layer is working, the
              consumers are not.

            Where to go next: the neighbouring lessons on the server-side state machine of idempotency keys,
            the outbox and inbox patterns, and idempotency at scale. Back to the [map](00_start_here.ipynb).
        """),
    ]


if __name__ == "__main__":
    build(notebook_07(), "notebooks/07_review.ipynb")
