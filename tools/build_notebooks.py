"""Write course notebooks from Python, execute them, and commit them clean.

A small library for the scripts that build the notebooks under ``notebooks/``
and ``solutions/``. A build script lists cells and calls :func:`build`::

    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from build_notebooks import build, code, md

    cells = [
        md('''
            # 03 Payments
            You will learn ...
        '''),
        code("from effectively_once import stack\\nSEED = 3"),
        code("print(stack_status)", tags=["nbval-ignore-output"]),   # pids, ports, timings
        code("assert total == 3, 'explain what went wrong'"),
    ]
    build(cells, "notebooks/03_payments.ipynb")   # writes, executes, strips widget state

What :func:`build` guarantees, so that committed notebooks diff cleanly and
nbval can compare them:

* cell ids are stable (``cell-000``, ``cell-001``, ...), not random;
* the text of each cell is dedented and stripped;
* execution runs in the notebook's own directory with the ``python3`` kernel of
  the interpreter running the build, without timing metadata;
* ``metadata.widgets`` (widget state, which changes on every run) is removed.

Run as a script to re-execute or strip existing notebooks in place::

    python tools/build_notebooks.py --execute notebooks/01_two_generals.ipynb
    python tools/build_notebooks.py --strip notebooks/*.ipynb
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Iterable, Sequence

import nbformat
from nbformat.notebooknode import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
KERNEL_NAME = "python3"
IGNORE_OUTPUT = "nbval-ignore-output"   # the tag nbval reads: run the cell, do not compare its output
CHECK = "check"                         # the tag of a cell that checks an exercise (labs must fail there)


def _text(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


def md(source: str) -> NotebookNode:
    """A markdown cell; the text is dedented, so triple-quoted strings can be indented."""
    return nbformat.v4.new_markdown_cell(_text(source))


def code(source: str, *, tags: Iterable[str] = ()) -> NotebookNode:
    """A code cell with optional tags (e.g. ``IGNORE_OUTPUT``, ``CHECK``)."""
    cell = nbformat.v4.new_code_cell(_text(source))
    tags = list(tags)
    if tags:
        cell.metadata["tags"] = tags
    return cell


def ignore_output(source: str) -> NotebookNode:
    """A code cell whose output nbval does not compare (timings, pids, ports, widgets)."""
    return code(source, tags=[IGNORE_OUTPUT])


def check(source: str) -> NotebookNode:
    """A check cell of an exercise: it must pass in ``solutions/`` and fail in ``labs/``."""
    return code(source, tags=[CHECK])


def new_notebook(cells: Sequence[NotebookNode]) -> NotebookNode:
    """A notebook of ``cells`` with the python3 kernelspec and stable cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.from_dict(dict(c)) for c in cells]
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                 "name": KERNEL_NAME}
    nb.metadata["language_info"] = {"name": "python"}
    renumber(nb)
    return nb


def renumber(nb: NotebookNode) -> NotebookNode:
    """Give the cells stable ids (``cell-000`` ...), so rebuilding does not churn the diff."""
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    return nb


def strip_widget_state(nb: NotebookNode) -> NotebookNode:
    """Remove ``metadata.widgets`` (saved widget state) and per-cell execution timings."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def execute(nb: NotebookNode, cwd: str | Path, *, timeout: int = 600, allow_errors: bool = False,
            kernel_name: str = KERNEL_NAME) -> NotebookNode:
    """Run every cell of ``nb`` in a fresh kernel started in ``cwd``; raise on the first error.

    With ``allow_errors=False`` a failing cell raises ``nbclient.exceptions.CellExecutionError``
    and the notebook keeps the outputs up to that cell (see :func:`first_error`).
    """
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=allow_errors,
                            record_timing=False, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def first_error(nb: NotebookNode) -> tuple[int, NotebookNode, dict] | None:
    """The first cell with an error output: (index, cell, the error output), or None."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return i, cell, out
    return None


def write(nb: NotebookNode, path: str | Path) -> Path:
    """Validate and write ``nb`` to ``path`` (widget state stripped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    strip_widget_state(nb)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return path


def build(cells: Sequence[NotebookNode], path: str | Path, *, run: bool = True, timeout: int = 600) -> Path:
    """Assemble ``cells`` into a notebook at ``path``, execute it there, strip it, and write it.

    Paths are relative to the repository root. Raises if a cell fails, so a
    broken notebook is never written as if it were executed.
    """
    path = Path(path)
    if not path.is_absolute():
        path = ROOT / path
    nb = new_notebook(cells)
    if run:
        execute(nb, path.parent, timeout=timeout)
    written = write(nb, path)
    print(f"wrote {written.relative_to(ROOT)}")
    return written


def reexecute(path: str | Path, *, timeout: int = 600) -> Path:
    """Execute an existing notebook in place (its own directory), then strip and write it."""
    path = Path(path).resolve()
    nb = nbformat.read(str(path), as_version=4)
    execute(nb, path.parent, timeout=timeout)
    return write(renumber(nb), path)


def build_targets(targets: dict, argv: Sequence[str]) -> int:
    """Build each ``{path: cells_function}`` whose path starts with one of ``argv`` (all when empty).

    The command line of every ``tools/build_NN.py``: ``build_04.py solutions`` builds only the
    solutions notebook, ``build_04.py`` builds both.
    """
    for target, cells in targets.items():
        if not argv or any(target.startswith(a) for a in argv):
            build(cells(), target)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: --execute or --strip notebooks in place."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--execute", action="store_true", help="run every cell and save the outputs")
    group.add_argument("--strip", action="store_true", help="only remove metadata.widgets")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if args.execute:
            reexecute(path)
        else:
            write(nbformat.read(str(path), as_version=4), path)
        print(f"{'executed' if args.execute else 'stripped'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
