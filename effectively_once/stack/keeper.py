"""The detached process behind ``python -m effectively_once up``.

It starts a stack, records it in ``$EO_HOME/stack.json`` and keeps it alive
until it receives SIGTERM (from ``down``); then it stops every process it
started. SIGUSR1 (from ``up``, when a process of the stack died) restarts the
dead processes (or containers) on their files and ports and records their
new pids. One keeper per state directory. For the docker backend it is the
owner of the containers: testcontainers' reaper, or the course's own,
removes them as soon as it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading

from effectively_once.settings import eo_home
from effectively_once.stack.backends import BACKENDS, ROOTED_BACKENDS, choose_backend, start
from effectively_once.stack.secure import hide_password, write_private
from effectively_once.stack.state import read_state, state_path


def _write_state(record: dict) -> None:
    # Owner-only: an external stack's record holds the learner's database password.
    path = state_path()
    tmp = write_private(path.with_suffix(".tmp"), json.dumps(record, indent=2))
    os.replace(tmp, path)


def revive(running, record: dict) -> None:
    """Restart the stack's dead processes on their files and ports, and record their new pids."""
    try:
        revived = running.revive()
    except Exception as exc:
        print(f"could not restart the stack's dead processes: {exc}", flush=True)
        record["revive_error"] = str(exc)
    else:
        print(f"restarted: {', '.join(revived) or 'nothing (every process was alive)'}", flush=True)
        record.pop("revive_error", None)
        record["pids"] = {"keeper": os.getpid(), **running.pids}
    record["revived"] = record.get("revived", 0) + 1
    _write_state(record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effectively_once.stack.keeper")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--secure", action="store_true", help="SASL/SCRAM, ACLs and password logins (embedded)")
    args = parser.parse_args(argv)

    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: stop_event.set())
    revive_event = threading.Event()  # SIGUSR1, from `up`: restart the processes that died
    if hasattr(signal, "SIGUSR1"):  # POSIX only; elsewhere `up` restarts the whole stack
        signal.signal(signal.SIGUSR1, lambda *_: revive_event.set())

    root = eo_home() / ("secure-stack" if args.secure else "stack")
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.secure:
            running = start(args.backend, root=root, secure=True)
        elif choose_backend(args.backend)[0] in ROOTED_BACKENDS:
            running = start(args.backend, root=root)
        else:
            running = start(args.backend)
    except Exception as exc:
        _write_state({"ready": False, "error": str(exc), "pids": {"keeper": os.getpid()}})
        print(f"could not start the stack: {exc}", flush=True)
        return 1

    record = running.describe()
    record.update(ready=True, root=running.root)
    record["pids"] = {"keeper": os.getpid(), **running.pids}
    _write_state(record)
    shown = {**record, "postgres_dsn": hide_password(record.get("postgres_dsn") or "")}
    print(f"stack ready: {json.dumps(shown)}", flush=True)
    try:
        while not stop_event.wait(0.2):
            if revive_event.is_set():
                revive_event.clear()
                revive(running, record)
    finally:
        running.stop()
        path = state_path()
        current = read_state()
        if current and current.get("pids", {}).get("keeper") == os.getpid():
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
