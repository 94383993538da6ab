"""What each run created, written down as it creates it, so that nothing outlives the process that owns it.

A *run* is one process of the course that creates things: a notebook's
kernel, a test session, a command such as ``demo``, the keeper behind ``up``.
Its *owner* is that process (its pid and start time, so a reused pid is never
taken for it). The package's code that creates a topic, a consumer group, a
database, a temporary directory or a process records it here the moment it
does, and records its release when it removes it:

    $EO_HOME/runs/owners/<pid>-<start>.jsonl

one JSON object per line: the owner first, then ``created`` and ``released``
entries. What is created and never released is what the run still holds.

When the owner dies, however it dies, its watchdog (``effectively_once.watchdog``,
started with the first entry) stops the processes it left and removes the
rest; ``python -m effectively_once clean`` does the same for any run whose
owner is gone, and ``reset NB`` for the runs of one notebook. Runs are tagged
with the notebook their kernel runs (JupyterLab tells the kernel in
``JPY_SESSION_NAME``).

Standard library only at import time: the command line imports it before ``make setup``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any, Literal, get_args

from effectively_once.lifetime import SIGKILL, pid_alive, process_started, same_process, spawn
from effectively_once.settings import eo_home, namespace

ResourceKind = Literal["process", "topic", "group", "database", "directory"]
RESOURCE_KINDS: tuple[str, ...] = get_args(ResourceKind)
# Folders the course keeps notebooks in besides the main one: a run of labs/04 is not a run of 04.
NOTEBOOK_FOLDERS = ("labs", "solutions")


@dataclass(frozen=True)
class Resource:
    """One thing a run created: what it is, its name, and where it lives.

    - ``process``: ``name`` says what it is (``consumer``, ``broker``); ``pid``
      and ``started`` name the process, ``stop_signal`` is how to ask it to stop
      (SIGKILL follows after a few seconds);
    - ``topic``, ``group``: the full name, on the stack ``stack`` (see
      ``Stack.ref``); a topic's ``.dlq`` and other topics named after it
      (``<name>.…``) go with it, and so do a group's;
    - ``database``: the full name on the stack's PostgreSQL;
    - ``directory``: an absolute path.

    ``keep`` marks what its creator asked to keep after the run (``demo --keep``):
    the watchdog leaves it, ``clean`` and ``reset`` remove it.
    """

    kind: ResourceKind
    name: str
    stack: str | None = None
    pid: int | None = None
    started: float | None = None
    stop_signal: int | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        if self.kind not in RESOURCE_KINDS:
            raise ValueError(f"kind {self.kind!r}: use one of {', '.join(RESOURCE_KINDS)}")

    @property
    def key(self) -> tuple[str, str, str | None, int | None]:
        """What identifies it: a release names the same key as its creation."""
        return (self.kind, self.name, self.stack, self.pid)

    def describe(self) -> str:
        """One short line for a listing."""
        if self.kind == "process":
            return f"process {self.name} (pid {self.pid})"
        where = f" on {self.stack}" if self.stack else ""
        return f"{self.kind} {self.name}{where}" + (" (kept)" if self.keep else "")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Resource:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class Owner:
    """The process a run belongs to."""

    pid: int
    started: float
    namespace: str
    notebook: str | None = None      # e.g. "04_kill_the_consumer", "labs/04_kill_the_consumer"
    command: str = ""               # what the process runs, shortened, for listings
    watchdog: int | None = None

    @property
    def alive(self) -> bool:
        """True while the owner process runs (the same process, not a reused pid)."""
        return same_process(self.pid, self.started)

    def describe(self) -> str:
        what = f"notebook {self.notebook}" if self.notebook else self.command or "a process"
        return f"{what} (pid {self.pid})"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Owner:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class Run:
    """A run as its file tells it: its owner and what it still holds."""

    path: Path
    owner: Owner
    resources: list[Resource] = field(default_factory=list)

    def held(self, *kinds: str) -> list[Resource]:
        """What the run holds, of the given kinds (all kinds when none are given)."""
        return [r for r in self.resources if not kinds or r.kind in kinds]


# -- where runs are written ------------------------------------------------------------------------
def runs_dir() -> Path:
    """Where the runs of this ``$EO_HOME`` are recorded: ``$EO_HOME/runs/owners``."""
    return eo_home() / "runs" / "owners"


def notebook_tag(session_name: str | None = None) -> str | None:
    """The notebook this kernel runs, as ``reset`` names it: ``04_kill_the_consumer`` or ``labs/04_...``.

    JupyterLab passes the notebook's path to the kernel in ``JPY_SESSION_NAME``;
    None outside a notebook (a test, a command).
    """
    raw = session_name if session_name is not None else os.environ.get("JPY_SESSION_NAME")
    if not raw:
        return None
    path = PurePath(raw.replace("\\", "/"))
    if path.suffix != ".ipynb":
        return None
    folder = path.parent.name
    return f"{folder}/{path.stem}" if folder in NOTEBOOK_FOLDERS else path.stem


def _command_line() -> str:
    argv = [PurePath(a).name if i == 0 else a for i, a in enumerate(sys.argv[:3])]
    return " ".join(argv)[:80]


class _Recorder:
    """This process's run file: created with the first entry, with a watchdog that outlives the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[Path, Path] = {}          # runs dir -> this process's run file in it
        self._pid: int | None = None
        self._watchdogs: dict[Path, subprocess.Popen] = {}
        self._warned = False

    def _file(self) -> Path:
        if self._pid != os.getpid():  # a forked child is a run of its own
            self._files.clear()
            self._watchdogs.clear()
            self._pid = os.getpid()
        directory = runs_dir()
        path = self._files.get(directory)
        watchdog = self._watchdogs.get(directory)
        if path is not None and path.exists() and watchdog is not None and watchdog.poll() is None:
            return path
        pid = os.getpid()
        started = process_started(pid) or 0.0
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{pid}-{started:.2f}.jsonl"
        if watchdog is None or watchdog.poll() is not None:
            watchdog = _start_watchdog(path, pid, started)
            self._watchdogs[directory] = watchdog
        if not path.exists():
            owner = Owner(pid=pid, started=started, namespace=namespace(), notebook=notebook_tag(),
                          command=_command_line(), watchdog=watchdog.pid)
            _append(path, {"owner": asdict(owner)})
        self._files[directory] = path
        return path

    def write(self, entry: str, resource: Resource) -> None:
        with self._lock:
            # A release by a process that recorded nothing (a cleaner dropping a dead run's database)
            # is no run of its own.
            if entry == "released" and (self._pid != os.getpid() or runs_dir() not in self._files):
                return
            try:
                _append(self._file(), {entry: asdict(resource)})
            except OSError as exc:
                # A run that cannot be written down still runs: its children die with it all the
                # same (parent-death signal); only `clean` cannot find what it leaves.
                if not self._warned:
                    self._warned = True
                    print(f"warning: cannot record this run in {runs_dir()} ({exc}); "
                          "`python -m effectively_once clean` will not see what it creates", file=sys.stderr)


_RECORDER = _Recorder()


def _append(path: Path, entry: dict[str, Any]) -> None:
    # One write of one short line to a file opened for appending: lines of two writers never interleave.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, separators=(",", ":")) + "\n")


def _start_watchdog(path: Path, pid: int, started: float) -> subprocess.Popen:
    """The watchdog of this process's run: a process of its own session that outlives this one."""
    log = path.with_suffix(".log")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "effectively_once.watchdog", "--run", str(path), "--pid", str(pid),
             "--started", f"{started:.2f}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            # The watchdog must not keep a notebook's name, or it would tag runs of its own.
            env={k: v for k, v in os.environ.items() if k != "JPY_SESSION_NAME"})


# -- recording -------------------------------------------------------------------------------------
def record(resource: Resource) -> Resource:
    """Write down that this process created ``resource``; return it."""
    _RECORDER.write("created", resource)
    return resource


def release(resource: Resource) -> None:
    """Write down that ``resource`` is gone (removed by its creator)."""
    _RECORDER.write("released", resource)


def record_process(name: str, pid: int, stop_signal: int) -> Resource:
    """Record a child process (``name`` says what it is), asked to stop with ``stop_signal``."""
    return record(Resource("process", name, pid=pid, started=process_started(pid), stop_signal=stop_signal))


def start_process(name: str, argv: list[str], *, die_signal: int = SIGKILL, **popen: Any) -> subprocess.Popen:
    """Start a child that dies with this process (``lifetime.spawn``) and record it as ``name``.

    ``die_signal`` is also what ``clean`` and the watchdog send it first.
    ``process_ended`` records that it is gone.
    """
    proc = spawn(argv, die_signal=die_signal, **popen)
    record_process(name, proc.pid, die_signal)
    return proc


def process_ended(name: str, proc: subprocess.Popen | None) -> None:
    """Record that the child ``start_process`` started as ``name`` is gone (stopped, or exited)."""
    if proc is not None:
        release(Resource("process", name, pid=proc.pid))


def _directory(path: Path | str) -> Resource:
    return Resource("directory", os.path.abspath(path))


def temp_dir(prefix: str) -> Path:
    """A new temporary directory (``/tmp/<prefix>…`` or the platform's), recorded until ``remove_dir``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    record(_directory(path))
    return path


def recorded_dir(path: Path) -> Path:
    """Record an existing directory as this run's, to be removed with it; return it."""
    record(_directory(path))
    return path


def remove_dir(path: Path) -> None:
    """Delete a directory recorded with ``temp_dir`` or ``recorded_dir``, and record that it is gone."""
    shutil.rmtree(path, ignore_errors=True)
    release(_directory(path))


# -- reading ---------------------------------------------------------------------------------------
def read_run(path: Path) -> Run | None:
    """The run a file records (its owner and what it still holds), or None when it has no owner line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    owner: Owner | None = None
    held: dict[tuple, Resource] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash mid-write
        if not isinstance(entry, dict):
            continue
        if "owner" in entry:
            owner = Owner.from_dict(entry["owner"])
        elif "created" in entry:
            resource = Resource.from_dict(entry["created"])
            held[resource.key] = resource
        elif "released" in entry:
            held.pop(Resource.from_dict(entry["released"]).key, None)
    if owner is None:
        return None
    return Run(path, owner, list(held.values()))


def all_runs(directory: Path | None = None) -> list[Run]:
    """Every run recorded under ``$EO_HOME`` (of every namespace), oldest first."""
    directory = directory or runs_dir()
    if not directory.is_dir():
        return []
    runs = [read_run(path) for path in sorted(directory.glob("*.jsonl"))]
    return sorted((run for run in runs if run is not None), key=lambda run: run.owner.started)


def rewrite(run: Run, remaining: list[Resource]) -> None:
    """Write ``run``'s file anew with only ``remaining``; delete it when nothing remains."""
    if not remaining:
        run.path.unlink(missing_ok=True)
        run.path.with_suffix(".log").unlink(missing_ok=True)
        return
    tmp = run.path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"owner": asdict(run.owner)}, separators=(",", ":")) + "\n")
        for resource in remaining:
            fh.write(json.dumps({"created": asdict(resource)}, separators=(",", ":")) + "\n")
    os.replace(tmp, run.path)


class RunLock:
    """Only one process cleans a run at a time (its watchdog, ``clean``, ``reset``, ``down``).

    ``<run>.lock`` holds the pid of the process cleaning it; a lock whose
    process is gone is taken over.
    """

    def __init__(self, run: Run) -> None:
        self.path = run.path.with_suffix(".lock")
        self.held = False
        self.holder: int | None = None

    def acquire(self) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                try:
                    self.holder = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    self.holder = None
                if self.holder and pid_alive(self.holder) and self.holder != os.getpid():
                    return False
                self.path.unlink(missing_ok=True)  # its holder died mid-clean
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
