"""``$EO_HOME/stack.json``: what ``up``'s keeper records, typed, and the only code that knows its keys.

The keeper writes one of two records:

- ``StackRecord``: the stack is running, and how to reach it (``"ready": true``);
- ``StackFailure``: the keeper could not start it, and why (``"ready": false``).

``read_record(path)`` gives either (None when there is no file);
``record.write(path)`` replaces the file atomically (a temporary file renamed
over it), readable by its owner only, since an external stack's record holds
the learner's database password. A field name is its JSON key. A file another
version of the course wrote (a field missing, or of the wrong type) raises
``StaleRecord``: one sentence with the fix, never a ``KeyError``. Keys this
version does not know are ignored, so a record a newer version wrote, or
``status --json``'s report (the record's fields and the live checks), still reads.

    record = StackRecord.from_json(json.loads(text))
    record.kafka_bootstrap, record.pids["broker"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from effectively_once.stack.core import StackError

if TYPE_CHECKING:
    from effectively_once.stack.core import Stack

READY = "ready"  # true for a StackRecord, false for a StackFailure
FIX = "run `python -m effectively_once down`, then `up` again"


class StaleRecord(StackError):
    """stack.json cannot be read as this version writes it; the message says what to do.

    ``problem`` says what is wrong with the file; ``pids`` are the processes it
    lists that could still be read, so ``down`` can stop them.
    """

    def __init__(self, path: Path, problem: str, pids: Mapping[str, int] | None = None) -> None:
        self.problem = f"{path} {problem}"
        self.pids = dict(pids or {})
        super().__init__(f"{self.problem}: {FIX}.")


@dataclass(frozen=True)
class StackRecord:
    """A running stack, as ``up``'s keeper recorded it."""

    backend: str
    kafka_bootstrap: str
    postgres_dsn: str               # the superuser's; without its password on a secured stack
    namespace: str
    pids: Mapping[str, int]         # "keeper" and each server process
    broker_flavor: str = "unknown"
    broker_version: str | None = None
    java: str | None = None
    containers: Mapping[str, str] = field(default_factory=dict)  # docker: server name -> container id
    images: Mapping[str, str] = field(default_factory=dict)      # docker: server name -> image
    secure: bool = False
    credentials_file: str | None = None  # a secured stack: the instructor's logins (mode 0600)
    root: str | None = None              # where a local stack keeps its files
    revived: int = 0                     # how many times the keeper was asked to restart dead processes
    revive_error: str | None = None      # why the last of those restarts failed

    @property
    def keeper(self) -> int | None:
        return self.pids.get("keeper")

    @classmethod
    def of(cls, stack: Stack, keeper: int) -> StackRecord:
        """The record of ``stack``, kept alive by the keeper process ``keeper``."""
        return cls.from_json({**stack.describe(), READY: True, "root": stack.root,
                              "pids": {"keeper": keeper, **stack.pids}})

    @classmethod
    def from_json(cls, data: object, path: Path | str = "stack.json") -> StackRecord:
        """The record in ``data`` (parsed JSON); ``StaleRecord`` when it is not one this version wrote."""
        found = parse(data, path)
        if isinstance(found, StackFailure):
            raise StaleRecord(Path(path), f"records a stack that did not start ({found.error})", found.pids)
        return found

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> StackRecord:
        """The record within ``status --json``'s report of a running stack (its fields, less ``ready``)."""
        return cls.from_json({**report, READY: True}, "the status report")

    def to_json(self) -> dict[str, Any]:
        """The record as stack.json holds it; ``containers``, ``images``, ``secure``, ``credentials_file``,
        ``revived`` and ``revive_error`` only when they say something (docker, secured, revived)."""
        data = {READY: True, **_fields_json(self)}
        for optional in ("containers", "images", "secure", "credentials_file", "revived", "revive_error"):
            if not data[optional]:
                del data[optional]
        return data

    def write(self, path: Path) -> None:
        _write(path, self.to_json())


@dataclass(frozen=True)
class StackFailure:
    """The keeper could not start the stack: why, and its pid."""

    error: str
    pids: Mapping[str, int]

    @property
    def keeper(self) -> int | None:
        return self.pids.get("keeper")

    def to_json(self) -> dict[str, Any]:
        return {READY: False, **_fields_json(self)}

    def write(self, path: Path) -> None:
        _write(path, self.to_json())


def read_record(path: Path) -> StackRecord | StackFailure | None:
    """The record at ``path``, or None when there is none; ``StaleRecord`` when it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:  # none yet, or a keeper that stopped removed it
        return None
    except OSError as exc:
        raise StaleRecord(path, f"cannot be read ({exc.strerror})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StaleRecord(path, f"is not JSON ({exc.msg} at line {exc.lineno})") from exc
    return parse(data, path)


def parse(data: object, path: Path | str = "stack.json") -> StackRecord | StackFailure:
    """The record ``data`` holds, checked field by field."""
    where = Path(path)
    if not isinstance(data, dict):
        raise StaleRecord(where, f"holds {type(data).__name__}, not a record")
    kind: type[StackRecord] | type[StackFailure] = StackFailure if data.get(READY) is False else StackRecord
    if READY not in data or not isinstance(data[READY], bool):
        raise StaleRecord(where, f"was written by an older version of the course (its {READY!r} is missing "
                                 "or not true or false)", _salvage(data))
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(kind):
        if spec.name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise StaleRecord(where, f"was written by an older version of the course (it has no "
                                         f"{spec.name!r})", _salvage(data))
            continue
        value = data[spec.name]
        if not _is(value, hints[spec.name]):
            raise StaleRecord(where, f"has {spec.name!r} = {value!r}, not {_describe(hints[spec.name])} (it was "
                                     "written by another version of the course, or edited)", _salvage(data))
        values[spec.name] = dict(value) if isinstance(value, dict) else value
    return kind(**values)


def _fields_json(record: StackRecord | StackFailure) -> dict[str, Any]:
    return {spec.name: (dict(value) if isinstance(value := getattr(record, spec.name), Mapping) else value)
            for spec in dataclasses.fields(record)}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` at once: a reader sees the old record or the new one, never half of one."""
    from effectively_once.stack.secure import write_private

    tmp = write_private(path.with_suffix(".tmp"), json.dumps(data, indent=2))
    os.replace(tmp, path)


def _salvage(data: dict[str, Any]) -> dict[str, int]:
    """The pids a record that cannot be read still lists (for ``down``)."""
    pids = data.get("pids")
    if not isinstance(pids, dict):
        return {}
    return {str(name): pid for name, pid in pids.items() if _is(pid, int)}


def _is(value: object, hint: Any) -> bool:
    """Whether ``value`` (parsed JSON) has the type ``hint`` (str, int, bool, X | None, Mapping[str, X])."""
    origin = typing.get_origin(hint)
    if origin is Union or type(hint).__name__ == "UnionType":
        return any(_is(value, option) for option in typing.get_args(hint))
    if origin is Mapping:
        key_type, value_type = typing.get_args(hint)
        return isinstance(value, dict) and all(_is(k, key_type) and _is(v, value_type) for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """``hint`` in words, for the message about a field of the wrong type."""
    origin = typing.get_origin(hint)
    if origin is Union or type(hint).__name__ == "UnionType":
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if origin is Mapping:
        key_type, value_type = typing.get_args(hint)
        nouns = {str: "string", int: "integer"}
        return f"an object of {nouns.get(key_type, key_type)} keys and {nouns.get(value_type, value_type)} values"
    return {str: "a string", int: "an integer", bool: "true or false", type(None): "null"}.get(hint, str(hint))
