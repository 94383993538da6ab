"""The unit lane needs no services: it refuses the stack's fixtures, and fails a test that starts a service.

* A unit test that asks for ``stack``, ``provider`` or ``private_home`` fails
  at once, before anything starts, with its own name and where it belongs.
* Every unit test runs under a watch: a thread samples the machine's processes
  every 0.1 s, and a test during which a ``java``, ``postgres`` or Tansu broker
  process of this run appeared fails, naming the process. A process is this
  run's when it descends from this pytest or carries the run's mark in its
  environment (``EO_TEST_LANE``, which every child inherits, detached or not);
  the other engineers' JVMs on a shared machine are not.
* ``EO_HOME`` points at an empty directory of the lane's own, so no unit test
  sees (or stops) a stack someone started with ``make up``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.services import SERVICE_FIXTURES

LANE_MARK = "EO_TEST_LANE"
# Programs that are services: the JVM (Apache Kafka), PostgreSQL and its tools, Tansu (its binary is versioned).
SERVICE_PROGRAMS = ("java", "postgres", "postmaster", "initdb", "pg_ctl", "tansu")


def is_service_program(name: str) -> bool:
    """True for the name of a service's program (``tansu-v0.6.0-...`` included)."""
    return name in SERVICE_PROGRAMS or name.startswith("tansu")


# A process is looked at again while it is this young: one just forked may not have exec'd its program yet.
YOUNG_SECONDS = 2.0


@dataclass
class ServiceWatch:
    """Samples the machine's processes and keeps each service process of this run that it sees start.

    A sample looks only at the processes new since the last one (and at those still young enough to
    exec another program): every process of the machine, every 0.1 s and after every test, would cost
    the lane several seconds of CPU.
    """

    mark: str
    interval: float = 0.1
    seen: list[str] = field(default_factory=list)
    _known: set[tuple[int, float]] = field(default_factory=set)
    _pids: set[int] = field(default_factory=set)
    _young: dict[int, float] = field(default_factory=dict)  # pid -> its start time, while it is young
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.since = time.time() - 1.0
        self.root = os.getpid()
        self._lock = threading.Lock()

    def _ours(self, proc: psutil.Process) -> bool:
        try:
            if any(parent.pid == self.root for parent in proc.parents()):
                return True
            return proc.environ().get(LANE_MARK) == self.mark
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            return False

    def sample(self) -> None:
        """Look at the processes new since the last sample, and the young ones again; record the service
        programs of this run started since the watch began."""
        with self._lock:
            now, pids = time.time(), set(psutil.pids())
            fresh, self._pids = pids - self._pids, pids
            self._young = {pid: started for pid, started in self._young.items()
                           if pid in pids and now - started < YOUNG_SECONDS}
            for pid in fresh | set(self._young):
                self._look_at(pid, now)

    def _look_at(self, pid: int, now: float) -> None:
        try:
            proc = psutil.Process(pid)
            name, started = proc.name(), proc.create_time()
        except psutil.Error:
            return
        if started < self.since:
            return
        if now - started < YOUNG_SECONDS:
            self._young[pid] = started
        if not is_service_program(name) or (pid, started) in self._known:
            return
        try:
            # A script merely named `java` (some tests fake an old Java) is not a JVM: look at the program run.
            program = Path(proc.exe()).name
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            return
        if is_service_program(program) and self._ours(proc):
            self._known.add((pid, started))
            self.seen.append(f"{program} (pid {pid}): {' '.join(proc.cmdline()[:4])[:200]}")

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except psutil.Error:
                continue

    def start(self) -> ServiceWatch:
        threading.Thread(target=self.run, name="service-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture(scope="session")
def service_watch():
    """The lane's watch, over a state directory of its own (EO_HOME) and the run's mark in the environment."""
    home = Path(tempfile.mkdtemp(prefix="eo-unit-home-"))
    saved = {name: os.environ.get(name) for name in ("EO_HOME", LANE_MARK)}
    os.environ["EO_HOME"] = str(home)
    os.environ[LANE_MARK] = uuid.uuid4().hex
    watch = ServiceWatch(os.environ[LANE_MARK]).start()
    yield watch
    watch.stop()
    shutil.rmtree(home, ignore_errors=True)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def no_service_started(request, service_watch):
    """Fail the test during which a service process of this run appeared."""
    before = len(service_watch.seen)
    yield
    service_watch.sample()
    started = service_watch.seen[before:]
    if started:
        pytest.fail(f"{request.node.nodeid} started a service, which tests/unit must not: {'; '.join(started)}. "
                    "Move the test to tests/integration.", pytrace=False)


def _refuse(request):
    pytest.fail(f"{request.node.nodeid} asks for the fixture {request.fixturename!r}, which needs the stack; "
                "tests/unit runs without services: move the test to tests/integration.", pytrace=False)


for _name in SERVICE_FIXTURES:
    globals()[_name] = pytest.fixture(name=_name)(_refuse)
