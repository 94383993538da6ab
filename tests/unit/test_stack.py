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
