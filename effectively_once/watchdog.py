"""The watchdog of one run: waits for its owner to die, then removes what the run left.

``effectively_once.runs`` starts one per owner process (a notebook's kernel,
a test session, a command) with its first record, in a session of its own, so
that it outlives the owner however the owner dies: a graceful exit, a kernel
restart, SIGKILL to the kernel's whole process group. When the owner is gone
it stops the processes the run still holds (on Linux they are usually dead
already: each got a parent-death signal) and removes its temporary
directories, topics, consumer groups and databases, except what the run
marked to keep. What it cannot reach (the stack ``up`` started is down) stays
recorded for ``python -m effectively_once clean``.

    python -m effectively_once.watchdog --run FILE --pid PID --started SECONDS
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from effectively_once.lifetime import same_process
from effectively_once.runs import read_run

POLL_SECONDS = 0.25


def watch(pid: int, started: float, poll: float = POLL_SECONDS) -> None:
    """Return once process ``pid`` (the one that started at ``started``) is gone."""
    while same_process(pid, started):
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effectively_once.watchdog")
    parser.add_argument("--run", type=Path, required=True, help="the run's file under $EO_HOME/runs/owners")
    parser.add_argument("--pid", type=int, required=True, help="the owner's pid")
    parser.add_argument("--started", type=float, required=True, help="the owner's start time (psutil)")
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal or a notebook interrupt is meant for the owner, not for its watchdog.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(args.pid, args.started)
    run = read_run(args.run)
    if run is None:
        return 0
    if not run.resources:
        args.run.unlink(missing_ok=True)
        args.run.with_suffix(".log").unlink(missing_ok=True)
        return 0
    from effectively_once.stack.cleanup import clean_run

    result = clean_run(run, kept_too=False)
    print(result.summary(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
