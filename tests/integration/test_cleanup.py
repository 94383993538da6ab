"""`clean` and `reset` against the real stack: a killed run leaves nothing, a live run is never touched.

Each owner is a real Python process that runs a payment pipeline on the
session's stack (a topic and its dead-letter topic, a consumer group, a shop
and a provider database, the provider and a consumer paused mid-charge), as a
notebook does, and is killed with SIGKILL, as a crashed kernel would be.
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

import psycopg

from effectively_once import runs
from effectively_once.lifetime import pid_alive, stop_pid
from tests.conftest import run_cli

OWNER = textwrap.dedent("""
    import json, time
    from effectively_once.payments.lab import PaymentLab
    from effectively_once.stack import attach_or_start

    stack = attach_or_start(progress=lambda *_: None)
    lab = PaymentLab(stack, "both", partitions=1)
    lab.start_provider()
    lab.produce(2, seed=1)
    consumer = lab.start_consumer(pause_at="after_provider_call")
    consumer.wait_until_paused(60)
    print(json.dumps({
        "topic": lab.topic, "group": lab.group,
        "databases": [lab.shop_dsn.rsplit("/", 1)[1], lab.provider_dsn.rsplit("/", 1)[1]],
        "processes": [lab.provider.pid, consumer.pid],
        "directories": [str(lab.provider.log_dir), str(consumer.log_dir)],
    }), flush=True)
    time.sleep(300)
""")


class Owner:
    """A process that ran a pipeline on the stack, and what it made there."""

    def __init__(self, notebook: str | None = None) -> None:
        env = os.environ.copy()
        env.pop("JPY_SESSION_NAME", None)
        if notebook:
            env["JPY_SESSION_NAME"] = notebook
        self.proc = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("{"), f"the owner did not get its pipeline running: {line!r}"
        self.made = json.loads(line)
        self.run = next(run for run in runs.all_runs() if run.owner.pid == self.proc.pid)

    def kill(self, watchdog_first: bool) -> None:
        """SIGKILL the owner; with ``watchdog_first`` its watchdog dies before it, so that only `clean` is left."""
        if watchdog_first:
            stop_pid(self.run.owner.watchdog, signal.SIGKILL, timeout=5)
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _topics(stack) -> set[str]:
    return set(stack.admin().list_topics(timeout=10).topics)


def _groups(stack) -> set[str]:
    admin = stack.admin()  # held while its future is answered
    return {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result(timeout=15).valid}


def _databases(stack) -> set[str]:
    with psycopg.connect(stack.postgres_dsn("postgres")) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def _left_on(stack, made: dict) -> list[str]:
    """What of a run is still there: processes, topics (the .dlq too), its group, databases, directories."""
    topics = _topics(stack)
    left = [f"process {pid}" for pid in made["processes"] if pid_alive(pid)]
    left += [t for t in (made["topic"], made["topic"] + ".dlq") if t in topics]
    left += [g for g in (made["group"],) if g in _groups(stack)]
    left += [d for d in made["databases"] if d in _databases(stack)]
    left += [d for d in made["directories"] if Path(d).exists()]
    return left


def _wait_until_gone(stack, made: dict, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while _left_on(stack, made) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _left_on(stack, made)


def test_a_killed_runs_watchdog_removes_everything_it_made_at_once(stack):
    owner = Owner()
    assert len(_left_on(stack, owner.made)) == 9, "the pipeline should be running before the kill"
    assert owner.made["topic"] + ".dlq" in _topics(stack), "the consumer creates its dead-letter topic"
    owner.kill(watchdog_first=False)
    left = _wait_until_gone(stack, owner.made, 30)
    assert not left, f"30 s after its owner's SIGKILL the run still has: {left}"
    assert not owner.run.path.exists(), "a run with nothing left keeps its record"


def test_clean_removes_what_a_killed_run_left_and_never_touches_a_live_one(stack):
    alive, dead = Owner("/course/my-course/05_observability.ipynb"), Owner()
    try:
        dead.kill(watchdog_first=True)
        # Its provider and consumer die with it (a parent-death signal), not by `clean`.
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in dead.made["processes"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(pid_alive(pid) for pid in dead.made["processes"]), "the run's processes outlived it"
        left = _left_on(stack, dead.made)
        assert len(left) == 7, f"before clean: the topic, its .dlq, the group, 2 databases, 2 log dirs; got {left}"

        listed = run_cli("clean", "--dry-run")
        assert listed.returncode == 0, listed.stderr
        for name in (dead.made["topic"], dead.made["group"], *dead.made["databases"], *dead.made["directories"]):
            assert name in listed.stdout, f"clean --dry-run does not list {name}:\n{listed.stdout}"
        assert _left_on(stack, dead.made) == left, "clean --dry-run removed something"

        cleaned = run_cli("clean")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert not _left_on(stack, dead.made), f"clean left: {_left_on(stack, dead.made)}\n{cleaned.stdout}"
        assert "notebook 05_observability" in cleaned.stdout  # listed as left alone
        assert len(_left_on(stack, alive.made)) == 9, f"clean touched the live run: {_left_on(stack, alive.made)}"
    finally:
        alive.kill(watchdog_first=False)
    assert not _wait_until_gone(stack, alive.made, 30)


def test_reset_restores_the_notebook_and_drops_its_runs_only(stack, monkeypatch):
    workspace = Path(tempfile.mkdtemp(prefix="eo-test-workspace-"))
    monkeypatch.setenv("EO_WORKSPACE", str(workspace))
    assert run_cli("workspace").returncode == 0
    copy = workspace / "04_kill_the_consumer.ipynb"
    course = Path(__file__).resolve().parents[2] / "notebooks" / "04_kill_the_consumer.ipynb"
    copy.write_text("the learner's own edits")
    of_04 = Owner(str(workspace / "04_kill_the_consumer.ipynb"))
    of_lab = Owner(str(workspace / "labs" / "04_kill_the_consumer.ipynb"))
    try:
        refused = run_cli("reset", "04")
        assert refused.returncode == 1 and "still running in a kernel" in refused.stderr, refused.stderr
        assert copy.read_text() == "the learner's own edits" and len(_left_on(stack, of_04.made)) == 9

        of_04.kill(watchdog_first=True)
        reset = run_cli("reset", "04")
        assert reset.returncode == 0, reset.stdout + reset.stderr
        assert copy.read_bytes() == course.read_bytes(), "reset did not restore the course's version"
        backups = list((workspace / ".backups").glob("04_kill_the_consumer-*.ipynb"))
        assert [b.read_text() for b in backups] == ["the learner's own edits"], "reset lost the learner's copy"
        assert not _left_on(stack, of_04.made), f"reset 04 left: {_left_on(stack, of_04.made)}"
        assert len(_left_on(stack, of_lab.made)) == 9, "reset 04 touched the run of labs/04"
    finally:
        of_lab.kill(watchdog_first=False)
        if of_04.proc.poll() is None:
            of_04.kill(watchdog_first=False)
        shutil.rmtree(workspace, ignore_errors=True)
    assert not _wait_until_gone(stack, of_lab.made, 30)
