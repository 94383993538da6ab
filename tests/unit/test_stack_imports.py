"""``effectively_once.stack`` only re-exports, and none of its modules imports it back.

Importing ``effectively_once.stack.docker`` always runs the package's
``__init__`` first, so a cycle through it cannot be seen by importing
normally. Each module is instead imported in a fresh interpreter with the
package replaced by an empty one (its path, none of its names): a module that
needs a name from ``effectively_once.stack`` itself fails there.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import effectively_once.stack

STACK_DIR = Path(effectively_once.stack.__file__).parent
MODULES = sorted(p.stem for p in STACK_DIR.glob("*.py") if p.stem != "__init__")

PROBE = """
import importlib, json, sys, types
import effectively_once
empty = types.ModuleType("effectively_once.stack")
empty.__path__ = [{path!r}]
sys.modules["effectively_once.stack"] = empty
importlib.import_module("effectively_once.stack." + {module!r})
own = [n for n in vars(empty) if not n.startswith("__")]
print(json.dumps(sorted(own)))
"""


@pytest.mark.parametrize("module", MODULES)
def test_each_stack_module_imports_without_the_package_body(module):
    result = subprocess.run([sys.executable, "-c", PROBE.format(path=str(STACK_DIR), module=module)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"effectively_once.stack.{module} needs the package's __init__:\n{result.stderr}"
    names = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(names) <= set(MODULES), f"only submodules were set on the empty package, not {names}"


def test_the_package_init_only_re_exports():
    tree = ast.parse((STACK_DIR / "__init__.py").read_text())
    body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) else tree.body  # the docstring
    kinds = {type(node).__name__ for node in body}
    assert kinds <= {"ImportFrom", "Import", "Assign"}, f"stack/__init__.py defines code: {kinds}"
    assigned = [t.id for node in body if isinstance(node, ast.Assign) for t in node.targets]
    assert assigned == ["__all__"]
    exported = {alias.asname or alias.name for node in body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert set(effectively_once.stack.__all__) == exported


def test_no_stack_module_imports_names_from_the_package():
    """``from effectively_once.stack import X`` is allowed only for a submodule X."""
    offenders = []
    for path in STACK_DIR.glob("*.py"):
        if path.stem == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "effectively_once.stack":
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name not in MODULES]
            if isinstance(node, ast.ImportFrom) and node.module == "effectively_once":
                offenders += [f"{path.name}: effectively_once.{a.name}" for a in node.names if a.name == "stack"]
    assert offenders == []


def test_the_killed_consumer_does_not_load_the_stack_package():
    """The consumer is a child killed and restarted many times: it needs ``quiet_logger``, not the brokers."""
    source = (STACK_DIR.parent / "payments" / "consumer.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("effectively_once.stack")}, imported
    code = ("import sys, effectively_once.payments.consumer; "
            "print(sorted(m for m in sys.modules if m.startswith('effectively_once.stack')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_name_the_package_exported_before_still_resolves():
    from effectively_once import stack

    for name in ("attach_or_start", "new_run_id", "quiet_logger", "choose_backend", "attach", "Stack", "StackError",
                 "BACKENDS", "LOCAL_BACKENDS", "start", "command_stack", "docker_available", "read_state",
                 "state_path", "stop_recorded", "to_stderr", "wait_for_state", "private_broker",
                 "detect_broker_flavor", "embedded_available", "STATE_FILE"):
        assert callable(getattr(stack, name)) or isinstance(getattr(stack, name), (tuple, str)), name
