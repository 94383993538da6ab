"""The lanes keep their promises: tests/unit refuses the stack and notices a service; every test sits in a lane."""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import ROOT
from tests.unit.conftest import LANE_MARK, ServiceWatch

LANES = ("unit", "integration", "notebooks", "browser", "docker", "room")


def test_a_unit_test_that_asks_for_the_stack_fails_at_once_with_its_name(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    pytester.makeconftest("from tests.unit.conftest import *  # noqa: F403\n")
    pytester.makepyfile(test_wants_a_broker="def test_charges_on_the_broker(stack):\n    assert stack\n")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # none is needed; they cost seconds to load
    # It fails in its setup, before any fixture could start a thing; and this test's own watch (the inner
    # pytest is its child) would fail it if a broker or a PostgreSQL had started.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_charges_on_the_broker*",
                                 "*test_wants_a_broker.py::test_charges_on_the_broker asks for the fixture 'stack'*"
                                 "move the test to tests/integration*"])


def _detached(program: str, env: dict[str, str]) -> int:
    """Start ``program 30`` detached (its parent exits at once, as `up`'s keeper's does); returns its pid."""
    out = subprocess.run(["sh", "-c", f'"{program}" 30 >/dev/null 2>&1 & echo $!'], env=env, capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


def test_the_watch_sees_a_detached_service_of_its_run_and_nothing_else(tmp_path):
    """A program named postgres, detached, carrying the run's mark, is seen; unmarked, or a script named java, not."""
    sleep = shutil.which("sleep")
    assert sleep
    fake_postgres = tmp_path / "postgres"
    shutil.copy(sleep, fake_postgres)
    script_java = tmp_path / "java"
    script_java.write_text("#!/bin/sh\nexec sleep \"$1\"\n")
    script_java.chmod(0o755)
    mark = uuid.uuid4().hex
    watch = ServiceWatch(mark)
    clean = {k: v for k, v in os.environ.items() if k != LANE_MARK}
    pids = [_detached(str(fake_postgres), clean), _detached(str(script_java), {**clean, LANE_MARK: mark})]
    try:
        time.sleep(0.3)
        watch.sample()
        assert watch.seen == [], "neither an unmarked process nor a script named java is this run's service"
        pids.append(_detached(str(fake_postgres), {**clean, LANE_MARK: mark}))
        time.sleep(0.3)
        watch.sample()
        assert len(watch.seen) == 1 and watch.seen[0].startswith(f"postgres (pid {pids[-1]})"), watch.seen
    finally:
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def test_every_test_file_lives_in_a_lane():
    """A test file directly under tests/ would run in no lane: say where it belongs, by its markers."""
    strays = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text()
        lane = "browser" if "mark.browser" in text else "integration" if "mark.integration" in text else "unit"
        strays.append(f"git mv {path.relative_to(ROOT)} tests/{lane}/")
    assert not strays, "test files outside the lanes; move them:\n" + "\n".join(strays)
    assert {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and (p / "conftest.py").exists()} == set(LANES)


def _calls_make(path) -> list[int]:
    """Lines of ``path`` that run `make` as a command (a list or a string starting with it)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            if isinstance(first, ast.List | ast.Tuple) and first.elts:
                first = first.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.split()[:1] == ["make"]:
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("lane", LANES)
def test_no_test_runs_make(lane):
    """`make check` and `make test` run the lanes; a test that ran make would run a lane twice."""
    found = {str(p.relative_to(ROOT)): _calls_make(p) for p in (ROOT / "tests" / lane).rglob("*.py")}
    assert not {name: lines for name, lines in found.items() if lines}


def test_a_notebook_run_dies_with_the_lane_that_started_it(tmp_path):
    # The notebooks lane runs each notebook in an inner pytest: killed from outside (CI's timeout, a
    # Ctrl-C), the lane's pytest must not leave that inner run going on against a stack going away.
    from effectively_once.lifetime import pid_alive

    pid_file = tmp_path / "inner.pid"
    inner = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    outer = ("import sys\n"
             f"sys.path.insert(0, {str(ROOT)!r})\n"
             "from tests.notebooks.test_notebooks import _pytest\n"
             f"_pytest([sys.executable, '-c', {inner!r}])\n")
    lane = subprocess.Popen([sys.executable, "-c", outer], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert pid_alive(child)
    finally:
        lane.kill()
        lane.wait()
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child), f"the inner run (pid {child}) outlived the lane's pytest"


def test_a_lane_stopped_from_outside_interrupts_its_whole_group_first_and_leaves_none_of_it(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import lanes
    finally:
        sys.path.remove(str(ROOT / "tools"))
    from effectively_once.lifetime import pid_alive

    torn_down, grandchild = tmp_path / "torn-down", tmp_path / "grandchild.pid"
    # A lane's pytest: on Ctrl-C it tears its fixtures down; its own child ignores SIGINT and must still go.
    child = ("import os, signal, subprocess, sys, time\n"
             "try:\n"
             "    g = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGINT, "
             "signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
             f"    open({str(grandchild)!r}, 'w').write(str(g.pid))\n"
             "    time.sleep(120)\n"
             f"except KeyboardInterrupt:\n    open({str(torn_down)!r}, 'w').write('yes')\n")
    # Started as the lane starts its pytest, from a process that ignores SIGINT (a background job of a shell).
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = lanes.start_group([sys.executable, "-c", child])
    finally:
        signal.signal(signal.SIGINT, ignored)
    deadline = time.monotonic() + 30
    while not (grandchild.exists() and grandchild.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    lanes.stop_group(proc, grace=2.0, term_grace=1.0)
    assert torn_down.read_text() == "yes", "the lane's pytest got no Ctrl-C to tear its fixtures down with"
    assert proc.poll() is not None and not pid_alive(int(grandchild.read_text())), "part of the lane is left"

