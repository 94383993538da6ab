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


# User names that many machines share (JupyterHub's images all run as jovyan): on a shared cluster,
# two learners with one of these as their namespace see each other's topics and rows.
GENERIC_USER_NAMES = frozenset({
    "jovyan", "root", "user", "ubuntu", "admin", "administrator", "learner", "student", "guest", "vagrant",
    "ec2_user", "centos", "debian", "fedora", "pi", "codespace", "runner", "docker", "nobody", "jupyter",
})


def namespace_source() -> str:
    """Where :func:`namespace` takes its name from: ``EO_NAMESPACE``, ``JUPYTERHUB_USER`` or the user name."""
    if os.environ.get("EO_NAMESPACE") is not None:
        return "EO_NAMESPACE"
    if os.environ.get("JUPYTERHUB_USER"):
        return "JUPYTERHUB_USER"
    return "the user name"


def namespace() -> str:
    """The prefix for everything this learner creates.

    ``$EO_NAMESPACE``; else ``$JUPYTERHUB_USER`` (on JupyterHub every user's
    account is ``jovyan``, but the hub's user name is theirs); else the user name.
    """
    raw = os.environ.get("EO_NAMESPACE")
    if raw is None:
        raw = os.environ.get("JUPYTERHUB_USER") or None
    if raw is None:
        try:
            raw = getpass.getuser()
        except Exception:  # no user name (some containers): fall back to a fixed one
            raw = "learner"
    name = clean_name(raw)[:20]
    if name[0].isdigit():
        name = "n" + name
    return name


def namespace_warning(backend: str | None = None, name: str | None = None) -> str | None:
    """One sentence when the namespace is a user name many machines share and the cluster is shared, else None.

    ``backend`` defaults to ``$EO_BACKEND``; only ``external`` is shared (every
    other backend is private to this machine). ``name`` defaults to :func:`namespace`.
    """
    backend = backend or os.environ.get("EO_BACKEND", "auto")
    name = name or namespace()
    if backend != "external" or name not in GENERIC_USER_NAMES:
        return None
    return (f"the namespace is {name!r} ({namespace_source()}), a user name many machines share, on a shared "
            f"cluster: set EO_NAMESPACE to a name of your own (e.g. `export EO_NAMESPACE=alice`), or other "
            f"learners' topics and rows will mix with yours.")
