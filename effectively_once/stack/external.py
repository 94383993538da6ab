"""The external backend: a Kafka cluster and a PostgreSQL server someone else runs.

Used in workshops on shared infrastructure: every learner sets
``EO_KAFKA_BOOTSTRAP`` and ``EO_POSTGRES_DSN`` to the same values and a
different ``EO_NAMESPACE``.
"""

from __future__ import annotations

import os

from effectively_once.stack.core import Stack, StackError


def connect_external() -> Stack:
    """A ``Stack`` for the servers named by ``EO_KAFKA_BOOTSTRAP`` and ``EO_POSTGRES_DSN``."""
    bootstrap = os.environ.get("EO_KAFKA_BOOTSTRAP", "").strip()
    dsn = os.environ.get("EO_POSTGRES_DSN", "").strip()
    missing = [name for name, value in (("EO_KAFKA_BOOTSTRAP", bootstrap), ("EO_POSTGRES_DSN", dsn)) if not value]
    if missing:
        raise StackError(
            f"The external backend needs {' and '.join(missing)}: set them to your workshop's "
            "cluster (e.g. EO_KAFKA_BOOTSTRAP=kafka.example:9092 "
            "EO_POSTGRES_DSN=postgresql://user:pass@db.example/postgres), or use the embedded backend "
            "(`EO_BACKEND=embedded`, or `--backend embedded` where a command takes it)."
        )
    # Nothing was started here, so there is nothing of ours to stop.
    return Stack(backend="external", kafka_bootstrap=bootstrap, base_dsn=dsn, owned=False)
