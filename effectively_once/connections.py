"""How many PostgreSQL connections the course's processes open: sized here, and nowhere else.

A room of thirty learners shares one PostgreSQL on the secured stack (``up
--secure``), and each learner's role may open at most
``LEARNER_CONNECTION_LIMIT`` connections (its ``CONNECTION LIMIT``). Every
process of the course keeps its pools small so that a learner's heaviest
notebook fits in that limit:

- the provider: two pools of ``PROVIDER_POOL_SIZE`` (requests, and key claims
  that commit without waiting for the disk), plus one connection while it
  starts (its schema);
- a consumer: ``CONSUMER_CONNECTIONS`` (the shop's dedup table, and its events);
- the webhook receiver: ``RECEIVER_POOL_SIZE`` deliveries handled at once,
  each on a connection of the pool, plus one while it starts (the schema);
- the lab, a relay, an outbox: one short-lived connection at a time, two where
  a lesson needs two transactions side by side.

A process that adds connections (a webhook sender or receiver, say) takes its
size from here and is counted in ``DEMO_CONNECTIONS`` when a demo run starts it.

When a learner hits the limit anyway (a kernel left running with its
pipeline), PostgreSQL refuses the next connection; ``ConnectionLimitReached``
says so in one sentence with the fix, never with a traceback.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

# Each of the provider's two pools. Two is enough for the course: one request holds a
# connection while another is answered (notebook 04c's one stuck call while the rest go
# on), and requests queue for a free connection instead of failing.
PROVIDER_POOL_SIZE = 2
PROVIDER_CONNECTIONS = 2 * PROVIDER_POOL_SIZE + 1  # its pools, and the one it creates its schema with
CONSUMER_CONNECTIONS = 2
# The webhook receiver handles this many deliveries at once, each on a pooled connection; the
# rest wait for one (the provider sends each event until it is answered, so waiting loses none).
RECEIVER_POOL_SIZE = 2
RECEIVER_CONNECTIONS = RECEIVER_POOL_SIZE + 1  # its pool, and the one it creates its schema with
LAB_CONNECTIONS = 2  # what the lab itself holds at once, at most (a table read while a database is made)

# One `demo` run: a provider, a consumer (the crashed one's connections are gone when its
# replacement starts), and the lab.
DEMO_CONNECTIONS = PROVIDER_CONNECTIONS + CONSUMER_CONNECTIONS + LAB_CONNECTIONS

# A learner's PostgreSQL role may open this many connections (CONNECTION LIMIT). Notebook 04's
# crash matrix is the heaviest moment of the course: four scenarios at once on one shared provider,
# beside the provider of the notebook's own lab; benchmarks/room_sizing.py measured its peak at 12
# (notebook 05's at 8). The rest is room for the kernels of notebooks a learner left running.
LEARNER_CONNECTION_LIMIT = 40

# SQLSTATE 53300, too_many_connections: PostgreSQL's refusal of a connection over a limit. A refused
# connection never reaches a session, so psycopg carries only the server's message; these are its
# three wordings (src/backend/utils/init/postinit.c).
TOO_MANY_CONNECTIONS = "53300"
_ROLE_LIMIT = re.compile(r'too many connections for role "(?P<role>[^"]+)"')
_SERVER_FULL = re.compile(r"sorry, too many clients already|remaining connection slots are reserved")


class ConnectionLimitReached(RuntimeError):
    """PostgreSQL refused a connection over a limit; the message is one sentence with the fix."""

    def __init__(self, sentence: str, role: str | None = None) -> None:
        super().__init__(sentence)
        self.role = role

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the sentence and its fix are the whole story.
        return [str(self)]


def limit_sentence(role: str | None, limit: int | None = None, *, server_full: bool = False) -> str:
    """The sentence for a connection refused over a limit: whose limit, and the fix."""
    if server_full:
        return ("PostgreSQL has no connection slot left for anyone but the instructor (its max_connections is "
                "full): the instructor sizes the stack for the room with `python -m effectively_once workshop "
                "add-learners` (or `up --secure --learners N`).")
    who = f"the role {role}" if role else "your PostgreSQL role"
    count = f"all {limit}" if limit is not None and limit >= 0 else "all"
    return (f"{who} has {count} of its PostgreSQL connections in use (its CONNECTION LIMIT): stop the pipelines "
            f"you left running (shut down the kernels of the notebooks you are not using, or call `lab.stop()`), "
            f"then run this again.")


def limit_reached(exc: BaseException, dsn: str | None = None) -> ConnectionLimitReached | None:
    """A ``ConnectionLimitReached`` when ``exc`` is PostgreSQL refusing a connection over a limit, else None.

    ``dsn`` names the role when the server's message does not.
    """
    text = str(exc)
    if getattr(exc, "sqlstate", None) != TOO_MANY_CONNECTIONS and not (
            _ROLE_LIMIT.search(text) or _SERVER_FULL.search(text)):
        return None
    match = _ROLE_LIMIT.search(text)
    role = match.group("role") if match else role_of(dsn)
    if match is None and _SERVER_FULL.search(text):
        return ConnectionLimitReached(limit_sentence(role, server_full=True), role)
    return ConnectionLimitReached(limit_sentence(role), role)


def role_of(dsn: str | None) -> str | None:
    """The user name a libpq URI logs in as (None when it names none)."""
    if not dsn:
        return None
    user = urlsplit(dsn).username
    return unquote(user) if user else None


def connect(dsn: str, **kwargs: Any):
    """``psycopg.connect``, with a refusal over a connection limit raised as ``ConnectionLimitReached``."""
    import psycopg

    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        reached = limit_reached(exc, dsn)
        if reached is not None:
            raise reached from None
        raise


def room_for(dsn: str, wanted: int, **kwargs: Any) -> str | None:
    """None when the role of ``dsn`` can open ``wanted`` more connections; else the sentence that says why not.

    Asks PostgreSQL for the role's CONNECTION LIMIT and the sessions it holds
    now (a role sees its own sessions in ``pg_stat_activity``). A process
    that is about to open a pool calls this first, so a learner at the limit
    gets the sentence instead of a failed start.
    """
    import psycopg

    try:
        with psycopg.connect(dsn, **kwargs) as conn:
            row = conn.execute(
                "SELECT r.rolname, r.rolconnlimit, (SELECT count(*) FROM pg_stat_activity a"
                "  WHERE a.usename = r.rolname AND a.backend_type = 'client backend')"
                " FROM pg_roles r WHERE r.rolname = current_user").fetchone()
    except psycopg.OperationalError as exc:
        reached = limit_reached(exc, dsn)
        if reached is not None:
            return str(reached)
        raise
    if row is None:
        return None
    role, limit, used = row
    # ``used`` counts the connection asking; it is closed before the pool opens.
    if limit >= 0 and used - 1 + wanted > limit:
        return limit_sentence(role, limit)
    return None


def announce_limit(exc: BaseException, dsn: str | None = None) -> bool:
    """Print the protocol line for a refusal over a connection limit (True), or nothing when ``exc`` is another error.

    A child process (provider, consumer) calls this where a connection fails;
    its parent reads the line and raises ``ConnectionLimitReached`` with it.
    """
    from effectively_once import protocol

    reached = limit_reached(exc, dsn)
    if reached is None:
        return False
    print(protocol.connection_limit(str(reached)), flush=True)
    return True


def raise_if_limit(log_text: str) -> None:
    """Raise ``ConnectionLimitReached`` when a child's output says PostgreSQL refused it over a limit."""
    from effectively_once import protocol

    sentence = protocol.parse_connection_limit(log_text)
    if sentence is not None:
        raise ConnectionLimitReached(sentence)
