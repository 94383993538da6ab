"""Stripe's request bodies: ``application/x-www-form-urlencoded`` with bracket nesting.

Stripe's API v1 takes form-encoded bodies, not JSON
(https://docs.stripe.com/api: "The API accepts form-encoded request bodies").
A nested object travels as one pair per leaf, the path in square brackets,
and a list as indexed pairs::

    amount=1250&currency=usd&metadata[msg_id]=m-1&payment_method_types[0]=card

That is exactly what the official Python SDK sends: its ``_api_encode``
(stripe-python 16.1.0, ``stripe/_encode.py``) writes a dict as ``key[sub]``,
a list as ``key[0]``, ``key[1]``..., a boolean as ``true``/``false``, and
leaves out a ``None``; the requestor then un-escapes the brackets ("fine by
the server, and makes these parameter strings easier to read",
``stripe/_api_requestor.py``). This module decodes such a body into the
nested dict a JSON body would have given (every leaf a string: turning
``"1250"`` into ``1250`` is the contract's job, which knows each field's
type), and encodes a dict the same way the SDK does.

Nothing here knows the provider's fields: a malformed body raises
``FormError`` naming the parameter, and the contract turns it into a 400.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

FORM = "application/x-www-form-urlencoded"
# Deeper than any parameter of Stripe's API; a deeper name is refused rather than built.
MAX_DEPTH = 5
# A body of MAX_BODY_BYTES could hold tens of thousands of pairs; Stripe's largest requests hold a few hundred.
MAX_PAIRS = 1000
MAX_LIST_LENGTH = 100

_NAME = re.compile(r"^(?P<head>[^\[\]]+)(?P<rest>(\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """A form body that cannot be decoded: ``param`` names the parameter, ``message`` says why."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


def _path(name: str) -> list[str]:
    """``metadata[msg_id]`` -> ``["metadata", "msg_id"]``; ``FormError`` for a name that is not one."""
    match = _NAME.match(name)
    if match is None:
        raise FormError(_shown(name), f"Invalid parameter name {_shown(name)!r}: use name or name[key] "
                                      "(square brackets only around a key).")
    path = [match.group("head"), *_PART.findall(match.group("rest"))]
    if len(path) > MAX_DEPTH:
        raise FormError(_shown(name), f"{_shown(name)} is nested more than {MAX_DEPTH} levels deep.")
    return path


def _shown(name: str) -> str:
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in name)
    return text if len(text) <= 60 else text[:57] + "..."


def _param_name(path: list[str]) -> str:
    """A path as the error names it: ``metadata.msg_id``, as the JSON validator names the same field."""
    return ".".join(path)


def decode(text: str) -> dict[str, Any]:
    """The nested dict a form body stands for; ``FormError`` naming the parameter when it has none.

    ``key[sub]=v`` nests; ``key[0]=v`` and ``key[]=v`` nest under ``"0"``,
    ``"1"``... (``as_list`` makes the list where the contract expects one). A
    name given twice, or both as a value and as an object, is refused.
    Percent-escapes must decode to UTF-8. Every leaf is a string.
    """
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_PAIRS)
    except UnicodeDecodeError:
        raise FormError("body", "The form body is not valid UTF-8 once its percent-escapes are decoded.") from None
    except ValueError:
        raise FormError("body", f"The form body has more than {MAX_PAIRS} parameters.") from None
    root: dict[str, Any] = {}
    appended: dict[tuple[str, ...], int] = {}
    for name, value in pairs:
        path = _path(name)
        node: dict[str, Any] = root
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise FormError(_param_name(path[:depth + 1]),
                                f"{_param_name(path[:depth + 1])} is given both as a value and with keys.")
            node = child
        leaf = path[-1]
        if leaf == "" and len(path) > 1:
            # key[]=a&key[]=b: Rails' way of writing a list, which Stripe's API also reads.
            prefix = tuple(path[:-1])
            leaf = str(appended.get(prefix, 0))
            appended[prefix] = int(leaf) + 1
        if leaf in node:
            raise FormError(_param_name([*path[:-1], leaf]), f"{_param_name([*path[:-1], leaf])} is given more "
                                                             "than once.")
        node[leaf] = value
    return root


def as_list(node: dict[str, Any], param: str) -> list[Any]:
    """The list a decoded ``key[0]=..&key[1]=..`` stands for, where the contract expects a list.

    Only the contract knows whether ``metadata[0]=x`` is a list or an object
    with the key ``"0"``, so ``decode`` keeps objects and this turns one into
    a list on request; ``FormError`` when its keys are not 0, 1, 2...
    """
    if not node:
        return []
    if not all(key.isdigit() and (key == "0" or not key.startswith("0")) for key in node):
        raise FormError(param, f"{param} is a list: send it as {param}[0], {param}[1]...")
    indexes = sorted(int(key) for key in node)
    if indexes != list(range(len(indexes))):
        raise FormError(param, f"{param} is a list: its indexes must run 0, 1, 2... without a gap.")
    if len(indexes) > MAX_LIST_LENGTH:
        raise FormError(param, f"{param} has more than {MAX_LIST_LENGTH} items.")
    return [node[str(i)] for i in indexes]


def pairs(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """The ``(name, value)`` pairs the SDK's ``_api_encode`` sends for ``params`` (None left out)."""
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            yield from pairs(value, name)
        elif isinstance(value, (list, tuple)):
            yield from pairs({str(i): item for i, item in enumerate(value)}, name)
        elif isinstance(value, bool):
            yield name, "true" if value else "false"
        else:
            yield name, str(value)


def encode(params: Mapping[str, Any]) -> str:
    """``params`` form-encoded into the pairs the SDK sends, brackets left readable."""
    return "&".join(f"{quote(name, safe='[]')}={quote(value, safe='')}" for name, value in pairs(params))
