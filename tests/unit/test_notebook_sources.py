"""Each notebook's .ipynb is the executed form of its MyST source, and `make check` says so fast.

The tests work on a copy of the course's notebooks and sources in a temporary
directory, so they can make each kind of drift on purpose and watch
``tools/notebooks.py check`` name it. No test runs ``make``: ``make check`` runs
the same checker on the checkout, and ``benchmarks/lanes.py`` times it against
its goal.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/04_kill_the_consumer"


def _copy_tree(dest: Path) -> Path:
    """The files git tracks, copied with their times (so make sees an installed venv as up to date)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for name in ("sources", "tools", "notebooks", "solutions"):     # not yet committed files too
        for source in (ROOT / name).rglob("*"):
            target = dest / source.relative_to(ROOT)
            if source.is_file() and not target.exists() and "__pycache__" not in source.parts:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    return dest


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _run(tree: Path, *args: str) -> Ran:
    """Run ``tools/notebooks.py ARGS`` of ``tree`` in this process (nbformat imports once, not per call)."""
    spec = importlib.util.spec_from_file_location(f"notebooks_tool_{abs(hash(tree))}", tree / "tools" / "notebooks.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool          # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(tool)
    finally:
        sys.modules.pop(spec.name, None)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = tool.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            print(exc.code if not isinstance(exc.code, int) else "", file=err)
    return Ran(code, out.getvalue(), err.getvalue())


def _check(tree: Path, *names: str) -> Ran:
    return _run(tree, "check", *names)


def _edit_cell(path: Path, index: int, old: str, new: str) -> None:
    nb = nbformat.read(str(path), as_version=4)
    assert old in nb.cells[index].source, f"cell {index} of {path.name} no longer holds {old!r}"
    nb.cells[index].source = nb.cells[index].source.replace(old, new, 1)
    nbformat.write(nb, str(path))


@pytest.fixture
def tree(tmp_path):
    return _copy_tree(tmp_path / "course")


def _first_cell(tree: Path, cell_type: str) -> int:
    nb = nbformat.read(str(tree / f"{NOTEBOOK}.ipynb"), as_version=4)
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == cell_type)


def test_no_notebook_cell_lives_in_a_python_string():
    builders = [p.name for p in (ROOT / "tools").glob("build_*.py") if "nbformat" in p.read_text()]
    assert not builders, f"a build script holds notebook cells as strings: {builders}"
    sources = {p.relative_to(ROOT / "sources").with_suffix("") for p in (ROOT / "sources").rglob("*.md")}
    executed = {p.relative_to(ROOT).with_suffix("") for kind in ("notebooks", "solutions")
                for p in (ROOT / kind).glob("*.ipynb")}
    assert sources == executed, f"sources without a notebook, or notebooks without a source: {sources ^ executed}"


def test_an_edit_to_the_ipynb_code_is_named_and_needs_a_rerun(tree):
    index = _first_cell(tree, "code")
    _edit_cell(tree / f"{NOTEBOOK}.ipynb", index, "import", "import  ")
    result = _check(tree)
    assert result.returncode == 1
    assert f"{NOTEBOOK}: cell {index} (code) differs at line" in result.stderr
    assert f"make notebooks NB={NOTEBOOK}" in result.stderr


def test_a_prose_edit_in_the_source_is_carried_over_without_a_kernel(tree):
    source = tree / "sources" / f"{NOTEBOOK}.md"
    source.write_text(source.read_text().replace("# 04 · Kill the consumer", "# 04 · Kill the consumer!", 1))
    result = _check(tree)
    assert result.returncode == 1 and "tools/notebooks.py prose" in result.stderr, result.stderr
    prose = _run(tree, "prose", "04_kill")
    assert prose.returncode == 0, prose.stderr
    assert _check(tree).returncode == 0
    nb = nbformat.read(str(tree / f"{NOTEBOOK}.ipynb"), as_version=4)
    assert nb.cells[0].source.startswith("# 04 · Kill the consumer!")
    assert any(c.get("outputs") for c in nb.cells), "carrying prose over must keep the stored outputs"


def test_prose_refuses_when_code_changed(tree):
    source = tree / "sources" / f"{NOTEBOOK}.md"
    source.write_text(source.read_text().replace("MESSAGES = 3", "MESSAGES = 4", 1))
    prose = _run(tree, "prose", "04_kill")
    assert prose.returncode != 0
    assert "code cells (or the cell order) changed" in prose.stderr


def test_a_machine_path_in_an_output_fails_the_check(tree):
    path = tree / f"{NOTEBOOK}.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="log in /home/someone/course/x.log\n")]
    nbformat.write(nb, str(path))
    result = _check(tree)
    assert result.returncode == 1
    assert "a path of the machine that ran it: /home/someone" in result.stderr


def test_saved_widget_state_fails_the_check_and_strip_removes_it(tree):
    path = tree / f"{NOTEBOOK}.ipynb"
    nb = json.loads(path.read_text())
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path.write_text(json.dumps(nb))
    assert "saved widget state" in _check(tree).stderr
    assert _run(tree, "strip", "notebooks/04").returncode == 0
    assert _check(tree).returncode == 0


def test_the_course_map_comes_from_course_py(tree):
    from effectively_once.course.map import COURSE

    readme = (ROOT / "README.md").read_text()
    for nb in COURSE:
        assert f"| `{nb.stem}` | **{nb.title}**" in readme
        text = (ROOT / "sources" / "notebooks" / f"{nb.stem}.md").read_text()
        assert f"**Time:** about {nb.minutes} minutes" in text, f"{nb.stem}'s Time line is not course/map.py's"
    readme_copy = tree / "README.md"
    readme_copy.write_text(readme_copy.read_text().replace(f"| {COURSE[4].minutes} |", "| 99 |", 1))
    result = _check(tree)
    assert result.returncode == 1
    assert "README.md: differs from the course map" in result.stderr


def test_a_drifted_notebook_fails_the_check_that_make_check_runs(tree):
    """`make check` runs this checker (test_packaging holds the Makefile to it); here it meets a drifted copy."""
    _edit_cell(tree / f"{NOTEBOOK}.ipynb", _first_cell(tree, "markdown"), "Kill", "Kil")
    drifted = _check(tree)
    assert drifted.returncode != 0
    assert f"{NOTEBOOK}: cell 0 (markdown) differs" in drifted.stderr, drifted.stdout[-2000:] + drifted.stderr


def test_code_changed_in_both_files_without_a_rerun_is_caught(tree):
    """The source and the .ipynb agree, but the stored outputs came from the code before the edit."""
    _edit_cell(tree / f"{NOTEBOOK}.ipynb", _first_cell(tree, "code"), "MESSAGES = 3", "MESSAGES = 4")
    source = tree / "sources" / f"{NOTEBOOK}.md"
    source.write_text(source.read_text().replace("MESSAGES = 3", "MESSAGES = 4", 1))
    result = _check(tree)
    assert result.returncode == 1
    assert "differs" not in result.stderr, result.stderr
    assert f"{NOTEBOOK}: its outputs did not come from the code it holds" in result.stderr
