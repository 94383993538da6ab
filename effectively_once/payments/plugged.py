"""The module a step function written in a notebook becomes, so a consumer process can run it as written.

A consumer is its own process: it cannot see the notebook's kernel. To run a
step the learner wrote in a cell, ``PluggedStep`` (in ``payments.matrix``)
writes it to a module file. :func:`step_module_source` writes that module so
that the function finds every global name it uses, as it did in the kernel:

- a module it uses (``import uuid`` at the top of its cell, or in any earlier
  cell) becomes the same ``import``;
- a function, class or constant imported from a module (``from uuid import
  uuid4``) becomes the same ``from ... import``;
- a function defined beside it (in its notebook, or its file) is copied in,
  with what that function uses in turn;
- a plain value (a number, a string, a tuple of them...) is copied by value.

Anything else it uses (an object made in the notebook, such as a database
connection) cannot cross into another process; the error names it before any
process starts. Names it uses that the kernel does not have either are left
alone: they fail in the consumer as they would have failed in the kernel.
"""

from __future__ import annotations

import ast
import dis
import importlib
import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any

_LITERALS = (int, float, complex, str, bytes, bool, type(None), tuple, list, dict, set, frozenset)


def _global_names(code: types.CodeType) -> set[str]:
    """Every global name a code object (and the functions and comprehensions inside it) reads or writes."""
    names = {str(ins.argval) for ins in dis.get_instructions(code)
             if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _definition_names(source: str) -> set[str]:
    """Names read where a ``def`` line is evaluated: decorators, defaults and annotations."""
    tree = ast.parse(source)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return set()
    parts: list[ast.AST] = [*node.decorator_list, *node.args.defaults,
                            *(d for d in node.args.kw_defaults if d is not None)]
    every_arg = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]
    parts += [a.annotation for a in every_arg if a is not None and a.annotation is not None]
    if node.returns is not None:
        parts.append(node.returns)
    return {n.id for part in parts for n in ast.walk(part) if isinstance(n, ast.Name)}


def _function_source(function: Callable) -> str:
    try:
        return textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as exc:
        raise ValueError(f"the source of {function.__name__} cannot be read ({exc}): define it with def "
                         "in a notebook cell or a file") from None


def _is_literal(value: Any) -> bool:
    if not isinstance(value, _LITERALS):
        return False
    try:
        return bool(ast.literal_eval(repr(value)) == value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def _imported_from(value: Any, name: str) -> str | None:
    """``from module import attribute`` when that gives ``value`` itself (found under ``name``), else None."""
    modules = {getattr(value, "__module__", None), type(value).__module__}
    qualname = getattr(value, "__qualname__", None)
    attributes = {name} | ({qualname} if isinstance(qualname, str) and "." not in qualname else set())
    for module in sorted(m for m in modules if isinstance(m, str) and m not in ("__main__", "builtins")):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        for attribute in sorted(attributes):
            if getattr(found, attribute, None) is value:
                return f"from {module} import {attribute}" + ("" if attribute == name else f" as {name}")
    return None


class _ModuleWriter:
    """Collects what a function needs, in the order a module must define it: imports, values, functions."""

    def __init__(self, function: Callable) -> None:
        self.home = function.__module__
        self.imports: dict[str, str] = {}
        self.values: dict[str, str] = {}
        self.functions: dict[str, str] = {}
        self.add_function(function.__name__, function)

    def add_function(self, name: str, function: Callable) -> None:
        source = _function_source(function)
        self.functions[name] = source
        uses = _global_names(function.__code__) | _definition_names(source)
        namespace = function.__globals__
        for used in sorted(uses):
            if used in namespace and used not in self.functions:
                self.add(used, namespace[used], function.__name__)

    def add(self, name: str, value: Any, user: str) -> None:
        if name in self.imports or name in self.values:
            return
        if isinstance(value, types.ModuleType):
            self.imports[name] = (f"import {value.__name__}" if value.__name__ == name
                                  else f"import {value.__name__} as {name}")
        elif isinstance(value, types.FunctionType) and value.__module__ == self.home:
            self.add_function(name, value)  # written beside the step: copied in, with what it uses
        elif _is_literal(value):
            self.values[name] = f"{name} = {value!r}"
        elif (statement := _imported_from(value, name)) is not None:
            self.imports[name] = statement
        else:
            raise ValueError(
                f"{user} uses {name!r}, an object of type {type(value).__name__} that cannot be copied into the "
                "consumer process that runs your step: it can use imports, functions and plain values (numbers, "
                "strings) from your notebook; create anything else inside the function.")

    def text(self) -> str:
        blocks = [sorted(self.imports.values()), [self.values[k] for k in sorted(self.values)]]
        # Helpers first, the step last: each def after what it uses is not required, but reads better.
        functions = list(self.functions.values())
        parts = ["\n".join(block) for block in blocks if block] + [f.rstrip("\n") for f in reversed(functions)]
        return "\n\n\n".join(parts) + "\n"


def step_module_source(function: Callable) -> str:
    """The text of a module that defines ``function`` and every global name it uses (see the module's docstring).

    Raises ``ValueError`` naming the global it cannot carry over, or when its source cannot be read.
    """
    if not isinstance(function, types.FunctionType):
        raise TypeError(f"{function!r} is not a function defined with def")
    return _ModuleWriter(function).text()
