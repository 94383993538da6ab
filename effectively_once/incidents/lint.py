"""A lint rule of the kind the Stripe 2020 account calls for: an HTTP POST in consumer code needs an Idempotency-Key.

``python -m effectively_once lint PATH...`` reads Python files (directories are
searched for ``*.py``) and prints ``file:line: reason`` for each POST whose
headers do not visibly carry an ``Idempotency-Key``, and for each call of the
official Stripe SDK that moves money (``client.v1.charges.create``,
``client.v1.payment_intents.create`` and ``.confirm``, ``stripe.Charge.create``,
``stripe.PaymentIntent.create`` and ``.confirm``) without an ``idempotency_key``
of its own (in ``options={...}``, or the keyword of the module-level API). The
SDK sends a random key when given none: that covers the SDK's own retries of
the call, and nothing else, so a retry loop around it or a redelivered message
charges again. Exit status: 0 clean, 1 findings, 2 a file could not be read or parsed.

It reads the syntax tree, not the text, so it sees through:

- ``requests.post`` / ``httpx.post`` and aliases (``import requests as r``,
  ``from httpx import post as send``);
- sessions and clients: ``s = requests.Session(); s.post(...)``,
  ``with httpx.Client() as c: c.post(...)``, ``httpx.AsyncClient``,
  ``self.client = httpx.Client()``, a parameter annotated ``httpx.Client``;
- ``.request("POST", ...)`` (and httpx's ``.stream("POST", ...)``) on the modules or a client;
- headers given as a dict literal, ``dict(...)``, ``{**base, ...}``, ``a | b``,
  or a variable bound to one of those before the call and then changed with
  ``headers["Idempotency-Key"] = ...``, ``.update(...)``, ``.setdefault(...)``,
  ``|=``, ``.pop(...)`` or ``del``. Header names compare case-insensitively.

What it knowingly cannot check: headers built by a helper function,
``client.post(url, headers=idempotent_headers(msg))``. The rule does not follow
the call into the helper, so it cannot tell whether the key is there and
reports the POST as unverifiable, even when the helper does set the key. (A
variable it cannot trace, such as a function parameter, is reported the same
way.) Following a helper defined in the same module to its ``return {...}``
is the natural extension.

Also approximations, said plainly: a variable is traced within its function
(or the module) in line order, ignoring branches; a client is recognised by
name across the whole module; a method given as a variable (``request(m, ...)``)
is not treated as a POST.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HELP = "flag HTTP POST calls without an Idempotency-Key header (the lint rule of notebook 06)"

HEADER = "idempotency-key"
SDK_OPTION = "idempotency_key"  # the SDK's name for it, in ``options`` or as a keyword
HTTP_MODULES = ("requests", "httpx")
SDK_MODULES = ("stripe",)
# The SDK's calls that move money: the module-level API's, and a StripeClient's services (any receiver).
SDK_FUNCTIONS = {"stripe.Charge.create", "stripe.PaymentIntent.create", "stripe.PaymentIntent.confirm"}
SDK_SERVICE_METHODS = {("charges", "create"), ("payment_intents", "create"), ("payment_intents", "confirm")}
POST_FUNCTIONS = {"requests.post", "requests.api.post", "httpx.post"}
REQUEST_FUNCTIONS = {"requests.request", "requests.api.request", "httpx.request", "httpx.stream"}
CLIENT_CONSTRUCTORS = {"requests.Session", "requests.session", "requests.sessions.Session",
                       "httpx.Client", "httpx.AsyncClient"}
CLIENT_METHODS_WITH_METHOD_ARG = {"request", "stream"}


@dataclass(frozen=True)
class Finding:
    """One problem at ``path:line``; ``error`` marks a file that could not be checked at all."""

    path: str
    line: int
    reason: str
    error: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class LintSyntaxError(ValueError):
    """The source does not parse as Python, so no rule can be checked in it."""

    def __init__(self, filename: str, exc: SyntaxError):
        self.filename, self.line = filename, exc.lineno or 0
        super().__init__(f"{filename}:{self.line}: cannot check this file: it is not valid Python "
                         f"({exc.msg}); fix the syntax error and run the lint again")


# The three things the rule can conclude about a headers expression.
HAS_KEY, NO_KEY = "has key", "no key"
REMOVED = "key removed"  # a change to a variable: `del h["Idempotency-Key"]`, `h.pop("Idempotency-Key")`


@dataclass(frozen=True)
class _Unknown:
    why: str


def _combine(*states: object) -> object:
    """Merge the states of parts of a mapping: the key in any part wins, then an unknown part."""
    if HAS_KEY in states:
        return HAS_KEY
    unknown = [s for s in states if isinstance(s, _Unknown)]
    return unknown[0] if unknown else NO_KEY


_KEY_NAMES = [HEADER]  # what counts as the key in the mapping being traced: the header, or the SDK's option


def _is_key(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() == _KEY_NAMES[0]


def _dotted(node: ast.AST) -> str | None:
    """``self.client`` for an attribute chain of names, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _describe(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 50 else text[:47] + "..."


class _Checker:
    def __init__(self, tree: ast.Module, filename: str):
        self.tree, self.filename = tree, filename
        self.aliases: dict[str, str] = {}      # local name -> qualified name (module or function)
        self.clients: set[str] = set()         # dotted names bound to a session or client
        self.parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
        self._collect_imports()
        self._collect_clients()

    # -- names -------------------------------------------------------------------------------
    def _collect_imports(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    if top in HTTP_MODULES + SDK_MODULES:
                        # `import requests.api` binds `requests`; `import requests.api as a` binds the submodule.
                        self.aliases[alias.asname or top] = alias.name if alias.asname else top
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                    HTTP_MODULES + SDK_MODULES):
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def qualname(self, node: ast.AST) -> str | None:
        """``requests.post`` for ``r.post`` after ``import requests as r``; None if not an HTTP library name."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _is_constructor(self, node: ast.AST | None) -> bool:
        return isinstance(node, ast.Call) and self.qualname(node.func) in CLIENT_CONSTRUCTORS

    def _collect_clients(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and self._is_constructor(node.value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                self.clients.update(d for d in map(_dotted, targets) if d)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if self._is_constructor(item.context_expr) and item.optional_vars is not None:
                        name = _dotted(item.optional_vars)
                        if name:
                            self.clients.add(name)
            elif isinstance(node, ast.arg) and node.annotation is not None:
                annotation = node.annotation
                if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                    try:
                        annotation = ast.parse(annotation.value, mode="eval").body
                    except SyntaxError:
                        continue
                if self.qualname(annotation) in CLIENT_CONSTRUCTORS:
                    self.clients.add(node.arg)

    def _is_client(self, node: ast.AST) -> bool:
        if self._is_constructor(node):
            return True
        name = _dotted(node)
        return name is not None and name in self.clients

    # -- which calls are POSTs -----------------------------------------------------------------
    def sdk_label(self, call: ast.Call) -> str | None:
        """How to name ``call`` in a finding if it is a money-moving call of the Stripe SDK, else None."""
        name = self.qualname(call.func)
        if name in SDK_FUNCTIONS:
            return _describe(call.func)
        func = call.func
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)
                and (func.value.attr, func.attr) in SDK_SERVICE_METHODS):
            return _describe(func)
        return None

    def post_label(self, call: ast.Call) -> str | None:
        """How to name ``call`` in a finding if it is an HTTP POST, else None."""
        name = self.qualname(call.func)
        written = _describe(call.func)
        shown = name if written == name else f"{written} ({name})"
        if name in POST_FUNCTIONS:
            return shown
        if name in REQUEST_FUNCTIONS:
            return f'{shown} with "POST"' if self._method_is_post(call) else None
        if isinstance(call.func, ast.Attribute) and self._is_client(call.func.value):
            receiver = _describe(call.func.value)
            if call.func.attr == "post":
                return f"{receiver}.post"
            if call.func.attr in CLIENT_METHODS_WITH_METHOD_ARG and self._method_is_post(call):
                return f'{receiver}.{call.func.attr}("POST")'
        return None

    @staticmethod
    def _method_is_post(call: ast.Call) -> bool:
        method = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "method"), None)
        return isinstance(method, ast.Constant) and isinstance(method.value, str) and method.value.upper() == "POST"

    # -- what the headers hold ----------------------------------------------------------------
    def options_state(self, call: ast.Call) -> object:
        """HAS_KEY, NO_KEY or _Unknown for the idempotency key of an SDK call."""
        for keyword in call.keywords:
            if keyword.arg == SDK_OPTION:
                value = keyword.value
                return NO_KEY if isinstance(value, ast.Constant) and value.value is None else HAS_KEY
            if keyword.arg == "options":
                _KEY_NAMES[0] = SDK_OPTION
                try:
                    state = self.expr_state(keyword.value, call)
                finally:
                    _KEY_NAMES[0] = HEADER
                return _Unknown(state.why.replace("its headers", "its options")) if isinstance(state, _Unknown) \
                    else state
            if keyword.arg is None:
                return _Unknown(f"its arguments come from **{_describe(keyword.value)}")
        return NO_KEY

    def headers_state(self, call: ast.Call) -> object:
        for keyword in call.keywords:
            if keyword.arg == "headers":
                return self.expr_state(keyword.value, call)
            if keyword.arg is None:  # **kwargs: the headers may be inside
                return _Unknown(f"its arguments come from **{_describe(keyword.value)}")
        return NO_KEY

    def expr_state(self, node: ast.AST, at: ast.AST, depth: int = 0) -> object:
        """HAS_KEY, NO_KEY or _Unknown for a headers expression evaluated at node ``at``."""
        if depth > 20:
            return _Unknown("its headers are built through too many variables")
        if isinstance(node, ast.Dict):
            parts: list[object] = [HAS_KEY if _is_key(k) else NO_KEY for k in node.keys if k is not None]
            # A None key is a `**mapping` unpacked into the dict: its value's state counts.
            parts += [self.expr_state(v, at, depth + 1)
                      for k, v in zip(node.keys, node.values, strict=True) if k is None]
            return _combine(NO_KEY, *parts)
        if isinstance(node, ast.Constant) and node.value is None:
            return NO_KEY
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return _combine(self.expr_state(node.left, at, depth + 1), self.expr_state(node.right, at, depth + 1))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            return self._dict_call_state(node, at, depth)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "copy"
                and not node.args):
            return self.expr_state(node.func.value, at, depth + 1)
        if isinstance(node, ast.Name):
            return self._variable_state(node.id, at, depth)
        if isinstance(node, ast.Call):
            return _Unknown(f"its headers come from a call to {_describe(node.func)}(), which this rule does not "
                            "look into")
        return _Unknown(f"its headers come from {_describe(node)}, which this rule cannot trace")

    def _dict_call_state(self, node: ast.Call, at: ast.AST, depth: int) -> object:
        parts: list[object] = [NO_KEY]
        for arg in node.args:
            if isinstance(arg, (ast.List, ast.Tuple)):  # dict([("Idempotency-Key", k), ...])
                parts += [HAS_KEY if isinstance(e, (ast.Tuple, ast.List)) and e.elts and _is_key(e.elts[0])
                          else NO_KEY for e in arg.elts]
            else:
                parts.append(self.expr_state(arg, at, depth + 1))
        for keyword in node.keywords:
            if keyword.arg is None:
                parts.append(self.expr_state(keyword.value, at, depth + 1))
            elif keyword.arg.lower() == HEADER:  # cannot be spelt with a dash, but be exact anyway
                parts.append(HAS_KEY)
        return _combine(*parts)

    def _scope_of(self, node: ast.AST) -> ast.AST:
        current = self.parents.get(node)
        while current is not None and not isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                ast.Lambda, ast.Module)):
            current = self.parents.get(current)
        return current or self.tree

    def _in_scope(self, scope: ast.AST) -> Iterable[ast.AST]:
        """Nodes of ``scope`` without descending into nested functions or classes."""
        stack = list(ast.iter_child_nodes(scope))
        while stack:
            node = stack.pop()
            yield node
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                stack.extend(ast.iter_child_nodes(node))

    def _variable_state(self, name: str, at: ast.AST, depth: int) -> object:
        scope = self._scope_of(at)
        bindings, changes = self._bindings(scope, name, getattr(at, "lineno", 10**9))
        if not bindings and scope is not self.tree:
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and name in {
                    a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)}:
                return _Unknown(f"its headers come from the parameter {name!r}, which this rule cannot trace")
            # A module-level variable: the function may run after any of its bindings.
            bindings, changes = self._bindings(self.tree, name, 10**9)
        if not bindings:
            return _Unknown(f"its headers come from {name!r}, which is not bound in this file")
        bound_at, value = bindings[-1]
        state = self.expr_state(value, value, depth + 1) if value is not None else _Unknown(
            f"its headers come from {name!r}, bound in a way this rule cannot trace")
        for change_line, change in changes:
            if change_line <= bound_at:
                continue
            state = NO_KEY if change == REMOVED else _combine(state, change)
        return state

    def _bindings(self, scope: ast.AST, name: str, before: int) -> tuple[list[tuple[int, ast.AST | None]],
                                                                          list[tuple[int, object]]]:
        """Bindings ``name = value`` and changes to the mapping ``name`` in ``scope`` before line ``before``."""
        bindings: list[tuple[int, ast.AST | None]] = []
        changes: list[tuple[int, object]] = []
        for node in self._in_scope(scope):
            line = getattr(node, "lineno", 0)
            if line >= before:
                continue
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == name:
                        bindings.append((line, node.value))
                    elif (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                          and target.value.id == name and _is_key(target.slice)):
                        changes.append((line, HAS_KEY))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                bindings.append((line, node.value))
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                changes.append((line, self.expr_state(node.value, node)))
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)):
                targets = [node.target] if isinstance(node, (ast.For, ast.AsyncFor)) else [
                    i.optional_vars for i in node.items if i.optional_vars is not None]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    bindings.append((line, None))
            elif isinstance(node, ast.Delete):
                for target in node.targets:
                    if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                            and target.value.id == name and _is_key(target.slice)):
                        changes.append((line, REMOVED))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == name):
                method = node.func.attr
                if method == "update":
                    changes.append((line, self._dict_call_state(node, node, 1)))
                elif method == "setdefault" and node.args and _is_key(node.args[0]):
                    changes.append((line, HAS_KEY))
                elif method == "pop" and node.args and _is_key(node.args[0]):
                    changes.append((line, REMOVED))
        bindings.sort(key=lambda b: b[0])
        changes.sort(key=lambda c: c[0])
        return bindings, changes

    # -- the rule ---------------------------------------------------------------------------------
    def findings(self) -> list[Finding]:
        found = []
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            sdk = self.sdk_label(node)
            if sdk is not None:
                state = self.options_state(node)
                if state == HAS_KEY:
                    continue
                if isinstance(state, _Unknown):
                    reason = (f"{sdk}: cannot confirm an idempotency_key: {state.why}; pass "
                              "options={'idempotency_key': ...} where this rule can see it")
                else:
                    reason = (f"{sdk} passes no idempotency_key, so the SDK makes up a random one: it covers the "
                              "SDK's own retries of this call, and a second call (a retry around it, a redelivered "
                              "message) can charge twice: pass one derived from the message id")
                found.append(Finding(self.filename, node.lineno, reason))
                continue
            label = self.post_label(node)
            if label is None:
                continue
            state = self.headers_state(node)
            if state == HAS_KEY:
                continue
            if isinstance(state, _Unknown):
                reason = (f"{label}: cannot confirm an Idempotency-Key header: {state.why}; "
                          "pass the header where this rule can see it")
            elif any(k.arg == "headers" for k in node.keywords):
                reason = (f"{label} sends headers without an Idempotency-Key; a retry of this POST can "
                          "charge twice: add one derived from the message id")
            else:
                reason = (f"{label} sends no headers, so no Idempotency-Key; a retry of this POST can "
                          "charge twice: add one derived from the message id")
            found.append(Finding(self.filename, node.lineno, reason))
        return sorted(found, key=lambda f: f.line)


def lint_source(source: str, filename: str = "<source>") -> list[Finding]:
    """Findings for one Python source text; ``LintSyntaxError`` when it does not parse."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise LintSyntaxError(filename, exc) from None
    return _Checker(tree, filename).findings()


def _python_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.py")
                      if not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts))
    return [path]


def lint_paths(paths: Sequence[str | Path]) -> list[Finding]:
    """Findings for files and directories (searched for ``*.py``).

    A path that is missing, unreadable or not valid Python yields one finding
    with ``error=True`` saying so, and the other files are still checked.
    """
    found: list[Finding] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            found.append(Finding(str(path), 0, "no such file or directory", error=True))
            continue
        for file in _python_files(path):
            try:
                source = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                found.append(Finding(str(file), 0, f"cannot read this file: {exc}", error=True))
                continue
            try:
                found.extend(lint_source(source, str(file)))
            except LintSyntaxError as exc:
                found.append(Finding(str(file), exc.line, str(exc).split(": ", 2)[-1], error=True))
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m effectively_once lint``."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="Python files or directories of consumer code")


def run(args: argparse.Namespace) -> int:
    """Print ``file:line: reason`` per finding; exit 0 clean, 1 findings, 2 a file could not be checked."""
    found = lint_paths(args.paths)
    for finding in found:
        print(finding, file=sys.stderr if finding.error else sys.stdout)
    if any(f.error for f in found):
        return 2
    if found:
        print(f"{len(found)} HTTP POST call(s) without a visible Idempotency-Key", file=sys.stderr)
        return 1
    return 0
