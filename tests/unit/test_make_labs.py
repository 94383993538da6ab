"""tools/make_labs.py without a kernel: it strips solutions, keeps the rest, and --check notices a stale lab."""

from __future__ import annotations

import sys

import nbformat
import pytest

from tests.conftest import ROOT

LABS = sorted(ROOT.glob("labs/*.ipynb"))


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def test_every_solution_has_a_lab():
    solutions = {p.name for p in ROOT.glob("solutions/*.ipynb")}
    assert solutions, "solutions/ holds no notebook"
    assert solutions == {p.name for p in LABS}


def _make_labs():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import make_labs
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return make_labs


def test_make_labs_replaces_the_solution_and_keeps_the_rest():
    make_labs = _make_labs()
    source = ("def f(x):\n    y = 1\n"
              "    ### BEGIN SOLUTION\n    # HINT: add one\n    return x + y\n    ### END SOLUTION\n")
    out, replaced = make_labs.strip_solutions(source)
    assert replaced == 1
    assert out == 'def f(x):\n    y = 1\n    raise NotImplementedError("add one")\n'
    two_lines = ("    ### BEGIN SOLUTION\n    # HINT: read the status\n    # HINT: of the row\n"
                 "    pass\n    ### END SOLUTION")
    assert make_labs.strip_solutions(two_lines)[0] == '    raise NotImplementedError("read the status of the row")'
    with pytest.raises(make_labs.SolutionMarkupError, match="has no"):
        make_labs.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_make_labs_check_notices_a_stale_lab(tmp_path, capsys):
    make_labs = _make_labs()
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    solutions.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")]
    nbformat.write(nb, str(solutions / "09_x.ipynb"))
    args = ["--solutions", str(solutions), "--labs", str(labs)]
    assert make_labs.main(args + ["--check"]) == 1            # the lab is missing
    assert make_labs.main(args) == 0
    assert make_labs.main(args + ["--check"]) == 0
    assert "NotImplementedError" in (labs / "09_x.ipynb").read_text()
    nb.cells[0].source = nb.cells[0].source.replace("return 1", "return 2")
    nbformat.write(nb, str(solutions / "09_x.ipynb"))
    assert make_labs.main(args + ["--check"]) == 0            # only the hidden answer changed
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("a new instruction"))
    nbformat.write(nb, str(solutions / "09_x.ipynb"))
    capsys.readouterr()
    assert make_labs.main(args + ["--check"]) == 1
    assert "09_x.ipynb: differs" in capsys.readouterr().err
