"""A room of thirty: every learner runs the demo at the same moment on one secured stack, and no run fails.

Heavy (a secured stack, thirty learners, ninety Python processes on the
machine at once): marked ``room``, run by ``make test-room`` and by the full
CI run, not by ``make test``. It prints the room's time against one learner
alone and the load average; it asserts correctness, not a wall-clock bound,
which a busy machine would break.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pytest

from effectively_once.connections import DEMO_CONNECTIONS, LEARNER_CONNECTION_LIMIT
from effectively_once.run_results import RunRecord
from effectively_once.stack.room import Room
from tests.conftest import run_cli
from tests.room.room_helpers import (
    charged_exactly_once,
    finish_demo,
    load_average,
    secured_room,
    start_demo,
    timed_demo,
)

LEARNERS = 30
MESSAGES = 10

# A room of thirty on two busy cores takes minutes; the suite's 600 s default would cut it short.
pytestmark = pytest.mark.timeout(3600)


class ConnectionSampler(threading.Thread):
    """Samples PostgreSQL's client sessions per role every half second; keeps each role's peak."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.peaks: dict[str, int] = defaultdict(int)
        self.total_peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.wait(0.5):
                rows = conn.execute("SELECT usename, count(*) FROM pg_stat_activity"
                                    " WHERE backend_type = 'client backend' GROUP BY usename").fetchall()
                for role, count in rows:
                    if role is not None:  # a session still logging in has no role yet
                        self.peaks[role] = max(self.peaks[role], count)
                self.total_peak = max(self.total_peak, sum(count for _, count in rows))


def test_thirty_learners_run_the_demo_at_once_and_each_run_charges_every_message_once():
    with secured_room(LEARNERS) as room:
        instructor = room.instructor()
        import psycopg

        with psycopg.connect(instructor.dsn) as conn:
            max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
        assert max_connections == Room(learners=LEARNERS).max_connections, "PostgreSQL is sized for the room"

        alone, report = timed_demo(room.learner_env(1), MESSAGES)
        assert charged_exactly_once(report, MESSAGES), report
        load_alone = load_average()

        sampler = ConnectionSampler(instructor.dsn)
        sampler.start()
        started = time.monotonic()
        runs = [start_demo(room.learner_env(n), MESSAGES) for n in range(1, LEARNERS + 1)]
        failures, reports = [], {}
        for n, proc in enumerate(runs, start=1):
            try:
                reports[n] = finish_demo(proc)
            except AssertionError as exc:
                failures.append(f"learner{n:02d}: {exc}")
        together = time.monotonic() - started
        sampler.done.set()
        sampler.join(10)

        print(f"\nroom of {LEARNERS}: {together:.0f} s for every run to finish, against {alone:.0f} s for one "
              f"learner alone: {together / alone:.1f}x (load average alone {load_alone}; after the room "
              f"{load_average()}); PostgreSQL sessions at the peak {sampler.total_peak} of {max_connections}, "
              f"the busiest learner {max(sampler.peaks.values(), default=0)} of {LEARNER_CONNECTION_LIMIT}")
        assert not failures, f"{len(failures)} of {LEARNERS} runs failed:\n" + "\n".join(failures)
        wrong = {n: r for n, r in reports.items() if not charged_exactly_once(r, MESSAGES)}
        assert not wrong, f"runs not charged exactly once: {wrong}"
        busiest = {role: peak for role, peak in sampler.peaks.items() if role.startswith("learner")}
        assert busiest and max(busiest.values()) <= DEMO_CONNECTIONS, \
            f"a demo opened more PostgreSQL connections than DEMO_CONNECTIONS ({DEMO_CONNECTIONS}): {busiest}"

        # The instructor sees each learner's last run, as a typed record.
        status = run_cli("workshop", "status", "--json", env=room.env)
        assert status.returncode == 0, status.stderr
        learners = [json.loads(line) for line in status.stdout.splitlines()]
        assert [s["name"] for s in learners] == [f"learner{n:02d}" for n in range(1, LEARNERS + 1)]
        for learner in learners:
            run = RunRecord(**{**learner["last_run"], "layers": tuple(learner["last_run"]["layers"])})
            assert run.ok and run.charges == MESSAGES and run.error is None, learner
