"""How many test ids and `assert` statements each lane holds: run it before and after a change to the tests.

    python tools/test_counts.py            # a table: lane, test ids, assert statements
    python tools/test_counts.py --list     # every assert: lane, file, function, its text (diff two runs)

A lane is the folder a test lives in (``tests/unit``, ``tests/integration``,
``tests/notebooks``, ``tests/browser``). A test file directly under ``tests/``
(a new one, not yet moved) is placed by its markers: ``browser``, then
``integration`` (``notebooks`` when the file is named ``test_notebook*``),
else ``unit``. The ``tansu`` row counts the tests that run again on the Tansu
broker; they are counted in their own lane too.

Asserts are counted in the test modules and conftests with ``ast`` (an
``assert`` statement, once, wherever it is: in a test, a fixture or a helper),
and in the code cells of the notebooks' sources, which the notebooks lane runs.
Collection needs no service: nothing is started.
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LANES = ("unit", "integration", "notebooks", "browser")
TANSU = {"tansu_pass", "tansu_only"}
CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.S | re.M)


def lane_of(path: Path, markers: set[str]) -> str:
    """The lane of a test file: its folder under tests/, or its markers for a file directly under tests/."""
    parts = path.relative_to(ROOT / "tests").parts
    if len(parts) > 1 and parts[0] in LANES:
        return parts[0]
    if "browser" in markers:
        return "browser"
    if "integration" in markers:
        return "notebooks" if path.name.startswith("test_notebook") else "integration"
    return "unit"


class _Collector:
    """A pytest plugin that keeps (lane, node id, markers) of every collected item."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, set[str], Path]] = []
        self.functions: dict[tuple[Path, str], set[str]] = collections.defaultdict(set)
        self.tansu: set[tuple[Path, str]] = set()

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            markers = {m.name for m in item.iter_markers()}
            path = Path(str(item.path)).resolve()
            self.items.append((lane_of(path, markers), item.nodeid, markers, path))
            self.functions[(path, _function_key(item))].add(self.items[-1][0])
            if markers & TANSU:
                self.tansu.add((path, _function_key(item)))


def _function_key(item) -> str:
    """The name an assert's enclosing function has in ``_asserts``: ``test_x`` or ``TestClass.test_x``."""
    name = getattr(item, "originalname", None) or item.name.split("[")[0]
    return f"{item.cls.__name__}.{name}" if getattr(item, "cls", None) else name


def collect() -> _Collector:
    """Every test id pytest collects under tests/, with its lane, markers and file (pytest's report silenced)."""
    import pytest

    plugin = _Collector()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                            str(ROOT / "tests")], plugins=[plugin])
    if code not in (0, 5):
        raise SystemExit(f"pytest could not collect the tests (exit {code}):\n{out.getvalue()[-3000:]}")
    return plugin


def _asserts(tree: ast.AST) -> list[tuple[str, str]]:
    """(enclosing function, assert text) for every assert statement in ``tree``."""
    found: list[tuple[str, str]] = []

    def walk(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                walk(child, child.name if where == "<module>" else f"{where}.{child.name}")
            else:
                if isinstance(child, ast.Assert):
                    found.append((where, ast.unparse(child.test)))
                walk(child, where)

    walk(tree, "<module>")
    return found


def notebook_asserts(source: Path) -> list[tuple[str, str]]:
    """(cell number, assert text) for every assert in the code cells of a notebook's MyST source."""
    found = []
    for n, cell in enumerate(CODE_CELL.findall(source.read_text())):
        code = "\n".join(line for line in cell.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            found += [(f"cell {n}", text) for _, text in _asserts(ast.parse(code))]
        except SyntaxError:
            found += [(f"cell {n}", line.strip()) for line in code.splitlines() if line.lstrip().startswith("assert ")]
    return found


def assert_lane(collected: _Collector, path: Path, where: str) -> str:
    """The lane of an assert: its test's lane; in a helper or fixture, the lane of the file's tests.

    A helper of a file whose tests sit in more than one lane counts as 'mixed'; a conftest's as its folder's lane.
    """
    parts = where.split(".")
    for key in (".".join(parts[:2]), parts[0]):
        lanes = collected.functions.get((path, key))
        if lanes and len(lanes) == 1:
            return next(iter(lanes))
    lanes = {lane for lane, _, _, p in collected.items if p == path}
    if not lanes:
        folder = path.relative_to(ROOT / "tests").parts
        return folder[0] if len(folder) > 1 and folder[0] in LANES else "shared"
    return lanes.pop() if len(lanes) == 1 else "mixed"


def every_assert(collected: _Collector) -> list[tuple[str, str, str, str]]:
    """(lane, file, function, text) of every assert in tests/ and in the notebooks' sources."""
    rows = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "lint_samples" in path.parts:       # samples for the linter to read, not tests
            continue
        for where, text in _asserts(ast.parse(path.read_text())):
            rows.append((assert_lane(collected, path.resolve(), where), str(path.relative_to(ROOT)), where, text))
    for source in sorted((ROOT / "sources").rglob("*.md")):
        for where, text in notebook_asserts(source):
            rows.append(("notebook cells", str(source.relative_to(ROOT)), where, text))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print every assert instead of the table")
    args = parser.parse_args(argv)
    collected = collect()
    items, rows = collected.items, every_assert(collected)
    if args.list:
        for row in rows:
            print("\t".join(row))
        return 0
    ids = collections.Counter(lane for lane, *_ in items)
    ids["tansu"] = sum(1 for _, _, markers, _ in items if markers & TANSU)
    asserts = collections.Counter(lane for lane, *_ in rows)
    asserts["tansu"] = sum(1 for _, path, where, _ in rows
                           if (ROOT / path, ".".join(where.split(".")[:2])) in collected.tansu
                           or (ROOT / path, where.split(".")[0]) in collected.tansu)
    print(f"{'lane':<16}{'test ids':>10}{'asserts':>10}")
    for lane in (*LANES, "tansu", "mixed", "shared", "notebook cells"):
        if ids[lane] or asserts[lane]:
            print(f"{lane:<16}{ids[lane]:>10}{asserts[lane]:>10}")
    print(f"{'total':<16}{len(items):>10}{len(rows):>10}   (tansu ids run again, not added)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
