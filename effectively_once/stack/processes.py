"""Child processes the stack owns: ports, readiness, and (from ``effectively_once.lifetime``) liveness and stopping.

``pid_alive`` and ``stop_pid`` live in ``effectively_once.lifetime`` (through
psutil, on every platform); they are imported here too, where notebooks and
older code look for them.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from effectively_once.lifetime import pid_alive, stop_pid

__all__ = ["free_port", "pid_alive", "port_open", "stop_pid", "wait_until"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    """Poll ``check`` until it is true; raise a readable error naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting.\n{tail}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} was not ready after {timeout:.0f} s.\n{tail}")


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
