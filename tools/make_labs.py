"""Write labs/ from solutions/: each solution becomes `raise NotImplementedError(hint)`.

    python tools/make_labs.py           # (re)write labs/NN_*.ipynb from solutions/NN_*.ipynb
    python tools/make_labs.py --check   # exit 1 when labs/ is not what this script would write

In a code cell of a solution notebook, the learner's part sits between two
marker lines::

    ### BEGIN SOLUTION
    # HINT: a line that helps without giving the answer away
    # HINT: (a long hint goes on several HINT lines, joined with spaces)
    ...the solution...
    ### END SOLUTION

In the lab the whole block, markers included, becomes one line at the same
indentation: ``raise NotImplementedError("<hint>")``. Outputs and execution
counts are cleared (the learner runs the lab), widget state is stripped, and
everything else (markdown, check cells, tags) is kept as it is.

After the lab's first code cell (its imports), one cell is added that calls
``effectively_once.course.lab_checks.show_failed_checks_plainly()``: a failed check then
shows its message first and the traceback only on ``%tb``, and still fails.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HINT = re.compile(r"^\s*#\s*HINT:\s*(?P<hint>.+?)\s*$")
DEFAULT_HINT = "write your solution here, then run the check cell below"
PLAIN_CHECKS_ID = "show-failed-checks-plainly"
PLAIN_CHECKS = """\
# A check that fails below shows its message first; %tb in a new cell shows the traceback.
from effectively_once.course.lab_checks import show_failed_checks_plainly

show_failed_checks_plainly()"""


class SolutionMarkupError(ValueError):
    """A solution cell whose BEGIN/END markers do not pair up."""


def strip_solutions(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace every marked solution block in ``source``; return the new source and how many were replaced."""
    out: list[str] = []
    lines = source.split("\n")
    i = replaced = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            try:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() in (END, BEGIN))
            except StopIteration:
                raise SolutionMarkupError(f"{where}: {BEGIN!r} on line {i + 1} has no {END!r}") from None
            if lines[end].strip() != END:
                raise SolutionMarkupError(f"{where}: {BEGIN!r} on line {i + 1} is followed by another BEGIN")
            hints = [m.group("hint") for m in map(HINT.match, lines[i + 1:end]) if m]
            hint = " ".join(hints) if hints else DEFAULT_HINT
            out.append(f"{indent}raise NotImplementedError({json.dumps(hint)})")
            replaced += 1
            i = end + 1
            continue
        if line.strip() == END:
            raise SolutionMarkupError(f"{where}: {END!r} on line {i + 1} has no {BEGIN!r} before it")
        out.append(line)
        i += 1
    return "\n".join(out), replaced


def make_lab(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The lab notebook for a solution notebook (a new object; the input is not changed)."""
    lab = nbformat.from_dict(json.loads(json.dumps(solution)))
    total = 0
    for index, cell in enumerate(lab.cells):
        if cell.cell_type != "code":
            continue
        cell.source, replaced = strip_solutions(cell.source, f"{name} cell {index}")
        total += replaced
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    if total == 0:
        raise SolutionMarkupError(f"{name}: no {BEGIN!r} block found, so the lab would be the solution")
    first_code = next(i for i, cell in enumerate(lab.cells) if cell.cell_type == "code")
    plain = nbformat.v4.new_code_cell(PLAIN_CHECKS)
    plain.id = PLAIN_CHECKS_ID
    lab.cells.insert(first_code + 1, plain)
    lab.metadata.pop("widgets", None)
    lab.metadata.pop("executed_code_sha256", None)   # tools/notebooks.py's record of what ran: a lab has not run
    return lab


def render(nb: nbformat.NotebookNode) -> str:
    """The exact text nbformat writes for ``nb`` (what --check compares)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def expected_labs(solutions: Path, labs: Path) -> dict[Path, str]:
    """Every lab path and the text it should have."""
    out = {}
    for path in sorted(solutions.glob("*.ipynb")):
        solution = nbformat.read(str(path), as_version=4)
        out[labs / path.name] = render(make_lab(solution, str(path.relative_to(solutions.parent))))
    return out


def stale_labs(solutions: Path, labs: Path) -> list[str]:
    """Reasons labs/ differs from what :func:`expected_labs` gives (empty when up to date)."""
    expected = expected_labs(solutions, labs)
    problems = []
    for path, text in expected.items():
        if not path.exists():
            problems.append(f"{path.name}: missing")
        elif path.read_text() != text:
            problems.append(f"{path.name}: differs from its solution")
    for path in sorted(labs.glob("*.ipynb")):
        if path not in expected:
            problems.append(f"{path.name}: has no solution in {solutions.name}/ (delete it)")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Write labs/, or with --check report whether it is stale."""
    parser = argparse.ArgumentParser(description="Write labs/ from solutions/.")
    parser.add_argument("--check", action="store_true", help="exit 1 if labs/ is stale; write nothing")
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    parser.add_argument("--labs", type=Path, default=ROOT / "labs")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale_labs(args.solutions, args.labs)
            for problem in problems:
                print(f"stale lab: {problem}", file=sys.stderr)
            if problems:
                print("labs/ is out of date: run `python tools/make_labs.py` (or `make labs`) and commit labs/",
                      file=sys.stderr)
                return 1
            print(f"labs/ is up to date ({len(list(args.solutions.glob('*.ipynb')))} notebooks)")
            return 0
        args.labs.mkdir(parents=True, exist_ok=True)
        for path, text in expected_labs(args.solutions, args.labs).items():
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        return 0
    except SolutionMarkupError as exc:
        print(f"make_labs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
