"""Run the test lanes, each once, and keep their timings: what `make check`, `make test` and `make test-all` call.

    python tools/lanes.py unit                         # make check's tests: no services
    python tools/lanes.py integration notebooks        # make test, after make check
    python tools/lanes.py browser                      # make test-browser
    python tools/lanes.py tansu                        # make test-tansu
    python tools/lanes.py room                         # make test-room
    python tools/lanes.py docker                       # through tools/docker_lane.py (make test-docker)
    python tools/lanes.py integration -- -k churn -x   # anything after -- goes to pytest

One stack serves every lane that needs one (integration, notebooks, browser): it
is started once, before the first of them, in a private state directory that
the lanes attach to (``EO_TEST_HOME``, see tests/services.py), and stopped
after the last. The tansu lane, which runs again the tests marked
``tansu_pass`` or ``tansu_only`` on the Tansu broker, has a stack of its own.
Each lane writes a JUnit XML file with every test's duration to
``test-results/<lane>.xml``; ``python tools/slowest_tests.py`` reads them.
A lane that collects no test fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "test-results"
TEST_HOME = "EO_TEST_HOME"  # tests/services.py reads it: the lanes attach to this stack instead of starting one
NO_TESTS_COLLECTED = 5
# The docker lane: what needs Docker itself (tests/docker), and the checks that differ by broker again on the
# docker backend: the stack, the guarantee probe, the crash matrix, a killed broker container then `up`, and
# notebooks 00, 03 and 04.
DOCKER_TESTS = (
    "tests/docker",
    "tests/integration/test_stack.py",
    "tests/integration/test_guarantees.py",
    "tests/integration/test_matrix.py",
    "tests/integration/test_kafka4.py::test_kafka_transactions_lists_and_describes",
    "tests/integration/test_faults.py::test_a_process_killed_from_outside_shows_as_unhealthy",
    "tests/integration/test_faults.py::test_a_broker_killed_mid_run_restarts_with_up_and_every_message_is_charged_once",
    "tests/notebooks/test_notebooks.py::test_notebook_passes_nbval[notebooks/00_start_here.ipynb]",
    "tests/notebooks/test_notebooks.py::test_notebook_passes_nbval[notebooks/03_kafka_guarantees.ipynb]",
    "tests/notebooks/test_notebooks.py::test_notebook_passes_nbval[notebooks/04_kill_the_consumer.ipynb]",
)


@dataclass(frozen=True)
class Lane:
    """One lane: what pytest runs, on which broker, with how many xdist workers."""

    name: str
    paths: tuple[str, ...]
    markers: str | None = None
    backend: str | None = None          # None: no stack; else the backend its stack runs
    workers: int = 0                    # xdist workers; 0 runs in this process
    dist: str = "loadscope"             # how xdist hands the tests to its workers
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()          # more pytest options of this lane

    def command(self, extra: list[str], results: Path = RESULTS) -> list[str]:
        """The pytest command line of this lane, writing its JUnit XML into ``results``.

        Test files named in ``extra`` (``-- tests/integration/test_outbox.py``) run
        instead of the lane's whole folders.
        """
        paths = () if named_tests(extra) else self.paths
        cmd = [sys.executable, "-m", "pytest", *paths, "-p", "no:cacheprovider",
               f"--junitxml={results / f'{self.name}.xml'}", "-o", f"junit_suite_name={self.name}",
               "--durations=10", *self.args]
        if self.markers:
            cmd += ["-m", self.markers]
        if self.workers:
            # loadscope: each test module runs whole, in order, on one worker, so its fixtures start once.
            # worksteal: each test goes where a worker is free (each notebook is a test of its own).
            cmd += ["-n", str(self.workers), "--dist", self.dist]
        return cmd + extra


def _backend() -> str:
    return os.environ.get("EO_BACKEND", "embedded")


def _workers(default: int) -> int:
    """``EO_TEST_WORKERS`` overrides a lane's xdist workers (0: none, for an A/B measurement or a debugger)."""
    return int(os.environ.get("EO_TEST_WORKERS", default))


def lanes() -> dict[str, Lane]:
    """Every lane by name. The unit and browser lanes run on two xdist workers, the integration and
    notebooks lanes on three (benchmarks/lanes.py measures a lane with one count of workers against another)."""
    return {
        "unit": Lane("unit", ("tests/unit",), workers=_workers(2)),
        # Three workers on two cores: a test here waits on its broker, database and children much of its run.
        "integration": Lane("integration", ("tests/integration",), "not tansu_only", _backend(), _workers(3)),
        # Three notebooks at a time: a notebook waits on its broker, database and children about half of
        # its run (benchmarks/lanes.py measures one count of workers against another).
        "notebooks": Lane("notebooks", ("tests/notebooks",), "not tansu_only", _backend(), _workers(3),
                          dist="worksteal"),
        # Two workers, a module each at a time (each module has its own JupyterLab and Chromium): the Run Alls
        # of test_browser.py on one, the learner's interactions, the saved notebooks and the website on the
        # other (957 -> 748 s against none, side by side, before the saved notebooks had a module of their own).
        "browser": Lane("browser", ("tests/browser",), None, _backend(), _workers(2)),
        "tansu": Lane("tansu", ("tests/integration", "tests/notebooks"), "tansu_pass or tansu_only", "tansu",
                      env={"EO_BACKEND": "tansu"}),
        # Each module of the room lane starts its own secured stack; -s shows the room's time against one learner's.
        "room": Lane("room", ("tests/room",), None, None, args=("-s",)),
        # Run by tools/docker_lane.py (`make test-docker`), which first makes sure an engine and the images are here.
        "docker": Lane("docker", DOCKER_TESTS, None, "docker", env={"EO_BACKEND": "docker"}),
    }


def _cli(*args: str, home: Path, backend: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EO_HOME": str(home), "EO_BACKEND": backend}
    return subprocess.run([sys.executable, "-m", "effectively_once", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=900)


class TestStack:
    """A stack for the lanes, in a private state directory: `up` when entered, `down --purge` when left."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.home = Path(tempfile.mkdtemp(prefix=f"eo-lanes-{backend}-"))

    def __enter__(self) -> TestStack:
        started = time.monotonic()
        up = _cli("up", "--backend", self.backend, home=self.home, backend=self.backend)
        if up.returncode != 0:
            self.__exit__()
            raise SystemExit(f"lanes: the {self.backend} stack did not start:\n{up.stdout}\n{up.stderr}")
        print(f"== the lanes' {self.backend} stack is up in {time.monotonic() - started:.0f} s", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        from effectively_once.stack.processes import pid_alive
        from effectively_once.stack.record import read_record

        record = read_record(self.home / "stack.json")
        pids = record.pids if record else {}
        # What the lanes' runs left (a lane stopped from outside: its temporary directories, topics,
        # databases) goes while the records that name it are still here.
        _cli("clean", home=self.home, backend=self.backend)
        down = _cli("down", "--purge", home=self.home, backend=self.backend)
        shutil.rmtree(self.home, ignore_errors=True)
        left = [f"{name} (pid {pid})" for name, pid in pids.items() if pid_alive(pid)]
        if down.returncode != 0 or left:
            print(f"lanes: the {self.backend} stack did not stop cleanly: {down.stderr.strip()} {left}",
                  file=sys.stderr)


def named_tests(extra: list[str]) -> list[str]:
    """The arguments of ``extra`` that name a test file or folder (``path`` or ``path::test``)."""
    return [arg for arg in extra if not arg.startswith("-") and arg.split("::")[0].startswith("tests/")
            and Path(arg.split("::")[0]).exists()]


def outside(lane: Lane, extra: list[str]) -> list[str]:
    """The tests named in ``extra`` that lie outside ``lane``'s folders."""
    return [arg for arg in named_tests(extra)
            if not any(Path(arg.split("::")[0]).is_relative_to(folder) for folder in lane.paths)]


def run_lane(lane: Lane, extra: list[str], home: Path | None, results: Path = RESULTS) -> tuple[int, float]:
    """Run one lane's pytest; returns (exit code, seconds)."""
    env = {**os.environ, **lane.env}
    if home is not None:
        env[TEST_HOME] = env["EO_HOME"] = str(home)
    command = lane.command(extra, results)
    print(f"== lane {lane.name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    proc = start_group(command, cwd=ROOT, env=env)
    try:
        code = proc.wait()
    except BaseException:
        stop_group(proc)
        raise
    return code, time.monotonic() - started


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_group(command: list[str], **popen: object) -> subprocess.Popen:
    """Start ``command`` leading a process group of its own, with Ctrl-C (SIGINT) at its default.

    Its own group: a lane stopped from outside stops all its pytest started, children included
    (``stop_group``). SIGINT at its default: a shell that starts a job in the background without job
    control starts it with SIGINT ignored, and Python then never raises KeyboardInterrupt.
    """
    return subprocess.Popen(command, start_new_session=True, preexec_fn=_default_sigint, **popen)  # type: ignore[call-overload]


def stop_group(proc: subprocess.Popen, grace: float = 60.0, term_grace: float = 10.0) -> None:
    """Stop the process group ``proc`` leads: SIGINT, then SIGTERM and SIGKILL for whatever is left.

    ``grace`` is how long Ctrl-C has to end the group, ``term_grace`` how long SIGTERM has.

    SIGINT first: pytest (and each xdist worker) takes it as a Ctrl-C and still tears its fixtures
    down, so a stack a test started with `up` (a keeper in a session of its own) is stopped too.
    """
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, term_grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def summarize(results: list[tuple[str, int, float]]) -> int:
    """Print one line per lane run; 1 when any failed or collected no test, else 0."""
    failed = False
    for name, code, seconds in results:
        verdict = {0: "passed", NO_TESTS_COLLECTED: "FAILED: no test collected"}.get(code, f"FAILED (exit {code})")
        failed |= code != 0
        print(f"lane {name:<12} {verdict:<28} {seconds:6.0f} s   test-results/{name}.xml")
    return 1 if failed else 0


def _stop_on_sigterm() -> None:
    # `finally` blocks (the stacks' `down`) must run when CI or a terminal ends the run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    known = lanes()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lanes", nargs="+", choices=list(known), metavar="LANE",
                        help=f"one or more of: {', '.join(known)}")
    chosen = [known[name] for name in parser.parse_args(argv).lanes]
    for lane in chosen:
        if strays := outside(lane, extra):
            parser.error(f"{' '.join(strays)} is not in the {lane.name} lane ({', '.join(lane.paths)}): "
                         "name the lane whose folder holds it")
    RESULTS.mkdir(exist_ok=True)
    _stop_on_sigterm()
    results: list[tuple[str, int, float]] = []
    stacks: dict[str, TestStack] = {}
    try:
        for i, lane in enumerate(chosen):
            home = None
            if lane.backend is not None:
                if lane.backend not in stacks:
                    stacks[lane.backend] = TestStack(lane.backend).__enter__()
                home = stacks[lane.backend].home
            code, seconds = run_lane(lane, extra, home)
            results.append((lane.name, code, seconds))
            # A stack no later lane needs stops now, so the next lane has the machine.
            if lane.backend is not None and all(later.backend != lane.backend for later in chosen[i + 1:]):
                stacks.pop(lane.backend).__exit__()
    finally:
        for stack in stacks.values():
            stack.__exit__()
    return summarize(results)


if __name__ == "__main__":
    sys.exit(main())
