"""Where Kafka and PostgreSQL come from: ``start(backend)`` returns a running ``Stack``.

Backends:
- ``docker``: the same Apache Kafka node and PostgreSQL commands as ``embedded``, in containers
  (testcontainers), on the official images or ones ``tools/build_images.py`` built here;
- ``embedded``: Apache Kafka 4.x in a JVM and a real PostgreSQL, as child processes;
- ``tansu``: the Tansu Kafka-protocol broker and a real PostgreSQL, for machines with no Java
  and no way to fetch Kafka's jars (it lacks three of the guarantees the course teaches);
- ``external``: ``EO_KAFKA_BOOTSTRAP`` and ``EO_POSTGRES_DSN`` (a workshop's shared cluster).
``auto`` picks docker when a Docker engine answers within about 2 s and its
images are here or can be pulled, else embedded when a Java runtime and
Kafka's jars can be had, else tansu.

A ``Stack`` owns the processes it started and stops them by pid; a stack
attached to (``attach_or_start``) belongs to whoever started it and is left running.

This package only re-exports: ``core`` (``Stack``), ``backends`` (choosing
and starting one), ``state`` (the stack ``up`` records, attaching to it),
``record`` (``StackRecord``: what ``up`` writes in stack.json),
``docker``/``embedded``/``external`` (the backends themselves). No module of
the package imports this file back.
"""

from effectively_once.kafka import quiet_logger
from effectively_once.stack.backends import (
    BACKENDS,
    LOCAL_BACKENDS,
    choose_backend,
    detect_broker_flavor,
    embedded_available,
    private_broker,
    start,
)
from effectively_once.stack.core import Stack, StackError, new_run_id
from effectively_once.stack.docker import docker_available
from effectively_once.stack.record import StackFailure, StackRecord, StaleRecord
from effectively_once.stack.state import (
    STATE_FILE,
    attach,
    attach_or_start,
    command_stack,
    read_state,
    revive_recorded,
    running_record,
    state_path,
    stop_recorded,
    stop_stale,
    to_stderr,
    wait_for_state,
)

__all__ = [
    "BACKENDS", "LOCAL_BACKENDS", "STATE_FILE", "Stack", "StackError", "StackFailure", "StackRecord", "StaleRecord",
    "attach", "attach_or_start", "choose_backend", "command_stack", "detect_broker_flavor", "docker_available",
    "embedded_available", "new_run_id", "private_broker", "quiet_logger", "read_state", "revive_recorded",
    "running_record", "start", "state_path", "stop_recorded", "stop_stale", "to_stderr", "wait_for_state",
]
