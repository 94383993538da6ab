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
from dataclasses import replace

from effectively_once.settings import eo_home
from effectively_once.stack.backends import BACKENDS, ROOTED_BACKENDS, choose_backend, start
from effectively_once.stack.core import Stack, StackError
from effectively_once.stack.record import StackFailure, StackRecord
from effectively_once.stack.secure import hide_password
from effectively_once.stack.state import read_state, state_path


def revive(running: Stack, record: StackRecord) -> StackRecord:
    """Restart the stack's dead processes on their files and ports, and record their new pids."""
    try:
        revived = running.revive()
    except Exception as exc:
        print(f"could not restart the stack's dead processes: {exc}", flush=True)
        record = replace(record, revive_error=str(exc))
    else:
        print(f"restarted: {', '.join(revived) or 'nothing (every process was alive)'}", flush=True)
        record = replace(record, revive_error=None, pids={"keeper": os.getpid(), **running.pids})
    record = replace(record, revived=record.revived + 1)
    record.write(state_path())
    return record


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
        StackFailure(str(exc), {"keeper": os.getpid()}).write(state_path())
        print(f"could not start the stack: {exc}", flush=True)
        return 1

    record = StackRecord.of(running, keeper=os.getpid())
    record.write(state_path())
    shown = replace(record, postgres_dsn=hide_password(record.postgres_dsn))
    print(f"stack ready: {json.dumps(shown.to_json())}", flush=True)
    try:
        while not stop_event.wait(0.2):
            if revive_event.is_set():
                revive_event.clear()
                record = revive(running, record)
    finally:
        running.stop()
        path = state_path()
        try:
            current = read_state()
        except StackError:  # edited while the stack ran: not this keeper's record any more
            current = None
        if current is not None and current.keeper == os.getpid():
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
