"""A failed lab check shows its message first and the traceback on %tb, and still fails under its own name.

The shell here is IPython's own (the one a kernel wraps), run in a fresh
interpreter so that its singleton does not leak into other tests. The cells it
runs are a real lab's, up to the check cell that stops an unsolved lab.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import make_labs  # noqa: E402

RUN_LAB = r"""
import json, sys
import nbformat
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
nb = nbformat.read(sys.argv[1], as_version=4)
for index, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
        continue
    result = shell.run_cell(cell.source)
    if not result.success:
        print("\n@@@" + json.dumps({"index": index, "tags": cell.metadata.get("tags", []),
                                    "ename": type(result.error_in_exec).__name__}))
        break
print("@@@tb")
shell.run_cell("%tb")
"""


def test_an_unsolved_lab_stops_at_its_check_with_the_hint_first(tmp_path):
    lab = ROOT / "labs" / "01_two_generals.ipynb"
    result = subprocess.run([sys.executable, "-c", RUN_LAB, str(lab)], capture_output=True, text=True,
                            cwd=ROOT / "labs", timeout=120)
    shown, _, after = result.stdout.partition("\n@@@")
    failure = json.loads(after.splitlines()[0])
    assert "check" in failure["tags"] and failure["ename"] == "NotImplementedError", failure
    message = shown.strip().splitlines()
    assert "Out[" not in shown, "the cell that turns plain checks on must show nothing"
    assert message[0].startswith("NotImplementedError: this exercise is not written yet. Hint: "), message
    assert "Traceback" not in shown and "%tb" in shown
    traceback = after.split("@@@tb", 1)[1]
    assert "Traceback" in traceback and "NotImplementedError" in traceback, "%tb must show the full traceback"


def test_a_wrong_answer_shows_the_assert_message_first():
    code = r"""
from IPython.core.interactiveshell import InteractiveShell
from effectively_once.course.lab_checks import show_failed_checks_plainly
shell = InteractiveShell.instance()
show_failed_checks_plainly(shell)
result = shell.run_cell("charged = ['a', 'a']\n"
                        "assert len(charged) == len(set(charged)), 'some message was charged twice'")
print("@@@", type(result.error_in_exec).__name__)
result = shell.run_cell("1 / 0")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    before, _, after = result.stdout.partition("@@@")
    assert before.splitlines()[0] == "AssertionError: some message was charged twice", before
    assert "Traceback" not in before
    assert after.split()[0] == "AssertionError"
    assert "ZeroDivisionError" in after and "Traceback" in after, "other errors keep their traceback"


def test_outside_ipython_nothing_changes():
    code = ("from effectively_once.course.lab_checks import show_failed_checks_plainly\n"
            "show_failed_checks_plainly()\nassert 1 == 2, 'plain python keeps its traceback'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Traceback") and "plain python keeps its traceback" in result.stderr


def test_every_lab_turns_plain_checks_on_right_after_its_imports():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        lab = make_labs.make_lab(nbformat.read(str(path), as_version=4), path.name)
        code = [c for c in lab.cells if c.cell_type == "code"]
        assert code[1].source == make_labs.PLAIN_CHECKS and code[1].id == make_labs.PLAIN_CHECKS_ID, path.name
        first_check = next(i for i, c in enumerate(code) if "check" in c.metadata.get("tags", []))
        assert first_check > 1, f"{path.name}: a check runs before plain checks are on"
