"""The result of a learner's last run, where the instructor can read it: one typed record per run.

``python -m effectively_once demo`` appends a ``RunRecord`` to the learner's
own topic ``<namespace>.runs`` (one partition, so the last record is the last
run). The topic is under the learner's prefix, so their ACLs let them write
it and nobody else in the room read it; the instructor, super user of the
broker, reads the last record of each learner's topic in ``workshop status``.
A record the broker did not take is reported and the run's own result
stands: recording never fails a run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

RUNS_TOPIC = "runs"  # the learner's topic is <namespace>.runs


@dataclass(frozen=True)
class RunRecord:
    """One run of the payment pipeline: what it was asked to do, and what happened to the money."""

    command: str                        # "demo"
    finished_at: float                  # Unix time
    seconds: float                      # how long the run took
    ok: bool                            # ran, and every message was charged exactly once
    crash_at: str | None = None
    layers: tuple[str, ...] = ()
    messages: int = 0
    charges: int = 0
    duplicate_charges: int = 0
    lost_charges: int = 0
    error: str | None = None            # why the run could not run (None when it ran)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The record as the topic holds it."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RunRecord:
        """A record read back from the topic (fields it does not know are left out)."""
        raw = json.loads(data)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["layers"] = tuple(values.get("layers") or ())
        return cls(**values)

    def summary(self) -> str:
        """One line for the instructor: charged exactly once, or what went wrong."""
        if self.error:
            return f"{self.command} failed after {self.seconds:.0f} s: {self.error}"
        verdict = "every message charged exactly once" if self.ok else (
            f"{self.duplicate_charges} charged twice, {self.lost_charges} never charged")
        return f"{self.command} crash at {self.crash_at or 'nowhere'}, {self.messages} messages: {verdict}"


def runs_topic(namespace: str) -> str:
    """The topic a learner's runs are recorded in."""
    return f"{namespace}.{RUNS_TOPIC}"


def record_run(bootstrap: str, namespace: str, record: RunRecord, timeout: float = 10.0) -> str | None:
    """Append ``record`` to the learner's runs topic; None once the broker took it, else why not."""
    from confluent_kafka import Producer

    from effectively_once.kafka import client_settings, ensure_topic, quiet_logger

    try:
        topic = ensure_topic(bootstrap, runs_topic(namespace), 1)
        producer = Producer({"bootstrap.servers": bootstrap, **client_settings(), "enable.idempotence": True,
                             "acks": "all", "linger.ms": 0, "logger": quiet_logger()})
        failures: list[str] = []
        producer.produce(topic, record.to_json(),
                         on_delivery=lambda err, _msg: failures.append(str(err)) if err else None)
        if producer.flush(timeout):
            return f"the broker did not acknowledge the run's record within {timeout:.0f} s"
        return failures[0] if failures else None
    except Exception as exc:  # the run's result stands; the record is a courtesy to the instructor
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def last_run(bootstrap: str, namespace: str, timeout: float = 10.0) -> RunRecord | None:
    """The last record in the learner's runs topic (None when they have not run ``demo`` yet)."""
    return last_runs(bootstrap, [namespace], timeout).get(namespace)


def last_runs(bootstrap: str, namespaces: list[str], timeout: float = 10.0) -> dict[str, RunRecord]:
    """The last record of each learner's runs topic, by namespace (those who have none are left out).

    One consumer reads them all: it is assigned the last offset of each topic
    and polls until it has one record per topic, or ``timeout``.
    """
    from confluent_kafka import Consumer, TopicPartition

    from effectively_once.kafka import client_settings, quiet_logger

    reader = Consumer({"bootstrap.servers": bootstrap, **client_settings(), "group.id": "eo-runs-reader",
                       "enable.auto.commit": False, "logger": quiet_logger()})
    found: dict[str, RunRecord] = {}
    try:
        listed = reader.list_topics(timeout=timeout).topics
        wanted = {}
        for namespace in namespaces:
            topic = runs_topic(namespace)
            if topic not in listed or listed[topic].error is not None:
                continue
            low, high = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
            if high > low:
                wanted[topic] = (namespace, high - 1)
        if not wanted:
            return found
        reader.assign([TopicPartition(topic, 0, offset) for topic, (_, offset) in wanted.items()])
        deadline = time.monotonic() + timeout
        while len(found) < len(wanted) and time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is None or message.error() is not None or message.value() is None:
                continue
            namespace, last = wanted[message.topic() or ""]
            if message.offset() == last:
                found[namespace] = RunRecord.from_json(message.value() or b"")
        return found
    finally:
        reader.close()
