"""What a widget's cell shows where no live widget can be drawn: a sentence, not the widget's repr.

A notebook stores a widget's output as two things: a reference to a widget model,
which only the kernel that ran the cell has, and a ``text/plain`` fallback. A front
end without that model (a notebook just opened, before its cells run; nbviewer;
GitHub) shows the fallback, which ipywidgets makes from the widget's repr:
``VBox(children=(Button(...``. Widgets of this course put a sentence there instead,
saying how to get the live widget.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

RUN_TO_SHOW = "Run this cell to show the widget: it needs this notebook's running kernel."


class RunToShow(w.DOMWidget):
    """A widget whose stored ``text/plain`` fallback is ``placeholder``, not its repr.

    Mix it in before the ipywidgets class: ``class KillButton(RunToShow, w.VBox)``.
    """

    placeholder = RUN_TO_SHOW

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/plain"] = self.placeholder
        return bundle
