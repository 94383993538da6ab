"""The course as a learner meets it, checked on its files (no kernel, no services): each notebook points to
the one the course map puts next, its prose speaks the learner's words, and no stored output shows an
action the learner has not taken (a kill, a widget's raw repr) or a check on what the learner does."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from effectively_once.course.map import COURSE
from tools import notebooks as nbtool

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "sources"
STORED = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"
# "Next:" (bold or not) and the first notebook file the sentence names.
NEXT = re.compile(r"Next:?\**:?\s.*?\b(\d\d\w*)\.ipynb", re.IGNORECASE)


@pytest.mark.parametrize(("here", "after"), list(zip(COURSE, COURSE[1:], strict=False)),
                         ids=[nb.stem for nb in COURSE[:-1]])
def test_each_notebook_points_to_the_next_one_of_the_course(here, after):
    text = (SOURCES / "notebooks" / f"{here.stem}.md").read_text()
    pointers = NEXT.findall(text)
    assert pointers, f"{here.stem} ends without a 'Next:' line; the course continues with {after.stem}"
    assert pointers[-1] == after.stem, f"{here.stem} points to {pointers[-1]}, but {after.stem} comes next"


LEARNER_FILES = (sorted((SOURCES / "notebooks").glob("*.md")) + sorted((SOURCES / "solutions").glob("*.md"))
                 + STORED + sorted((ROOT / "labs").glob("*.ipynb")))


@pytest.mark.parametrize("path", LEARNER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_learners_notebook_does_not_name_the_test_harness(path):
    # Not in the prose, not in a cell, not in a cell's tags: a cell whose output changes from run to run is
    # tagged output-varies, which tests/notebooks/output_tags.py teaches nbval.
    said = [line.strip() for line in path.read_text().splitlines() if "nbval" in line.lower()]
    assert not said, f"{path.relative_to(ROOT)} names the test harness: {said}"


@pytest.mark.parametrize("path", STORED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_stored_widget_says_how_to_get_it_not_its_repr(path):
    nb = nbformat.read(str(path), as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET in data:
                plain = data.get("text/plain", "")
                plain = plain if isinstance(plain, str) else "".join(plain)
                assert plain.startswith("Run this cell"), f"{path.name} cell {i} stores the widget's repr: {plain}"


def test_notebook_04_stores_no_kill_before_the_learner_presses_the_button():
    nb = nbformat.read(str(ROOT / "notebooks" / "04_kill_the_consumer.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    button = next(i for i, c in enumerate(code) if "lab.kill_button(" in c.source)
    below = code[button + 1]
    assert "kill_consumer(" in below.source
    assert nbtool.NO_SAVED_OUTPUT in below.metadata.get("tags", []), "the kill cell must be stored without output"
    assert below.outputs == [] and below.execution_count is None
    stored = "".join(str(out) for c in code for out in c.get("outputs", []))
    assert "SIGKILL sent" not in stored, "a stored output reports a kill the learner has not made"


def test_no_saved_output_cells_are_stored_empty_and_checked():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("kill()"), nbformat.v4.new_code_cell("1")])
    nb.cells[0].metadata["tags"] = [nbtool.NO_SAVED_OUTPUT]
    for cell in nb.cells:
        cell.outputs = [nbformat.v4.new_output("stream", text="SIGKILL sent to consumer pid 1\n")]
        cell.execution_count = 1
    nb.metadata[nbtool.DIGEST_KEY] = nbtool.code_digest(nb)
    assert any("no-saved-output but stores an output" in p for p in nbtool.hygiene(nbtool.renumber(nb)))
    nbtool.strip(nb)
    assert nb.cells[0].outputs == [] and nb.cells[0].execution_count is None
    assert nb.cells[1].outputs and nb.cells[1].execution_count == 1, "untagged cells keep their outputs"
    assert nbtool.hygiene(nb) == []


def test_notebook_07_checks_its_quiz_on_copies_never_on_the_learners_widgets():
    text = (SOURCES / "notebooks" / "07_review.md").read_text()
    shown = set(re.findall(r"^(\w+) = MultipleChoiceWidget\(", text, re.MULTILINE))
    assert shown, "07 shows its quiz in widgets"
    checked = [line for line in text.splitlines() if line.lstrip().startswith("assert")
               and any(re.search(rf"\b{name}\b", line) for name in shown)]
    assert not checked, f"an assert on the quiz the learner answers fails once they answer it: {checked}"


@pytest.mark.parametrize("path", sorted((ROOT / "labs").glob("*.ipynb")), ids=lambda p: p.stem)
def test_a_labs_check_cells_hold_no_hints_before_a_check_fails(path):
    # A table of hints or reasons (a dict of sentences) written in a check cell is read before the learner
    # has tried: the package holds them, and a failed check shows the one that applies. (Test cases with
    # their expected values are the exercise's specification, and stay.)
    def sentences(node: ast.expr) -> bool:
        return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or "check" not in cell.metadata.get("tags", []):
            continue
        tables = [ast.unparse(node.targets[0]) for node in ast.parse(cell.source).body
                  if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and node.value.values
                  and all(sentences(v) for v in node.value.values)]
        assert not tables, f"{path.name}: a check cell shows {tables} before any check failed"


def test_nbval_reads_the_courses_output_varies_tag_as_its_own_ignore_output():
    from nbval.plugin import find_metadata_tags

    from tests.notebooks import output_tags

    ours = dict(find_metadata_tags({"tags": [output_tags.OUTPUT_VARIES]}))
    assert ours == dict(find_metadata_tags({"tags": [output_tags.NBVAL_IGNORE_OUTPUT]})) == {"check": False}
    assert dict(find_metadata_tags({"tags": ["no-saved-output"]})) == {}, "only output-varies is nbval's"
