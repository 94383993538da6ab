"""The consumer module is an executable only: no module of the package imports it.

``python -m effectively_once.payments.consumer`` is a process that the lab
kills and restarts; what a step, the lab or an incident needs from it (the
step context, the clocks, the shop's schema, the exit codes) lives in library
modules. The imports are read with ``ast``, so a comment or a string that
names the module does not count, and an import under ``TYPE_CHECKING`` does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import effectively_once

PACKAGE = Path(effectively_once.__file__).parent
CONSUMER = "effectively_once.payments.consumer"


def imported_names(source: str, module: str) -> set[str]:
    """Every dotted name an ``import`` in ``source`` (the text of ``module``) reaches, relative ones resolved.

    ``from a.b import c`` gives ``a.b`` and ``a.b.c``, since ``c`` may be a
    module; a call to ``importlib.import_module`` or ``__import__`` with a
    literal name gives that name.
    """
    package = module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[:len(package) - node.level + 1], node.module or ""] if node.level
                            else [node.module or ""]).strip(".")
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names.add(str(node.args[0].value))
    return names


def module_name(path: Path) -> str:
    """``effectively_once/payments/steps.py`` -> ``effectively_once.payments.steps`` (a package's
    ``__init__.py`` counts as a module inside it, so that its relative imports resolve)."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def importers_of_the_consumer(root: Path = PACKAGE) -> list[str]:
    """The files under ``root`` (but the consumer itself) that import the consumer module or a name from it."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path)
        if name == CONSUMER:
            continue
        if any(n == CONSUMER or n.startswith(CONSUMER + ".") for n in imported_names(path.read_text(), name)):
            found.append(str(path.relative_to(PACKAGE.parent)))
    return found


def test_no_module_of_the_package_imports_the_consumer_executable():
    assert (PACKAGE / "payments" / "consumer.py").is_file(), "the consumer moved: update CONSUMER above"
    assert importers_of_the_consumer() == []


def test_the_check_sees_every_way_of_importing_the_consumer_and_no_comment():
    here = "effectively_once.payments.offsets"
    caught = [
        "from effectively_once.payments.consumer import StepContext",
        "from effectively_once.payments import consumer",
        "from . import consumer",
        "from .consumer import migrate_shop",
        "from ..payments.consumer import IdleClock",
        "import effectively_once.payments.consumer as c",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from effectively_once.payments.consumer import X",
        "def f():\n    from effectively_once.payments.consumer import load_step",
        "import importlib\nimportlib.import_module('effectively_once.payments.consumer')",
    ]
    for source in caught:
        assert CONSUMER in imported_names(source, here), source
    missed = [
        "# from effectively_once.payments.consumer import StepContext",
        "'''from effectively_once.payments.consumer import StepContext'''",
        "CONSUMER_MODULE = 'effectively_once.payments.consumer'",
        "from effectively_once.payments import consumers",
        "from effectively_once.payments.steps import StepContext",
    ]
    for source in missed:
        assert not {n for n in imported_names(source, here) if n == CONSUMER or n.startswith(CONSUMER + ".")}, source
