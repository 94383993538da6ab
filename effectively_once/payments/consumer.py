"""The payment consumer: ``python -m effectively_once.payments.consumer``.

A separate OS process, so that the lab's SIGKILL is a real crash. The loop:

    poll a batch -> parse each record (malformed -> DLQ) -> step(ctx, msg) for each
                 -> record one event per message -> flush the DLQ producer -> commit the Kafka offsets

The per-message step is ``effectively_once.payments.steps:process_message``
(the PaymentIntent path; ``--api charges``: ``steps:process_charge``, the
one-shot Charges path) unless ``--step module:function`` names another. Every
call to the provider goes through the official Stripe SDK
(``payments.client``). With ``--batch-dedup`` the step is called once per poll
batch (``steps:process_batch``), so the dedup table costs one INSERT and one
UPDATE per batch rather than per message. ``--crash-at POINT
--crash-on N`` makes the process SIGKILL itself the Nth time it reaches POINT.
Every record ends as a charge, a dedup skip or a DLQ entry; none is dropped.
With the ``offsets_in_db`` layer the step records each charge and the
partition's next offset in one PostgreSQL transaction, and an assigned
partition starts from the offset stored there (``payments/offsets.py``);
the Kafka commit after each batch is then only a mirror for lag dashboards.
When the shop database goes away mid-batch the consumer exits with code 75
(``EXIT_RESTART``, "restart me") and commits nothing for that batch; an offset
commit the broker cannot take (it is down or restarting) is owed and retried
while the consumer keeps polling. ``--exit-when-idle`` counts only time spent
holding partitions with no record: waiting for a rebalance is not idle.
``--metrics-port`` serves the consumer's metrics (lag, dedup hit rate, p99s) for Prometheus and ``--spans-file``
writes a span per message (see ``effectively_once.observe.exporter`` and ``.spans``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from typing import Any

if __name__ == "__main__" and "httpx" not in sys.modules:
    # Started as the consumer program (a crash matrix starts dozens of them): the Stripe SDK imports httpx,
    # when it is installed, for an async client the consumer never uses, and httpx brings its own command
    # line (rich, click): about a third of the consumer's start (benchmarks/consumer_start.py). httpx is
    # hidden while the SDK loads, and only then: a step of the learner's may still import it.
    sys.modules["httpx"] = None  # type: ignore[assignment]
    try:
        import stripe  # noqa: F401
    finally:
        del sys.modules["httpx"]

import psycopg

from effectively_once import protocol
from effectively_once.connections import announce_limit
from effectively_once.kafka import client_settings, ensure_topic, is_partition_eof, quiet_logger, refused_by_rebalance
from effectively_once.observe.exporter import ConsumerTelemetry
from effectively_once.observe.spans import configure_tracing
from effectively_once.payments.client import ChargeFailed, ProviderClient
from effectively_once.payments.clocks import CommitTry, IdleClock, OwedCommit
from effectively_once.payments.consumer_settings import ConsumerSettings, build_parser, load_step
from effectively_once.payments.messages import MalformedMessage, parse_charge, trace_id_of
from effectively_once.payments.offsets import store_offsets, stored_offsets
from effectively_once.payments.shop import migrate_shop
from effectively_once.payments.steps import StepContext
from effectively_once.protocol import EXIT_RESTART, EventKind, RestartReason, Result


def _msg_id_of(value: bytes | None, headers: dict[str, bytes]) -> str | None:
    """The msg_id of a record, even a malformed one, when it can be found at all."""
    if "msg_id" in headers:
        return headers["msg_id"].decode("utf-8", "replace")
    try:
        candidate = json.loads(value or b"").get("msg_id")
        return candidate if isinstance(candidate, str) else None
    except Exception:
        return None


class PaymentConsumer:
    """The poll loop: reads charges, runs the step on each, dead-letters what cannot be charged."""

    def __init__(self, settings: ConsumerSettings, *, step: Callable | None = None,
                 log: Callable[[str], None] = print, telemetry: ConsumerTelemetry | None = None) -> None:
        """Connect to the shop, the provider and the broker as ``settings`` say.

        ``step`` is the step function itself (default: ``settings.step_spec``, imported).
        """
        from confluent_kafka import Consumer, Producer

        self.settings = settings
        self.topic, self.group, self.dlq_topic = settings.topic, settings.group, f"{settings.topic}.dlq"
        self.layers, self.batch_dedup = frozenset(settings.layers), settings.batch_dedup
        self.step = step or load_step(settings.step_spec)
        self.exit_when_idle, self.batch_size = settings.exit_when_idle, settings.batch_size
        self.poll_timeout = settings.poll_timeout
        self.log = log
        self.shop = psycopg.connect(settings.shop_dsn, autocommit=True)
        migrate_shop(self.shop)
        # The events table is telemetry: a commit that waits for the disk buys nothing there.
        self.events = psycopg.connect(settings.shop_dsn, autocommit=True)
        self.events.execute("SET synchronous_commit = off")
        self.provider = ProviderClient(settings.provider_url, settings.api_key, max_retries=settings.max_retries,
                                       timeout=settings.provider_timeout,
                                       on_answer=self._provider_answered if settings.log_answers else None)
        self.ctx = StepContext(self.shop, self.provider, self.layers, settings.crash_at, settings.crash_on,
                               topic=settings.topic, group=settings.group, pause_at=settings.pause_at)
        self.stores_offsets = settings.stores_offsets
        config = {
            "bootstrap.servers": settings.bootstrap, **client_settings(), "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "isolation.level": "read_committed", "logger": quiet_logger(),
            # The end of each partition is reported, so that silence before it is not taken for idleness.
            "enable.partition.eof": True,
            **settings.consumer_config,
        }
        config["group.id"] = settings.group
        self.consumer = Consumer(config)
        self.dlq = Producer({"bootstrap.servers": settings.bootstrap, **client_settings(), "enable.idempotence": True,
                             "acks": "all", "linger.ms": 0, "logger": quiet_logger(), "message.max.bytes": 4 * 2**20})
        ensure_topic(settings.bootstrap, self.dlq_topic)
        self._dlq_failed: list = []
        self.commit_error: str | None = None  # why the last offset commit failed, while one is owed
        self.assigned = False
        self.stopping = False
        self.counts: dict[str, int] = {"processed": 0, **dict.fromkeys(protocol.RESULTS, 0)}
        self.telemetry = telemetry or ConsumerTelemetry(dedup=settings.uses_dedup, group=settings.group,
                                                        window_seconds=settings.metrics_window)

    def _provider_answered(self, msg_id: str, key: str | None, status: int, replay: str | None,
                           charge_id: str) -> None:
        """Log the provider's answer to a charge, with its ``Idempotent-Replayed`` header as sent."""
        self.log(protocol.provider_answered(msg_id, key, status, replay, charge_id))

    def emit(self, kind: EventKind, **fields: Any) -> None:
        """Write one event line (``protocol.ProcessEvent``): what the parent, a lab or a test reads back."""
        self.log(protocol.event(kind, **fields).format())

    # -- one poll batch -----------------------------------------------------------------
    def handle_batch(self, records: list) -> int:
        """Take each record of a poll batch to its end: charged, skipped, or dead-lettered."""
        valid = []
        for record in records:
            headers = {k: (v or b"") for k, v in (record.headers() or [])}
            base = {"topic": record.topic(), "partition": record.partition(), "offset": record.offset(),
                    "trace_id": trace_id_of(headers.get("traceparent", b"").decode("ascii", "replace"))}
            try:
                msg = parse_charge(record.value(), headers, partition=record.partition(), offset=record.offset())
            except MalformedMessage as exc:
                self.dead_letter(record, headers, "malformed", str(exc))
                self.record_event(msg_id=_msg_id_of(record.value(), headers), result="dead_lettered",
                                  error=f"malformed: {exc}", **base)
                continue
            valid.append((record, headers, base, msg))
        if self.batch_dedup:
            outcomes = self.step(self.ctx, [v[3] for v in valid]) if valid else []
        for index, (record, headers, base, msg) in enumerate(valid):
            # One span per message, current while the step runs (with --batch-dedup the step ran already).
            with self.telemetry.message_span(msg.traceparent, msg.msg_id, base):
                self.ctx.current_msg_id = msg.msg_id
                if self.batch_dedup:
                    outcome = outcomes[index]
                else:
                    try:
                        outcome = self.step(self.ctx, msg)
                    except ChargeFailed as exc:
                        outcome = exc
                if isinstance(outcome, ChargeFailed):
                    self.dead_letter(record, headers, outcome.kind, str(outcome))
                    self.record_event(msg_id=msg.msg_id, result="dead_lettered", retries=outcome.retries,
                                      error=f"{outcome.kind}: {outcome}", **base)
                    continue
                self.counts[outcome.result] = self.counts.get(outcome.result, 0) + 1
                self.record_event(msg_id=msg.msg_id, result=outcome.result, dedup_hit=outcome.dedup_hit,
                                  side_effect_ms=outcome.side_effect_ms, retries=outcome.retries, **base)
        return len(records)

    def dead_letter(self, record, headers: dict[str, bytes], kind: str, reason: str) -> None:
        """Send ``record`` to ``<topic>.dlq`` with why, where it came from and when it was seen."""
        extra = {
            protocol.DLQ_ERROR_TYPE: kind,
            protocol.DLQ_REASON: reason[:1000],
            protocol.DLQ_SOURCE_TOPIC: record.topic(),
            protocol.DLQ_SOURCE_PARTITION: str(record.partition()),
            protocol.DLQ_SOURCE_OFFSET: str(record.offset()),
            protocol.DLQ_FIRST_SEEN: datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            protocol.DLQ_CONSUMER_GROUP: self.group,
        }
        out: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in headers.items() if not k.startswith(protocol.DLQ_PREFIX)]
        out += [(k, v.encode()) for k, v in extra.items()]
        self.dlq.produce(self.dlq_topic, key=record.key(), value=record.value(), headers=out,
                         on_delivery=self._dlq_delivered)
        self.counts["dead_lettered"] += 1
        self.emit(EventKind.DEAD_LETTERED, topic=record.topic(), partition=record.partition(),
                  offset=record.offset(), error_type=kind)
        self.log(f"dead-lettered {record.topic()}[{record.partition()}]@{record.offset()}: {kind}: {reason[:200]}")

    def record_event(self, *, msg_id, topic, partition, offset, result: Result, dedup_hit=False, side_effect_ms=None,
                     retries=0, trace_id=None, error=None) -> None:
        """One row in ``consumer_events``: what the observability notebook reads."""
        self.counts["processed"] += 1
        self.events.execute(
            "INSERT INTO consumer_events (msg_id, topic, partition, \"offset\", result, dedup_hit,"
            " side_effect_ms, retries, trace_id, error, layers, consumer_pid)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (msg_id, topic, partition, offset, result, dedup_hit, side_effect_ms, retries, trace_id, error,
             ",".join(sorted(self.layers)) or "none", os.getpid()))
        self.telemetry.record(result=result, dedup_hit=dedup_hit, side_effect_ms=side_effect_ms, retries=retries,
                              error=error)

    # -- the loop -----------------------------------------------------------------------

    def _dlq_delivered(self, err, msg) -> None:
        """Delivery report of a dead-letter write: keep the ones the broker refused, to send again."""
        if err is not None:
            self._dlq_failed.append((msg, err))

    def flush_dlq(self, attempts: int = 3) -> None:
        """Wait until every dead-letter write of the batch is acknowledged; resend the refused ones.

        ``flush`` only says the queue is empty: a write the broker refused also
        leaves it, with an error in its delivery report. Committing past such a
        record would lose it, so it is sent again, and if it still fails the
        consumer stops with the offsets uncommitted (the record is redelivered).
        """
        for attempt in range(1, attempts + 1):
            if self.dlq.flush(30) != 0:
                raise RuntimeError("the dead-letter topic did not acknowledge; offsets left uncommitted")
            failed, self._dlq_failed = self._dlq_failed, []
            if not failed:
                return
            self.log(f"{len(failed)} dead-letter write(s) refused ({failed[0][1]}); "
                     f"sending again ({attempt}/{attempts})")
            if attempt == attempts:
                raise RuntimeError(f"the dead-letter topic refused {len(failed)} record(s) ({failed[0][1]}); "
                                   "offsets left uncommitted, so they will be redelivered")
            for msg, _ in failed:
                self.dlq.produce(msg.topic(), key=msg.key(), value=msg.value(), headers=msg.headers(),
                                 on_delivery=self._dlq_delivered)

    def commit_offsets(self, records: list | None = None) -> bool:
        """Commit the batch's offsets; False when the broker could not take the commit (it is owed).

        A commit the broker cannot take (it is down or restarting) is owed,
        not lost: every record up to the consumer's position was recorded, so
        the next commit, after the next batch or from the poll loop a second
        later, covers this one too. Meanwhile the consumer keeps polling, which
        is how its client reconnects.

        With ``offsets_in_db`` the batch's ends go to the shop's ``consumer_offsets``
        first (the step stored each charged message's already; this covers the
        dead-lettered and malformed ones), and the Kafka commit only mirrors them.

        A rebalance between poll and commit (another member joined, or this one
        was too slow) makes the coordinator refuse the commit with
        ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID or REBALANCE_IN_PROGRESS, or the
        client refuse it with _ASSIGNMENT_LOST (this member was removed). The
        partitions' new owner starts from the last committed offset, so it gets
        these records again: the dedup table and the Idempotency-Key absorb them.
        Crashing here would only add one more rebalance.
        """
        from confluent_kafka import KafkaError, KafkaException

        if records and self.stores_offsets:
            ends: dict[tuple[str, int], int] = {}
            for record in records:
                where = (record.topic(), record.partition())
                ends[where] = max(ends.get(where, 0), record.offset() + 1)
            for topic in {t for t, _ in ends}:
                store_offsets(self.shop, self.group, topic, {p: n for (t, p), n in ends.items() if t == topic})
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            if refused_by_rebalance(exc):
                self.emit(EventKind.COMMIT_REFUSED, error=error.name())
                self.log(f"offset commit refused ({error.name()}): this member no longer owns the partitions, "
                         "so the group will redeliver these records to their new owner")
            elif error.code() != KafkaError._NO_OFFSET:  # _NO_OFFSET: nothing new to commit
                self.commit_error = f"{error.name()}: {error.str()}"
                return False
        self.commit_error = None
        return True

    def seek_to_stored(self, consumer, partitions: list) -> None:
        """Start each newly assigned partition at the offset stored in the shop database, not Kafka's.

        Called from the assignment callback: the partitions are assigned here,
        with their offsets set, incrementally under the cooperative protocols
        (KIP-848's ``consumer`` group protocol among them), all at once under
        the eager ones. A partition with no stored offset starts where Kafka's
        committed offset (or ``auto.offset.reset``) says.
        """
        from confluent_kafka import KafkaException

        stored = stored_offsets(self.shop, self.group, self.topic)
        for tp in partitions:
            if tp.topic == self.topic and tp.partition in stored:
                tp.offset = stored[tp.partition]
        try:
            consumer.incremental_assign(partitions)
        except KafkaException:  # an eager protocol: the assignment is replaced as a whole
            consumer.assign(partitions)
        self.log("assigned " + ", ".join(f"{tp.partition}@{tp.offset if tp.offset >= 0 else 'committed'}"
                                         for tp in partitions) + " (offsets from the shop database)")

    def run(self) -> int:
        """Consume until SIGTERM, or until idle for ``exit_when_idle`` s while holding partitions.

        Returns 0, or ``EXIT_RESTART`` (and says why in the log) when the shop
        database went away mid-batch, whose offsets are then not committed, or
        when the broker has taken no offset commit for ``clocks.COMMIT_OWED_SECONDS``.
        """
        from confluent_kafka import KafkaError

        clock = IdleClock(self.exit_when_idle)

        at_end: set[tuple[str, int]] = set()  # assigned partitions the broker said are read to their end

        def on_assign(consumer, partitions):
            at_end.clear()
            if self.stores_offsets:
                self.seek_to_stored(consumer, partitions)
            else:
                self.log(f"assigned partitions {_partition_list(partitions)}")
            self.assigned = True
            self.emit(EventKind.ASSIGNED, partitions=[tp.partition for tp in partitions])
            clock.reset()

        def on_revoke(consumer, partitions):
            # Until the rebalance hands partitions back, waiting is not idle.
            self.assigned = False
            self.emit(EventKind.REVOKED, partitions=[tp.partition for tp in partitions])
            self.log(f"partitions {_partition_list(partitions)} revoked: waiting for the rebalance (not idle time)")

        self.consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        owed = OwedCommit()
        try:
            while not self.stopping:
                records = []
                for record in self.consumer.consume(self.batch_size, timeout=self.poll_timeout):
                    error = record.error()
                    if error:
                        if is_partition_eof(error):
                            at_end.add((record.topic() or "", record.partition() or 0))
                        else:
                            if error.code() == KafkaError._MAX_POLL_EXCEEDED:
                                # Its client has left the group; the next poll rejoins it, under a new generation.
                                self.emit(EventKind.POLL_INTERVAL_EXCEEDED, error=error.name())
                            self.log(f"consumer error: {error}")
                        continue
                    at_end.discard((record.topic() or "", record.partition() or 0))
                    records.append(record)
                self.telemetry.update_lag(self.consumer)
                try:
                    if records:
                        self.handle_batch(records)
                        # The DLQ copy must be durable before the offset moves past the original.
                        self.flush_dlq()
                    if owed.due(records=len(records)):
                        self.log_commit_try(owed.attempt(partial(self.commit_offsets, records)))
                except psycopg.OperationalError as exc:
                    return self.restart_needed("shop_database_gone",
                                               f"the shop database went away ({_first_line(exc)})")
                if owed.overdue():
                    return self.restart_needed("commit_overdue", f"the broker has taken no offset commit for "
                                               f"{owed.limit:.0f} s ({self.commit_error})")
                # A commit still owed is not idle time either: the run is not done until it goes through.
                assignment = self.consumer.assignment()
                holding = self.assigned and bool(assignment) and not owed.owed
                read_to_end = {(tp.topic, tp.partition) for tp in assignment} <= at_end
                if clock.tick(assigned=holding, records=len(records), at_end=read_to_end):
                    break
        finally:
            self.close()
        return 0

    def log_commit_try(self, tried: CommitTry) -> None:
        """Say what a commit attempt changed: a commit newly owed, or an owed one paid (or made moot)."""
        if tried.paid_after is not None:
            moot = not self.consumer.assignment()
            self.emit(EventKind.COMMIT_PAID, after_s=round(tried.paid_after, 3), moot=moot)
            if not moot:
                self.log(f"offset commit went through after {tried.paid_after:.1f} s")
            else:
                self.log("the owed offset commit is moot: the group took the partitions back while "
                         "the broker was away, so their next owner gets those records again and "
                         "the dedup table absorbs them")
        elif tried.owed_now:
            self.emit(EventKind.COMMIT_OWED, error=self.commit_error)
            self.log(f"offset commit failed ({self.commit_error}): owed; the consumer keeps "
                     "polling, its client reconnects, and it commits again each second")

    def restart_needed(self, reason: RestartReason, why: str) -> int:
        """Say why this consumer stops without committing its batch (``why``, for a human); return ``EXIT_RESTART``."""
        self.emit(EventKind.RESTART_NEEDED, reason=reason, code=EXIT_RESTART)
        self.log(f"{why}: exiting with code {EXIT_RESTART} (restart me) and no offset committed for this batch; "
                 "the next consumer is redelivered it from the last commit, and the dedup table absorbs "
                 "what was recorded")
        return EXIT_RESTART

    def close(self) -> None:
        """Leave the group cleanly and close every connection."""
        try:
            self.consumer.close()
        finally:
            self.dlq.flush(10)
            self.provider.close()
            for conn in (self.shop, self.events):
                try:
                    conn.close()
                except psycopg.Error:
                    pass  # a connection the server dropped
            self.telemetry.close()


def _partition_list(partitions: list) -> str:
    return ", ".join(str(tp.partition) for tp in partitions) or "none"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    """Run the consumer until it is stopped, idle, or killed."""
    parser = build_parser()
    try:
        settings = ConsumerSettings.from_argv(argv)
        step = load_step(settings.step_spec)
    except (ValueError, ImportError) as exc:
        parser.error(str(exc))
    configure_tracing(settings.spans_file)
    telemetry = ConsumerTelemetry(dedup=settings.uses_dedup, group=settings.group,
                                  window_seconds=settings.metrics_window)
    from confluent_kafka import KafkaException

    try:
        consumer = PaymentConsumer(settings, step=step, log=lambda line: print(line, flush=True), telemetry=telemetry)
    except KafkaException as exc:
        print(f"The consumer cannot reach the broker at {settings.bootstrap} ({exc.args[0]}); start the stack "
              f"with `python -m effectively_once up`; exiting with code {EXIT_RESTART} (restart me).",
              file=sys.stderr)
        return EXIT_RESTART
    except psycopg.OperationalError as exc:
        if announce_limit(exc, settings.shop_dsn):  # over the role's CONNECTION LIMIT: a restart would be refused too
            return protocol.EXIT_CONNECTION_LIMIT
        print(f"The consumer cannot reach the shop database ({_first_line(exc)}); check --shop-dsn, or start "
              f"the stack with `python -m effectively_once up`; exiting with code {EXIT_RESTART} (restart me).",
              file=sys.stderr)
        return EXIT_RESTART

    def on_term(signum, frame):
        consumer.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    if settings.metrics_port is not None:
        print(protocol.metrics_on(telemetry.serve(settings.metrics_port)), flush=True)
    layers = sorted(settings.layers)
    print(protocol.event(EventKind.STARTED, topic=settings.topic, group=settings.group, layers=layers,
                         step=settings.step_spec).format(), flush=True)
    print(f"consumer started: topic {settings.topic}, group {settings.group}, layers "
          f"{','.join(layers) or protocol.NO_LAYERS}, step {settings.step_spec}", flush=True)
    code = consumer.run()
    print(protocol.event(EventKind.FINISHED, counts=consumer.counts).format(), flush=True)
    print("consumer finished: " + json.dumps(consumer.counts), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
