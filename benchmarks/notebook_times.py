"""Where a notebook's Run All time goes, cell by cell: CPU, waiting for a CPU, and waiting for something.

Every notebook that needs services is built from its source and run, as Run All does, against
the one stack ``python -m effectively_once up`` started (a learner's ``make lab``), in a scratch
copy that is never written back. For every code cell it records:

- ``wall``: from the execute request to the reply (what the learner waits);
- ``cpu``: CPU seconds of the kernel's main thread, which runs the cell;
- ``runq``: seconds that thread was ready to run but waited for a core (load on a shared machine;
  near 0 on a quiet one, from ``/proc/<pid>/task/<tid>/schedstat``);
- ``blocked``: the rest, ``wall - cpu - runq``: the thread slept, polled, or waited for a socket,
  a child process or another thread;
- ``sleep``: the part of ``blocked`` spent in ``time.sleep`` (a fixed sleep or a polling loop), with
  the call sites that slept longest;
- ``fixed``: the time spent in a function that runs for a time it is given (``FIXED_DURATION``: a
  recording of N seconds), which no machine shortens;
- ``threads``: CPU seconds of the kernel's other threads (librdkafka's, a worker pool's);
- ``kids``: CPU seconds of every process the kernel started (consumers, providers, private brokers),
  alive or reaped during the cell; ``stack``: CPU seconds of the ``up`` stack's broker and PostgreSQL;
- ``spawned``: the processes the kernel started, by program.

How long on a quiet 2-core machine? The kernel's main thread measures the load it ran under: each
CPU second it used took ``slow = (cpu + runq) / cpu`` seconds, and the work it waited for in other
threads and processes (``others = threads + kids + stack``) was slowed alike. The ``quiet`` column
takes that slowdown off: ``cpu + max(sleep, fixed, others / 2, blocked - others * (slow - 1))``: never
less than the time it slept or spent in a function that runs for a given time (``fixed``: a recording
of N seconds), nor than the others' CPU spread over 2 cores. It is an estimate (it treats
the waited-for work as done one process at a time); only a quiet machine gives the number.

With ``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add`` or ``git archive``),
each notebook runs from both, alternately (baseline, current, baseline, ...), so both see the same
load, and the table prints each one's Run All time and their ratio::

    .venv/bin/python -m effectively_once up                 # with your EO_HOME
    .venv/bin/python benchmarks/notebook_times.py            # every notebook that needs services
    .venv/bin/python benchmarks/notebook_times.py 04 06 --cells 8 --json out.json
    .venv/bin/python benchmarks/notebook_times.py 04 --baseline /tmp/course-main --rounds 2

Linux only (``/proc``); it reads the stack from ``$EO_HOME/stack.json``. The kernel runs without
``PYTHONDONTWRITEBYTECODE`` (unless ``--keep-pythondontwritebytecode``), as on a learner's machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import notebooks  # noqa: E402  (tools/notebooks.py: the sources' reader)
from effectively_once.course.map import COURSE  # noqa: E402
from effectively_once.stack.state import read_state, running_record  # noqa: E402

# Functions that run for a time they are given (a recording of N seconds), not for as long as their
# work takes: their whole duration counts as fixed, like a sleep.
FIXED_DURATION = (("effectively_once.observe.workload", "steady_load"),)

# Runs inside the kernel before the notebook's first cell: it records, for every cell, the main
# thread's time.sleep calls by call site and the processes started, and appends one JSON line per
# cell to a file the tool reads. It changes no behaviour: the wrapped calls do what they did.
PREAMBLE = r'''
import json as _j, re as _re, subprocess as _sp, sys as _sys, threading as _th, time as _t
from collections import Counter as _C
_orig_sleep, _orig_init, _main = _t.sleep, _sp.Popen.__init__, _th.main_thread()
_acc = {"sleep": 0.0, "sites": _C(), "spawned": _C(), "child_wait": 0.0}
_cell = _re.compile(r"/ipykernel_[0-9]+/|<ipython")
def _site(frame):
    first = None
    while frame is not None:
        name = frame.f_code.co_filename
        if first is None and "benchmarks" not in name:
            first = frame
        if "effectively_once" in name or _cell.search(name):
            short = name.split("effectively_once/")[-1] if "effectively_once" in name else "cell"
            return f"{short}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "other" if first is None else f"{first.f_code.co_filename.rsplit('/', 1)[-1]}:{first.f_lineno}"
def _sleep(seconds):
    if _th.current_thread() is not _main:
        return _orig_sleep(seconds)
    started = _t.perf_counter()
    try:
        return _orig_sleep(seconds)
    finally:
        took = _t.perf_counter() - started
        _acc["sleep"] += took
        _acc["sites"][_site(_sys._getframe(1))] += took
def _init(self, args, *a, **k):
    argv = [args] if isinstance(args, (str, bytes)) else list(args)
    prog = str(argv[0]).rsplit("/", 1)[-1] if argv else "?"
    if prog.startswith("python") and "-m" in argv:
        prog = "python -m " + str(argv[argv.index("-m") + 1])
    elif prog == "java":
        prog = "java " + next((str(x) for x in argv if str(x).startswith(("kafka.", "org."))), "")
    _acc["spawned"][prog] += 1
    return _orig_init(self, args, *a, **k)
_t.sleep, _sp.Popen.__init__ = _sleep, _init
_acc["fixed"] = 0.0
def _timed(function):
    def run_for_its_time(*a, **k):
        started = _t.perf_counter()
        try:
            return function(*a, **k)
        finally:
            _acc["fixed"] += _t.perf_counter() - started
    run_for_its_time.__wrapped__ = function
    return run_for_its_time
import importlib as _il
for _module, _name in __EO_FIXED__:
    _m = _il.import_module(_module)
    setattr(_m, _name, _timed(getattr(_m, _name)))
def _post_run_cell(result, _path=__EO_TIMES_FILE__):
    with open(_path, "a") as out:
        out.write(_j.dumps({"sleep": _acc["sleep"], "sites": _acc["sites"].most_common(4),
                            "spawned": dict(_acc["spawned"]), "fixed": _acc["fixed"]}) + "\n")
    _acc["sleep"] = _acc["fixed"] = 0.0
    _acc["sites"].clear()
    _acc["spawned"].clear()
get_ipython().events.register("post_run_cell", _post_run_cell)
del _post_run_cell
'''


def thread_sched(pid: int, tid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting for one) of one thread, from schedstat."""
    try:
        on_cpu, runq, _ = (int(x) for x in Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split())
    except (OSError, ValueError):
        return 0.0, 0.0
    return on_cpu / 1e9, runq / 1e9


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, each with its reaped children's."""
    total = 0.0
    try:
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def stack_roots() -> list[int]:
    """The pids whose process trees are the ``up`` stack (its keeper holds the broker and PostgreSQL)."""
    record = read_state()
    if record is None:
        return []
    return [record.keeper] if record.keeper else list(record.pids.values())


@dataclass
class Snapshot:
    at: float
    main_cpu: float
    main_runq: float
    threads: float
    kids: float
    stack: float

    @classmethod
    def take(cls, kernel: int, stack: list[int]) -> Snapshot:
        on_cpu, runq = thread_sched(kernel, kernel)
        own = _self_cpu(kernel)
        return cls(time.perf_counter(), on_cpu, runq, own - on_cpu, tree_cpu(kernel) - own,
                   sum(tree_cpu(p) for p in stack))


def _self_cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


@dataclass
class CellTime:
    index: int
    first_line: str
    wall: float
    cpu: float
    runq: float
    blocked: float
    sleep: float = 0.0
    fixed: float = 0.0       # inside a function that runs for a given time (FIXED_DURATION)
    threads: float = 0.0     # CPU of the kernel's other threads (librdkafka's, a pool's workers)
    kids: float = 0.0
    stack: float = 0.0
    sites: list = field(default_factory=list)
    spawned: dict = field(default_factory=dict)

    def quiet(self, slow: float) -> float:
        """An estimate of this cell's wall time on a quiet 2-core machine (see the module's docstring)."""
        others = self.threads + self.kids + self.stack
        return self.cpu + max(self.sleep, self.fixed, others / 2, self.blocked - others * (slow - 1), 0.0)


@dataclass
class NotebookTime:
    name: str
    label: str
    kernel_start: float
    run_all: float
    load_before: float
    load_after: float
    cells: list[CellTime]
    failed: str | None = None       # the error of the cell that stopped the run, if one did

    def total(self, attr: str) -> float:
        return sum(getattr(c, attr) for c in self.cells)

    @property
    def slow(self) -> float:
        """How much longer a CPU second took under this run's load: (cpu + runq) / cpu of the main thread."""
        cpu = self.total("cpu")
        return (cpu + self.total("runq")) / cpu if cpu > 0 else 1.0

    def quiet(self, slow: float | None = None) -> float:
        """An estimate of Run All on a quiet 2-core machine: the cells' estimates added up."""
        return sum(c.quiet(slow or self.slow) for c in self.cells)

    @classmethod
    def from_dict(cls, data: dict) -> NotebookTime:
        cells = [CellTime(**c) for c in data.pop("cells")]
        return cls(**data, cells=cells)


def run_notebook(pair: notebooks.Pair, label: str, checkout: Path | None,
                 keep_bytecode_setting: bool = False) -> NotebookTime:
    """Run one notebook as Run All does and time every cell; ``checkout`` runs another commit's copy."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = pair.source if checkout is None else checkout / pair.source.relative_to(ROOT)
    cwd = pair.ipynb.parent if checkout is None else checkout / pair.ipynb.parent.relative_to(ROOT)
    nb = notebooks.read_source(source)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        times_file = fh.name
    preamble = notebooks.nbformat.v4.new_code_cell(
        PREAMBLE.replace("__EO_TIMES_FILE__", repr(times_file)).replace("__EO_FIXED__", repr(FIXED_DURATION)))
    nb.cells.insert(0, preamble)
    stack = stack_roots()
    cells: list[CellTime] = []
    marks: dict[int, Snapshot] = {}
    last_end: list[float] = []  # when the last cell ended: Run All ends there, not at the kernel's shutdown
    kernel_pid: list[int] = []
    env = dict(os.environ)
    if not keep_bytecode_setting:
        # A learner's Python caches compiled modules; with PYTHONDONTWRITEBYTECODE every process the
        # notebook starts compiles the package's modules again (about 0.06 s of CPU per consumer here).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    if checkout is not None:
        # The kernel and every process it starts import the package from the other checkout.
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    def pid() -> int:
        if not kernel_pid:
            kernel_pid.append(int(client.km.provisioner.pid))
        return kernel_pid[0]

    def before(cell, cell_index, **_):
        marks[cell_index] = Snapshot.take(pid(), stack)

    def after(cell, cell_index, **_):
        end, start = Snapshot.take(pid(), stack), marks.pop(cell_index)
        last_end[:] = [end.at]
        wall = end.at - start.at
        cpu, runq = end.main_cpu - start.main_cpu, end.main_runq - start.main_runq
        if cell_index == 0:
            return
        first = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
        cells.append(CellTime(cell_index - 1, first[:60], wall, cpu, runq, max(wall - cpu - runq, 0.0),
                              threads=max(end.threads - start.threads, 0.0), kids=max(end.kids - start.kids, 0.0),
                              stack=max(end.stack - start.stack, 0.0)))

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    client = NotebookClient(nb, timeout=900, kernel_name=notebooks.KERNELSPEC["name"], record_timing=False,
                            resources={"metadata": {"path": str(cwd)}}, on_cell_execute=before,
                            on_cell_executed=after)
    first_cell: list[float] = []

    def first(cell, cell_index, **_):
        if cell_index == 1 and not first_cell:
            first_cell.append(time.perf_counter())

    client.on_cell_start = first
    failed = None
    try:
        client.execute(env=env)
    except CellExecutionError as exc:  # a cell failed: the times up to it still say where the time went
        failed = str(exc).strip().splitlines()[-1][:200]
    finally:
        per_cell = [json.loads(line) for line in Path(times_file).read_text().splitlines()]
        os.unlink(times_file)
    ended = last_end[0] if last_end else time.perf_counter()
    for cell, extra in zip(cells, per_cell[1:], strict=False):  # per_cell[0] is the preamble's own
        cell.sleep, cell.sites, cell.spawned = extra["sleep"], extra["sites"], extra["spawned"]
        cell.fixed = extra.get("fixed", 0.0)
    run_from = first_cell[0] if first_cell else started
    return NotebookTime(pair.name, label, run_from - started, ended - run_from, load_before, os.getloadavg()[0],
                        cells, failed)


def services_notebooks() -> list[str]:
    return [f"notebooks/{nb.stem}" for nb in COURSE if nb.needs_services]


def print_cells(found: NotebookTime, top: int) -> None:
    """The notebook's totals, then its slowest ``top`` cells with what they slept on and what they started."""
    print(f"\n## {found.name} [{found.label}]: Run All {found.run_all:.1f} s "
          f"(kernel start {found.kernel_start:.1f} s), load {found.load_before:.1f} -> {found.load_after:.1f}, "
          f"a CPU second took {found.slow:.1f} s"
          + (f"\n   FAILED at cell {found.cells[-1].index}: {found.failed}" if found.failed and found.cells else ""))
    sums = "  ".join(f"{name} {found.total(name):.1f}" for name in
                     ("cpu", "runq", "blocked", "sleep", "fixed", "threads", "kids", "stack"))
    print(f"   sums: {sums}  quiet~ {found.quiet():.1f} s")
    print(f"   {'cell':>4} {'wall':>6} {'cpu':>5} {'runq':>5} {'blckd':>6} {'sleep':>6} {'thrds':>5} {'kids':>5} "
          f"{'stack':>5} "
          f"{'quiet':>5}  first line / slept at / spawned")
    for c in sorted(found.cells, key=lambda c: -c.wall)[:top]:
        print(f"   {c.index:>4} {c.wall:>6.1f} {c.cpu:>5.1f} {c.runq:>5.1f} {c.blocked:>6.1f} {c.sleep:>6.1f} "
              f"{c.threads:>5.1f} {c.kids:>5.1f} {c.stack:>5.1f} {c.quiet(found.slow):>5.1f}  {c.first_line}")
        sites = [(site, t) for site, t in c.sites if t >= 0.05]
        if c.fixed:
            sites.insert(0, ("a fixed-duration function", c.fixed))
        if sites:
            print("   " + " " * 52 + "slept: " + "; ".join(f"{site} {t:.1f}s" for site, t in sites))
        if c.spawned:
            print("   " + " " * 52 + "spawned: " + ", ".join(f"{n} x{k}" for n, k in c.spawned.items()))


def print_summary(runs: list[NotebookTime]) -> None:
    """Run All per notebook (the median of its runs), estimated quiet time, and the ratio to its baseline."""
    by_name: dict[str, dict[str, list[NotebookTime]]] = {}
    for r in runs:
        by_name.setdefault(r.name, {}).setdefault(r.label, []).append(r)
    with_baseline = any("baseline" in sides for sides in by_name.values())
    print(f"\n# Run All per notebook (median of its runs); load average now {os.getloadavg()[0]:.1f}")
    print(f"{'notebook':<40} {'load':>5} {'current s':>9} {'quiet~ s':>8}"
          + (f" {'baseline s':>10} {'quiet~ s':>8} {'ratio':>6}" if with_baseline else ""))
    for name, sides in by_name.items():
        cur = sides["current"]
        shown = name + (" (a run failed)" if any(r.failed for rs in sides.values() for r in rs) else "")
        load = statistics.median((r.load_before + r.load_after) / 2 for r in cur)
        now = statistics.median(r.run_all for r in cur)
        line = f"{shown:<40} {load:>5.1f} {now:>9.1f} {statistics.median(r.quiet() for r in cur):>8.1f}"
        if "baseline" in sides:
            base = sides["baseline"]
            before = statistics.median(r.run_all for r in base)
            line += f" {before:>10.1f} {statistics.median(r.quiet() for r in base):>8.1f} {now / before:>6.2f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NB", help="notebooks (default: every one that needs services)")
    parser.add_argument("--baseline", type=Path, help="another checkout to run side by side (its sources, package)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each notebook (and of its baseline)")
    parser.add_argument("--cells", type=int, default=10, help="the slowest N cells shown per notebook")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--from-json", type=Path, help="print the tables of an earlier run's --json, run nothing")
    parser.add_argument("--keep-pythondontwritebytecode", action="store_true",
                        help="pass PYTHONDONTWRITEBYTECODE on to the kernel (by default it is dropped, as a "
                             "learner's environment does not set it)")
    args = parser.parse_args(argv)
    if args.from_json:
        runs = [NotebookTime.from_dict(r) for r in json.loads(args.from_json.read_text())]
        for found in runs:
            print_cells(found, args.cells)
        print_summary(runs)
        return 0
    if running_record() is None:
        print("No stack is running: start one with `python -m effectively_once up` (with your EO_HOME).",
              file=sys.stderr)
        return 2
    runs = []
    for pair in notebooks.select(args.names or services_notebooks()):
        if pair.ipynb.parent.name != "notebooks" and not args.names:
            continue
        for _ in range(args.rounds):
            sides = [("baseline", args.baseline), ("current", None)] if args.baseline else [("current", None)]
            for label, checkout in sides:
                found = run_notebook(pair, label, checkout, args.keep_pythondontwritebytecode)
                print_cells(found, args.cells)
                runs.append(found)
                sys.stdout.flush()
                if args.json:  # after every run, so an interrupted session keeps what it measured
                    args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    print_summary(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
