"""The size of a workshop room on the secured stack, and what follows from it.

``up --secure`` and ``workshop add-learners`` / ``remove-learner`` keep the
number of learners in ``<secure root>/room.json`` (a ``Room``). From it:

- PostgreSQL's ``max_connections``: every learner's ``CONNECTION LIMIT``
  (``connections.LEARNER_CONNECTION_LIMIT``), for a room rounded up to the
  next ``ROOM_STEP`` learners, plus the instructor's share. The server can
  then never run out of slots before a learner's own limit does: one
  learner's runs never refuse another's.
- each learner's Kafka quotas (``LEARNER_QUOTA``): a share of the broker per
  user, so that one learner's flood is throttled and the room's runs go on.

``max_connections`` can change only with a restart of PostgreSQL; rounding
the room up to ``ROOM_STEP`` keeps the restarts rare (adding learner 31
restarts it once, 32 to 40 do not).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from effectively_once.connections import LEARNER_CONNECTION_LIMIT

ROOM_FILE = "room.json"
ROOM_STEP = 10
# The instructor (PostgreSQL's superuser): `status`, adding and removing learners, the
# stack's own checks. PostgreSQL keeps superuser_reserved_connections (3) of its slots
# for superusers on top of this.
INSTRUCTOR_CONNECTIONS = 10
SUPERUSER_RESERVED = 3
# The plain (unsecured) stack: one learner, whatever they run.
DEFAULT_MAX_CONNECTIONS = 200


@dataclass(frozen=True)
class Quota:
    """Kafka client quotas for one user (KIP-13 and KIP-124), as the broker names them."""

    producer_byte_rate: float
    consumer_byte_rate: float
    request_percentage: float

    def as_dict(self) -> dict[str, float]:
        """The quota's settings by their Kafka names."""
        return asdict(self)


# A learner's share of the broker. The course moves kilobytes a second per learner (the
# demo's ten charges are a few kB); 1 MiB/s in and 2 MiB/s out leave a notebook's bursts
# unthrottled, while a producer flooding at full speed is held to it. request_percentage is
# of one broker thread (network and I/O threads count together): 25 % of one, per learner.
LEARNER_QUOTA = Quota(producer_byte_rate=1024 * 1024, consumer_byte_rate=2 * 1024 * 1024, request_percentage=25.0)


@dataclass(frozen=True)
class Room:
    """How many learners the secured stack is sized for."""

    learners: int = 0
    # ``up --secure --learners N``: the room the instructor expects, before its learners are added.
    planned: int = 0

    @property
    def sized_for(self) -> int:
        """The learners the servers are sized for: the room, rounded up to ``ROOM_STEP`` (at least one step)."""
        return max(ROOM_STEP, math.ceil(max(self.learners, self.planned) / ROOM_STEP) * ROOM_STEP)

    @property
    def max_connections(self) -> int:
        """PostgreSQL's ``max_connections`` for this room: every learner's limit, the instructor's, the reserve."""
        return self.sized_for * LEARNER_CONNECTION_LIMIT + INSTRUCTOR_CONNECTIONS + SUPERUSER_RESERVED

    def with_learners(self, learners: int) -> Room:
        """This room with ``learners`` learners."""
        return Room(learners=max(0, learners), planned=self.planned)


def room_path(root: Path) -> Path:
    """Where the secured stack kept in ``root`` records its room."""
    return Path(root) / ROOM_FILE


def read_room(root: Path) -> Room:
    """The room recorded in ``root`` (an empty room when none was)."""
    path = room_path(root)
    if not path.exists():
        return Room()
    data = json.loads(path.read_text())
    return Room(learners=int(data["learners"]), planned=int(data.get("planned", 0)))


def write_room(root: Path, room: Room) -> Room:
    """Record ``room`` in ``root``; return it."""
    path = room_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(room), indent=2) + "\n")
    return room
