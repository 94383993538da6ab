"""Where the course keeps its state, and how it names what it creates.

Everything the course creates on a broker or a database server (topics,
databases, consumer groups) carries a namespace prefix, so that thirty learners
can share one external cluster without seeing each other's data.
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

_SAFE = re.compile(r"[^a-z0-9]+")


def eo_home() -> Path:
    """The state directory: ``$EO_HOME``, default ``~/.effectively_once``."""
    return Path(os.environ.get("EO_HOME", "~/.effectively_once")).expanduser()


def clean_name(raw: str) -> str:
    """Lower-case ``raw`` and keep only letters, digits and single underscores."""
    cleaned = _SAFE.sub("_", raw.lower()).strip("_")
    return cleaned or "learner"


def namespace() -> str:
    """The prefix for everything this learner creates: ``$EO_NAMESPACE`` or the user name."""
    raw = os.environ.get("EO_NAMESPACE")
    if raw is None:
        try:
            raw = getpass.getuser()
        except Exception:  # no user name (some containers): fall back to a fixed one
            raw = "learner"
    name = clean_name(raw)[:20]
    if name[0].isdigit():
        name = "n" + name
    return name
