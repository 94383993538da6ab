"""Each Kafka 4.x proposal in ``guarantees.kafka4`` stands in its own module, and none reaches into another.

A proposal module may import the shared ``broker`` module and the rest of the
package, never a sibling proposal module, nor the ``kafka4`` package itself (whose
``__init__`` hands on every sibling's names). Read from the source with ``ast``, so an
import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import effectively_once.guarantees.kafka4 as kafka4

PACKAGE = "effectively_once.guarantees.kafka4"
FOLDER = Path(kafka4.__file__).parent
SHARED = {"broker"}
PROPOSALS = sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__" and p.stem not in SHARED)


def imported_modules(module: str) -> set[str]:
    """Every module that ``module``'s source imports, or imports a name from, as an absolute dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((FOLDER / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = PACKAGE.rsplit(".", node.level - 1)[0] if node.level > 1 else PACKAGE
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source == PACKAGE:  # `from . import broker` names a module; any other name comes from the face
                found.update(f"{PACKAGE}.{alias.name}" if (FOLDER / f"{alias.name}.py").exists() else PACKAGE
                             for alias in node.names)
            else:  # `from effectively_once.guarantees import kafka4` imports the package: count each name too
                found.add(source)
                found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def test_the_four_proposals_have_a_module_each():
    assert PROPOSALS == ["group_protocols", "share_groups", "transactions_tool", "transactions_v2"]


@pytest.mark.parametrize("module", PROPOSALS)
def test_a_proposal_module_imports_no_sibling(module):
    imported = imported_modules(module)
    siblings = {f"{PACKAGE}.{other}" for other in PROPOSALS if other != module}
    reaching = sorted(name for name in imported
                      if name == PACKAGE or any(name == s or name.startswith(f"{s}.") for s in siblings))
    assert not reaching, (f"{module} imports {reaching}: a proposal stands on its own; "
                          f"move what it shares into {', '.join(sorted(SHARED))}")
