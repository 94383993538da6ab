"""How a failed exercise check reads in a lab: its message first, the traceback only when asked for.

A lab's check cell says what is wrong in its assertion message ("some message
was charged twice: check the id before charging"). IPython prints a traceback
above that message, so the sentence a learner needs ends up at the bottom of a
screen of frames. :func:`show_failed_checks_plainly`, which every lab calls in
its first cells (``tools/make_labs.py`` adds the call), makes an
``AssertionError`` or ``NotImplementedError`` show as its message and one line
that says ``%tb`` prints the traceback.

The exception is still raised: the cell fails, Run All stops there, and the
kernel reports the error under its own name, so the check that every unsolved
lab fails at a check cell still sees ``AssertionError`` or ``NotImplementedError``.
"""

from __future__ import annotations

from typing import Any

PLAIN = (AssertionError, NotImplementedError)


def failure_lines(error: BaseException) -> list[str]:
    """What a learner sees for ``error``: its message, then how to see where it was raised."""
    message = str(error).strip()
    if isinstance(error, NotImplementedError):
        head = f"NotImplementedError: this exercise is not written yet. Hint: {message or 'see the cell above'}"
        then = "Write it in the exercise cell above, run that cell, then run this check again."
    else:
        head = f"AssertionError: {message or 'a check failed (its assert has no message)'}"
        then = "Change your code in the exercise cell above, run it, then run this check again."
    return [head, "", then, "(To see the lines that raised it, run %tb in a new cell.)"]


def _show_message_first(shell: Any, etype: type[BaseException], value: BaseException, tb: Any,
                        tb_offset: int | None = None) -> list[str]:
    # showtraceback renders an exception that has _render_traceback_ with it, records the error
    # (sys.last_value, for %tb) and, in a kernel, sends it under its own name. The attribute is
    # removed afterwards so that %tb prints the real traceback.
    lines = failure_lines(value)
    value._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    try:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    finally:
        del value._render_traceback_  # type: ignore[attr-defined]
    return []


def show_failed_checks_plainly(shell: Any = None) -> None:
    """In IPython, show a failed check's message first (see the module's docstring); outside IPython, nothing.

    It returns nothing, so the lab cell that calls it shows no output.
    """
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc(PLAIN, _show_message_first)
