"""Quiz widgets over ``effectively_once.course.review_questions``: they render questions and feedback, nothing more.

Both can be driven from Python (``choose(i)``, ``answer(text)``), so tests and
notebooks check them without a browser.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from effectively_once.course.review_questions import MultipleChoice, OpenQuestion
from effectively_once.widgets.placeholder import RunToShow

_RIGHT = "#d4edda"
_WRONG = "#f8d7da"
# ipywidgets gives each radio choice one line's height: a longer choice wraps over the next one. Let it grow.
_WRAP_CHOICES = ("<style>.eo-quiz .widget-radio-box label, .eo-quiz .jupyter-widget-radio-box label "
                 "{height: auto; line-height: 1.4; padding: 2px 0; display: flex; align-items: flex-start} "
                 ".eo-quiz .widget-radio-box input, .eo-quiz .jupyter-widget-radio-box input "
                 "{flex: none; order: -1; margin: 0.25em 6px 0 0}</style>")


class MultipleChoiceWidget(RunToShow, widgets.VBox):
    """Radio buttons, a Check button, and the feedback for the chosen answer."""

    placeholder = "Run this cell to show the question and answer it."

    def __init__(self, question: MultipleChoice):
        self.question = question
        self.options = widgets.RadioButtons(
            options=[(c.text, i) for i, c in enumerate(question.choices)], value=None,
            layout=widgets.Layout(width="auto"))
        self.button = widgets.Button(description="Check my answer", button_style="primary",
                                     layout=widgets.Layout(width="max-content"))
        self.feedback = widgets.HTML()
        self.button.on_click(lambda _button: self._show())
        super().__init__([widgets.HTML(f"<b>{html.escape(question.prompt)}</b>"), self.options, self.button,
                          self.feedback, widgets.HTML(_WRAP_CHOICES)])
        self.add_class("eo-quiz")

    @property
    def answered(self) -> bool:
        """Whether a choice is selected or feedback is shown (a quiz a learner has not touched shows neither)."""
        return self.options.value is not None or bool(self.feedback.value)

    def choose(self, index: int) -> bool:
        """Select choice ``index`` and check it, as a learner would; True when it is right.

        It changes what this widget shows: call it on a widget of your own, not on one a learner uses.
        """
        self.options.value = index
        return self._show()

    def _show(self) -> bool:
        if self.options.value is None:
            self.feedback.value = "<i>Pick an answer first.</i>"
            return False
        choice = self.question.check(self.options.value)
        colour, verdict = (_RIGHT, "Right.") if choice.correct else (_WRONG, "Not quite.")
        self.feedback.value = (f"<div style='background:{colour};color:#212529;padding:6px'><b>{verdict}</b> "
                               f"{html.escape(choice.feedback)}</div>")
        return choice.correct


class OpenQuestionWidget(RunToShow, widgets.VBox):
    """A text box for the learner's answer, then the model answer and which points it seems to make."""

    placeholder = "Run this cell to show the question and write your answer."

    def __init__(self, question: OpenQuestion):
        self.question = question
        self.text = widgets.Textarea(placeholder="Write your answer in two or three sentences, then compare.",
                                     layout=widgets.Layout(width="100%", height="90px"))
        # A button is 148 px wide by default, which cuts this label off: size it to its text.
        self.button = widgets.Button(description="Compare with a model answer",
                                     layout=widgets.Layout(width="max-content"))
        self.feedback = widgets.HTML()
        self.button.on_click(lambda _button: self._show())
        where = f" <i>(see {html.escape(question.where)})</i>" if question.where else ""
        super().__init__([widgets.HTML(f"<b>{html.escape(question.prompt)}</b>{where}"), self.text, self.button,
                          self.feedback])

    def answer(self, text: str) -> list[tuple[str, bool]]:
        """Type ``text`` and compare; returns each point and whether the text seems to make it."""
        self.text.value = text
        return self._show()

    def _show(self) -> list[tuple[str, bool]]:
        made = self.question.points_made(self.text.value)
        items = "".join(f"<li>{'&#10003;' if ok else '&#9675;'} {html.escape(idea)}</li>" for idea, ok in made)
        self.feedback.value = (
            f"<div style='padding:6px;border-left:3px solid #888'><b>Model answer.</b> "
            f"{html.escape(self.question.model_answer)}<br><b>Points a good answer makes</b> "
            f"(a word match on your text: a nudge to reread, not a grade):<ul>{items}</ul></div>")
        return made
