"""The course's own container reaper, for engines without testcontainers' (Ryuk).

``python -m effectively_once.stack.reaper --owner PID --label KEY=VALUE``
runs in a session of its own, so it outlives a kernel or a keeper that is
SIGKILLed. It waits until the owner is gone, then removes (force, with
their anonymous volumes) every container carrying the label. It exits as
soon as no such container is left, whoever removed them.
"""

from __future__ import annotations

import argparse
import time

from effectively_once.stack.engine import labelled_containers, remove_containers
from effectively_once.stack.processes import pid_alive

POLL_SECONDS = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effectively_once.stack.reaper")
    parser.add_argument("--owner", type=int, required=True, help="the pid whose end removes the containers")
    parser.add_argument("--label", required=True, help="KEY=VALUE carried by the containers to remove")
    args = parser.parse_args(argv)
    key, _, value = args.label.partition("=")
    labels = {key: value}
    while pid_alive(args.owner):
        time.sleep(POLL_SECONDS)
        try:
            if not labelled_containers(labels):
                return 0  # its owner removed them
        except Exception:
            continue  # the engine is restarting: ask again
    for _ in range(20):  # the engine may be busy: a few more tries before giving up
        try:
            remove_containers(labels)
            return 0
        except Exception:
            time.sleep(POLL_SECONDS)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
