"""``StackRecord``: stack.json read and written in one place, and a file from another version refused in a sentence."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from effectively_once.stack import StackError
from effectively_once.stack.core import Stack
from effectively_once.stack.record import READY, StackFailure, StackRecord, StaleRecord, read_record
from tests.conftest import ROOT, run_cli

RECORD_MODULE = ROOT / "effectively_once" / "stack" / "record.py"
SCANNED = ("effectively_once", "tools", "benchmarks")
# Keys other documents use too, for their own data: "error" (HTTP bodies, the engine's answers) and
# "containers" (``Stack.health()``'s live checks). Every other key of stack.json is the record's alone.
SHARED_KEYS = {"error", "containers"}
RECORD_KEYS = ({f.name for f in dataclasses.fields(StackRecord)} | {f.name for f in dataclasses.fields(StackFailure)}
               | {READY}) - SHARED_KEYS


def a_record(**changes) -> StackRecord:
    stack = Stack(backend="embedded", kafka_bootstrap="127.0.0.1:19092",
                  base_dsn="postgresql://postgres:secret@127.0.0.1:15432/postgres", broker_flavor="apache-kafka",
                  broker_version="4.1.0", java="/opt/java/bin/java", namespace="alice", pids={"broker": 101,
                                                                                            "postgres": 102},
                  root="/tmp/eo-home/stack")
    return dataclasses.replace(StackRecord.of(stack, keeper=100), **changes)


def test_a_record_survives_the_round_trip_through_its_file(tmp_path):
    path = tmp_path / "stack.json"
    for record in (a_record(), a_record(containers={"broker": "c0ffee"}, images={"kafka": "apache/kafka:4.1.0"},
                                        secure=True, credentials_file="/home/i/credentials.json"),
                   a_record(revived=2, revive_error="postgres did not start")):
        record.write(path)
        assert read_record(path) == record
        assert StackRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    failure = StackFailure("no Java runtime", {"keeper": 100})
    failure.write(path)
    assert read_record(path) == failure
    assert (path.stat().st_mode & 0o777) == 0o600, "an external stack's record holds a password: owner only"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.json"], "the temporary file was renamed over it"
    assert read_record(tmp_path / "missing.json") is None


def test_the_file_keeps_the_keys_the_scripts_read():
    record = a_record()
    data = record.to_json()
    assert data[READY] is True and data["pids"] == {"keeper": 100, "broker": 101, "postgres": 102}
    assert data["kafka_bootstrap"] == "127.0.0.1:19092" and data["backend"] == "embedded"
    assert data["root"] == "/tmp/eo-home/stack" and data["broker_flavor"] == "apache-kafka"
    assert "containers" not in data and "secure" not in data and "revived" not in data, "written only when set"
    assert StackFailure("boom", {"keeper": 7}).to_json() == {READY: False, "error": "boom", "pids": {"keeper": 7}}


def test_a_record_another_version_wrote_gives_the_sentence_with_the_fix(tmp_path):
    path = tmp_path / "stack.json"
    old = a_record().to_json()
    del old["namespace"]
    path.write_text(json.dumps(old))
    with pytest.raises(StaleRecord) as caught:
        read_record(path)
    message = str(caught.value)
    assert isinstance(caught.value, StackError), "a StackError: IPython shows its sentence, not a traceback"
    assert "older version" in message and "'namespace'" in message and str(path) in message, message
    assert "python -m effectively_once down`, then `up` again" in message, message
    assert caught.value.pids == {"keeper": 100, "broker": 101, "postgres": 102}, "down can still stop them"

    path.write_text(json.dumps({**a_record().to_json(), "pids": {"keeper": "100"}}))
    with pytest.raises(StaleRecord, match="'pids' = .*not an object of string keys and integer values"):
        read_record(path)
    path.write_text(json.dumps({**a_record().to_json(), "revived": True}))
    with pytest.raises(StaleRecord, match="'revived' = True, not an integer"):
        read_record(path)
    path.write_text('{"ready": true, "backend": ')
    with pytest.raises(StaleRecord, match="is not JSON"):
        read_record(path)


def test_unknown_keys_are_ignored_and_not_written_back():
    record = a_record()
    newer = {**record.to_json(), "added_by_a_newer_version": {"x": 1}, "healthy": True}
    assert StackRecord.from_json(newer) == record
    assert "added_by_a_newer_version" not in StackRecord.from_json(newer).to_json()
    report = {**record.to_json(), "running": True, "healthy": True, "problems": [], "fix": None}
    del report[READY]
    assert StackRecord.from_report(report) == record, "status --json's report holds the record"


def test_the_command_line_refuses_an_old_record_in_one_sentence(tmp_path):
    old = a_record().to_json()
    del old["kafka_bootstrap"]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        old["pids"] = {"keeper": sleeper.pid}
        (tmp_path / "stack.json").write_text(json.dumps(old))
        env = {**os.environ, "EO_HOME": str(tmp_path)}
        for command in ("status", "up"):
            result = run_cli(command, env=env, timeout=120)
            assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
            said = (result.stdout + result.stderr).strip()
            assert "has no 'kafka_bootstrap'" in said and "`python -m effectively_once down`, then `up`" in said, said
        assert sleeper.poll() is None, "status and up left the old record's processes alone"
        down = run_cli("down", env=env, timeout=120)
        assert down.returncode == 0 and "Traceback" not in down.stderr, down.stderr
        assert f"keeper (pid {sleeper.pid})" in down.stdout and "state removed" in down.stdout, down.stdout
        assert sleeper.wait(timeout=30) is not None, "down stopped the process the old record lists"
        assert not (tmp_path / "stack.json").exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def _record_key_uses(path: Path) -> list[str]:
    """``x["kafka_bootstrap"]`` and ``x.get("pids")``-style uses of stack.json's keys in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args
              and isinstance(node.args[0], ast.Constant)):
            key = node.args[0].value
        if isinstance(key, str) and key in RECORD_KEYS:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_record_module_reads_stack_json_by_its_keys():
    assert {"kafka_bootstrap", "postgres_dsn", "pids", "ready", "root", "credentials_file"} <= RECORD_KEYS
    sources = [p for folder in SCANNED for p in sorted((ROOT / folder).rglob("*.py")) if p != RECORD_MODULE]
    assert len(sources) > 50
    uses = [use for path in sources for use in _record_key_uses(path)]
    assert not uses, "read stack.json through StackRecord's fields, not its keys:\n" + "\n".join(uses)
