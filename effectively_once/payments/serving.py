"""How the course's small HTTP services (the provider, the webhook receiver) listen: one socket, one uvicorn."""

from __future__ import annotations

import socket
from typing import Any


def listening_socket(host: str, port: int) -> tuple[socket.socket, int]:
    """A TCP socket bound to ``host:port`` (0: a free port) and the port it got.

    IPPROTO_TCP explicitly: asyncio turns Nagle off only on sockets that say
    they are TCP, and with Nagle on every response waits ~40 ms for a delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


def serve(app: Any, sock: socket.socket) -> None:
    """Serve the ASGI ``app`` on ``sock`` under uvicorn until SIGTERM or Ctrl-C (quietly: no access log)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
