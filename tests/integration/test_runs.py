"""The runs' records, their watchdog, `clean` and `down` for what needs no services (effectively_once.runs).

Each owner here is a real Python process with its own run file under a private
EO_HOME; it is killed with SIGKILL, as a crashed kernel would be. What sits
on a broker or a database (topics, groups, databases) is tested against the
real stack in test_cleanup.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from effectively_once import runs
from effectively_once.lifetime import pid_alive, stop_pid
from tests.conftest import run_cli

# An owner: records what the test asks for, prints it as JSON, then waits to be killed.
OWNER = textwrap.dedent("""
    import json, signal, subprocess, sys, time
    from effectively_once import runs

    made = {}
    made["temp"] = str(runs.temp_dir("eo-test-run-"))
    released = runs.temp_dir("eo-test-run-")
    runs.remove_dir(released)
    made["released"] = str(released)
    kept = runs.temp_dir("eo-test-kept-")
    runs.record(runs.Resource("directory", str(kept), keep=True))
    made["kept"] = str(kept)
    # A process started without a parent-death signal (as on macOS or Windows): only the watchdog stops it.
    sleeper = subprocess.Popen(["sleep", "120"], start_new_session=True)
    runs.record_process("sleeper", sleeper.pid, signal.SIGTERM)
    made["sleeper"] = sleeper.pid
    # A topic on a stack whose files are gone: gone with them, nothing to reach.
    runs.record(runs.Resource("topic", "test.gone", stack="files:/nonexistent/stack"))
    print(json.dumps(made), flush=True)
    time.sleep(120)
""")


@pytest.fixture
def home(monkeypatch):
    """A private EO_HOME, exported here and to the owners; its runs' leftovers are removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="eo-runs-home-"))
    monkeypatch.setenv("EO_HOME", str(path))
    yield path
    for run in runs.all_runs(path / "runs" / "owners"):
        for resource in run.resources:
            if resource.kind == "process":
                stop_pid(resource.pid, signal.SIGKILL, timeout=5)
            if resource.kind == "directory":
                shutil.rmtree(resource.name, ignore_errors=True)
        if run.owner.watchdog:
            stop_pid(run.owner.watchdog, signal.SIGKILL, timeout=5)
    shutil.rmtree(path, ignore_errors=True)


def _start_owner(notebook: str | None = None) -> tuple[subprocess.Popen, dict]:
    env = os.environ.copy()
    env.pop("JPY_SESSION_NAME", None)
    if notebook:
        env["JPY_SESSION_NAME"] = notebook
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, env=env)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line.startswith("{"), f"the owner did not start: {line!r}"
    return owner, json.loads(line)


def _run_of(owner: subprocess.Popen) -> runs.Run:
    found = [run for run in runs.all_runs() if run.owner.pid == owner.pid]
    assert len(found) == 1, f"expected one run of pid {owner.pid}, found {found}"
    return found[0]


def _wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _kill(owner: subprocess.Popen) -> None:
    owner.kill()
    owner.wait()
    assert owner.stdout is not None
    owner.stdout.close()


@pytest.mark.parametrize("session, tag", [
    ("/home/a/course/my-course/04_kill_the_consumer.ipynb", "04_kill_the_consumer"),
    ("/home/a/course/notebooks/04_kill_the_consumer.ipynb", "04_kill_the_consumer"),
    ("my-course/labs/04_kill_the_consumer.ipynb", "labs/04_kill_the_consumer"),
    ("C:\\\\course\\\\my-course\\\\solutions\\\\06_incidents.ipynb", "solutions/06_incidents"),
    ("/home/a/scratch.py", None),
    ("", None),
])
def test_a_run_is_tagged_with_the_notebook_jupyterlab_names(session, tag):
    assert runs.notebook_tag(session) == tag


def test_a_resource_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind 'table'"):
        runs.Resource("table", "x")  # type: ignore[arg-type]


def test_a_run_records_what_it_holds_and_its_watchdog_removes_it_when_the_owner_is_killed(home):
    owner, made = _start_owner("/x/my-course/04_kill_the_consumer.ipynb")
    run = _run_of(owner)
    assert run.owner.notebook == "04_kill_the_consumer" and run.owner.alive
    assert pid_alive(run.owner.watchdog), "the run has no watchdog"
    held = {(r.kind, r.name) for r in run.resources}
    assert ("directory", made["temp"]) in held and ("directory", made["kept"]) in held
    assert ("directory", made["released"]) not in held, "a directory removed by its run is still listed"
    assert ("process", "sleeper") in held and ("topic", "test.gone") in held

    _kill(owner)
    assert _wait_for(lambda: not pid_alive(made["sleeper"]), 15), "the watchdog left the run's process running"
    assert _wait_for(lambda: not Path(made["temp"]).exists(), 15), "the watchdog left the run's temporary directory"
    assert _wait_for(lambda: not pid_alive(run.owner.watchdog), 15), "the watchdog outlived its work"
    assert Path(made["kept"]).is_dir(), "the watchdog removed what the run kept to inspect"
    after = runs.read_run(run.path)
    assert after is not None and [(r.kind, r.name) for r in after.resources] == [("directory", made["kept"])]

    listed = run_cli("clean", "--dry-run")
    assert listed.returncode == 0 and made["kept"] in listed.stdout and Path(made["kept"]).is_dir()
    cleaned = run_cli("clean")
    assert cleaned.returncode == 0 and f"removed directory {made['kept']}" in cleaned.stdout, cleaned.stdout
    assert not Path(made["kept"]).exists() and not run.path.exists()
    assert "Nothing to clean" in run_cli("clean").stdout


def test_clean_never_touches_a_run_whose_owner_is_alive(home):
    alive, made_alive = _start_owner()
    dead, made_dead = _start_owner()
    try:
        # The dead one's watchdog goes first, so that `clean` is what finds its leftovers.
        stop_pid(_run_of(dead).owner.watchdog, signal.SIGKILL, timeout=5)
        _kill(dead)
        # On Linux its sleeper would be gone with a parent-death signal; this one was started without.
        assert pid_alive(made_dead["sleeper"])
        result = run_cli("clean")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"process sleeper (pid {made_dead['sleeper']})" in result.stdout
        assert not pid_alive(made_dead["sleeper"]) and not Path(made_dead["temp"]).exists()
        assert "Left alone, their owner still runs" in result.stdout
        assert pid_alive(made_alive["sleeper"]) and Path(made_alive["temp"]).is_dir(), "clean touched a live run"
        assert _run_of(alive).resources, "clean rewrote a live run's record"
    finally:
        _kill(alive)


def test_down_stops_the_processes_dead_runs_left_even_with_no_stack(home):
    owner, made = _start_owner()
    stop_pid(_run_of(owner).owner.watchdog, signal.SIGKILL, timeout=5)
    _kill(owner)
    assert pid_alive(made["sleeper"])
    result = run_cli("down")
    assert result.returncode == 0 and "Nothing is running" in result.stdout
    assert f"process sleeper (pid {made['sleeper']})" in result.stdout, result.stdout
    assert not pid_alive(made["sleeper"])
    assert Path(made["temp"]).is_dir(), "down stops processes only; clean removes the rest"


def test_one_cleaner_at_a_time(home):
    owner, _ = _start_owner()
    run = _run_of(owner)
    try:
        first, second = runs.RunLock(run), runs.RunLock(run)
        assert first.acquire()
        blocker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            first.path.write_text(str(blocker.pid))  # held by another live process
            assert not second.acquire() and second.holder == blocker.pid
        finally:
            blocker.kill()
            blocker.wait()
        assert second.acquire(), "a lock whose holder died is not taken over"
        second.release()
        assert not first.path.exists()
    finally:
        _kill(owner)
