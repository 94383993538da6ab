"""The stack's refusals and errors, without starting one."""

from __future__ import annotations

import pytest

from effectively_once import stack as stack_mod


def test_external_backend_needs_its_variables(monkeypatch):
    monkeypatch.delenv("EO_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("EO_POSTGRES_DSN", raising=False)
    with pytest.raises(stack_mod.StackError, match="EO_KAFKA_BOOTSTRAP and EO_POSTGRES_DSN"):
        stack_mod.start("external", progress=lambda *_: None)


def test_stack_errors_show_as_one_sentence_in_a_notebook():
    sentence = "Docker is not running: start Docker, or use EO_BACKEND=embedded."
    error = stack_mod.StackError(sentence)
    assert error._render_traceback_() == [f"StackError: {sentence}"]


def test_a_stack_shown_in_a_notebook_names_no_path_of_the_machine():
    """Notebook 00 shows its stack: the directory a local stack keeps its files in stays out of the repr."""
    from effectively_once.stack.core import Stack

    shown = Stack("embedded", "127.0.0.1:9092", "postgresql://postgres@127.0.0.1:5432/postgres",
                  root="/tmp/eo-home/stack")
    assert "/tmp/eo-home" not in repr(shown) and "/tmp/eo-home" not in shown._repr_html_()
    assert shown.ref == "files:/tmp/eo-home/stack", "the runs' records still name the stack by its files"
