"""The lab orchestrator: run the payment pipeline, crash it, and count what happened to the money.

    with PaymentLab(stack, layers="both") as lab:
        lab.start_provider()
        lab.produce(5, seed=1)
        lab.start_consumer(crash_at="after_provider_call").wait(30)
        lab.run_until_settled()
        lab.report()          # messages, charges, duplicate_charges, lost_charges, ...

A lab owns a topic, a consumer group and a shop database of its own (and a
provider with its own database, unless it is handed a running one to share),
and drops all of them on ``stop()`` unless ``keep=True``. Every process it
starts is stopped by pid when it stops, and at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psycopg

from effectively_once.connections import connect, raise_if_limit
from effectively_once.kafka import client_settings, committed_offsets, quiet_logger
from effectively_once.payments.children import ConsumerProcess, ProviderProcess, WebhookReceiverProcess
from effectively_once.payments.consumer_settings import APIS, LAYER_SETS, ConsumerSettings, resolve_layers
from effectively_once.payments.lab_reports import (
    REPORT_KEYS,
    KillReport,
    PaymentReport,
    RunReports,
    Table,
    layer_set_name,
)
from effectively_once.payments.messages import DEFAULT_API_KEY
from effectively_once.payments.offsets import stored_offsets
from effectively_once.payments.producer import Sent, charge_records, send_records
from effectively_once.payments.provider import migrate
from effectively_once.payments.shop import migrate_shop
from effectively_once.protocol import CRASH_POINTS, EXIT_CONNECTION_LIMIT, EXIT_RESTART

if TYPE_CHECKING:
    from effectively_once.stack import Stack
    from effectively_once.widgets.kill_button import KillButton

# Besides its own names, the lab hands on what a run reports (``lab_reports``) and the layer sets
# and crash points its scenarios name, where notebooks, labs and tests import them from.
__all__ = ["CRASH_POINTS", "LAYER_SETS", "REPORT_KEYS", "KillReport", "PaymentLab", "PaymentReport", "Table",
           "layer_set_name", "resolve_layers", "run_scenario", "stop_together"]


def stop_together(children: Iterable[ConsumerProcess]) -> None:
    """Stop child processes side by side: SIGTERM to every running one first, then ``stop()`` each.

    A consumer takes a moment to leave its group and close; one after the other, those moments add up.
    """
    children = list(children)
    for child in children:
        if child.running and child.proc is not None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        child.stop()


class PaymentLab(RunReports):
    """One payment pipeline run: its topic, group, shop database, provider, and consumers."""

    def __init__(self, stack: Stack, layers: str | Iterable[str] = ("dedup", "idempotency_key"),
                 run_id: str | None = None, *, provider: ProviderProcess | None = None, shop_dsn: str | None = None,
                 partitions: int = 3, keep: bool = False, api_key: str = DEFAULT_API_KEY,
                 api: str = "payment_intents") -> None:
        from effectively_once.stack import new_run_id

        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, got {api!r}")
        self.stack, self.api = stack, api
        self.layers = resolve_layers(layers)
        self.run_id = run_id or new_run_id()
        if not self.run_id.replace("_", "").isalnum():
            raise ValueError(f"run_id {self.run_id!r}: use letters, digits and underscores only")
        self.keep, self.api_key = keep, api_key
        # A unique token besides the run id: a notebook may reuse its run id, but never a topic.
        self._token = f"{self.run_id}_{uuid.uuid4().hex[:6]}".lower()
        self.sent: list[Sent] = []
        self.consumers: list[ConsumerProcess] = []
        self._kill_buttons: list[tuple[ConsumerProcess, KillButton]] = []  # greyed out once their consumer is killed
        self._stopped = False
        self.provider = provider
        self.receiver: WebhookReceiverProcess | None = None
        self._owns_provider = provider is None
        self.provider_dsn = provider.dsn if provider else None
        self.topic = stack.create_topic(f"payments.charges.{self._token}", partitions)
        self.dlq_topic = f"{self.topic}.dlq"
        self.group = stack.group(f"payments.{self._token}")
        self._owns_shop = shop_dsn is None
        self.shop_dsn = shop_dsn or stack.create_database(f"shop_{self._token}")
        with connect(self.shop_dsn, autocommit=True) as conn:
            migrate_shop(conn)
        atexit.register(self.stop)

    # -- provider and webhook receiver -----------------------------------------------------------
    def start_receiver(self, handler: str | None = None) -> WebhookReceiverProcess:
        """Start the shop's webhook endpoint on the lab's shop database (``handler``: ``module:function``, default
        the inbox's ``record_event``), with a signing secret of its own; start the provider after it."""
        if self.receiver is not None and self.receiver.running:
            return self.receiver
        self.receiver = WebhookReceiverProcess(self.shop_dsn, f"whsec_{uuid.uuid4().hex}", handler=handler).start()
        return self.receiver

    def restart_receiver(self) -> WebhookReceiverProcess:
        """Start the lab's webhook receiver again (after a crash) on its port, with its settings."""
        if self.receiver is None:
            raise RuntimeError("The lab has no webhook receiver: call lab.start_receiver() first.")
        old = self.receiver
        self.receiver = old.restarted()
        old.stop()
        return self.receiver

    def start_provider(self, *, webhooks: bool = False, **faults: Any) -> ProviderProcess:
        """Start the provider (own database) with fault knobs, or set them on a shared one.

        With ``webhooks`` it sends its events to the lab's webhook receiver
        (started first, by ``start_receiver``, if it is not running yet).
        """
        if self.provider is not None:
            if faults:
                self.provider.set_faults(**faults)
            return self.provider
        self.provider_dsn = self.stack.create_database(f"provider_{self._token}")
        with connect(self.provider_dsn, autocommit=True) as conn:
            migrate(conn)
        ttl = faults.pop("key_ttl_seconds", 86400)
        hooks: dict[str, Any] = {}
        if webhooks:
            receiver = self.start_receiver()
            hooks = {"webhook_url": receiver.url, "webhook_secret": receiver.secret}
        self.provider = ProviderProcess(self.provider_dsn, api_key=self.api_key, key_ttl_seconds=ttl, **hooks,
                                        **faults)
        self.provider.start()
        return self.provider

    def restart_provider(self) -> ProviderProcess:
        """Start the lab's provider again (after a crash) on its database and port, with its settings."""
        if self.provider is None or not self._owns_provider:
            raise RuntimeError("The lab restarts only a provider it started: call lab.start_provider() first.")
        old = self.provider
        self.provider = old.restarted()
        old.stop()  # the dead one's log and exit handler
        return self.provider

    def _need_provider(self) -> ProviderProcess:
        if self.provider is None or (self._owns_provider and not self.provider.running):
            raise RuntimeError("The provider is not running: call lab.start_provider() first.")
        return self.provider

    def set_faults(self, **faults: Any) -> dict:
        """Change the provider's fault knobs while it runs (latency_ms, fail_after_charge, ...)."""
        return self._need_provider().set_faults(**faults)

    def expire_keys(self) -> int:
        """Age every idempotency key past its TTL, as if a day had gone by; returns how many."""
        return self._need_provider().expire_keys()

    # -- producing -----------------------------------------------------------------------
    def produce(self, n: int, seed: int = 0, progress=None, spans_file: str | os.PathLike | None = None) -> list[str]:
        """Publish ``n`` seeded charge messages (msg_ids ``msg-<run_id>-NNNNN``); return their msg_ids.

        With ``spans_file``, each record's ``send {topic}`` PRODUCER span is
        appended there, and its context is the one the record carries.
        """
        records = charge_records(n, seed=seed, prefix=self.run_id, start=len(self.sent))
        sent = send_records(self.stack, self.topic, records, progress=progress, spans_file=spans_file)
        self.sent.extend(sent)
        return [s.msg_id for s in sent if s.msg_id]

    def produce_raw(self, values: Iterable[bytes | None], key: bytes | None = b"raw") -> list[Sent]:
        """Publish arbitrary record values (malformed ones, for the DLQ); return where they landed."""
        sent = send_records(self.stack, self.topic, [(key, v, []) for v in values])
        self.sent.extend(sent)
        return sent

    # -- consuming -----------------------------------------------------------------------
    def consumer_settings(self, layers: str | Iterable[str] | None = None, crash_at: str | None = None,
                          crash_on: int = 1, *, exit_when_idle: float | None = 1.0, step: str | None = None,
                          **options: Any) -> ConsumerSettings:
        """The ``ConsumerSettings`` of a consumer of this lab; ``options`` are further settings by name.

        Raises ``ValueError`` naming the setting when one is wrong, before any process starts.
        """
        unknown = sorted(set(options) - set(ConsumerSettings.names()))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a consumer setting; the settings are "
                             f"{', '.join(ConsumerSettings.names())}")
        chosen = resolve_layers(layers) if layers is not None else self.layers
        provider = self._need_provider()
        config = {k: v for k, v in self.stack.consumer_config().items()
                  if k in ("session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms", "group.protocol")}
        settings: dict[str, Any] = dict(
            bootstrap=self.stack.kafka_bootstrap, topic=self.topic, group=self.group, shop_dsn=self.shop_dsn,
            provider_url=provider.url, api_key=self.api_key, layers=chosen, crash_at=crash_at,
            crash_on=crash_on, exit_when_idle=exit_when_idle, step=step, consumer_config=config, api=self.api)
        settings.update(options)  # e.g. max_retries, batch_size, or a wrong api_key for a lab
        return ConsumerSettings(**settings)

    def start_consumer(self, layers: str | Iterable[str] | None = None, crash_at: str | None = None,
                       crash_on: int = 1, *, exit_when_idle: float | None = 1.0, step: str | None = None,
                       **options: Any) -> ConsumerProcess:
        """Start a consumer process (``layers`` defaults to the lab's) that may crash at ``crash_at``.

        ``options`` are further ``ConsumerSettings`` by name (``batch_dedup``,
        ``max_retries``, ``metrics_port``, ...); they are checked before the process starts.
        """
        consumer = ConsumerProcess(self.consumer_settings(layers, crash_at, crash_on, exit_when_idle=exit_when_idle,
                                                          step=step, **options))
        consumer.start()
        self.consumers.append(consumer)
        return consumer

    def kill_consumer(self, consumer: ConsumerProcess | None = None, *, wait: bool = True, timeout: float = 30.0,
                      by: str = "lab.kill_consumer()") -> KillReport:
        """SIGKILL a running consumer (default: the last one started), as a crash would; say what it hit.

        With ``wait`` (the default) a consumer started with ``pause_at`` is
        first given up to ``timeout`` s to reach its pause point, so that the
        kill lands there; without it, the kill lands wherever the consumer is.
        A consumer killed this way before (by the button, say) is not killed
        twice: its report is returned again.
        """
        consumer = self._last_consumer(consumer)
        earlier = getattr(consumer, "kill_report", None)
        if earlier is not None:
            return earlier
        if not consumer.running:
            raise RuntimeError(f"The consumer pid {consumer.pid} already exited with status {consumer.returncode}; "
                               "start another with lab.start_consumer(pause_at=...).")
        if wait and consumer.settings.pause_at:
            consumer.wait_until_paused(timeout)
        where = consumer.paused_at
        assert consumer.pid is not None, "a running consumer has a pid"
        consumer.kill()
        status = consumer.returncode
        pending, done = self._dedup_statuses()
        report = KillReport(pid=consumer.pid, by=by, paused_at=where[0] if where else None,
                            msg_id=where[1] if where else None, messages=len(self.msg_ids),
                            charged=sum(self._ledger_counts().values()), pending=pending, done=done,
                            exit_status=status)
        consumer.kill_report = report  # type: ignore[attr-defined]
        for target, button in self._kill_buttons:
            if target is consumer:
                button.used(str(report))  # its one SIGKILL has been sent: a press could only repeat this report
        return report

    def _last_consumer(self, consumer: ConsumerProcess | None = None) -> ConsumerProcess:
        """``consumer``, else the last one started; an error that says how to start one when there is none."""
        consumer = consumer or (self.consumers[-1] if self.consumers else None)
        if consumer is None:
            raise RuntimeError("No consumer to kill: start one with lab.start_consumer(pause_at=...) first.")
        return consumer

    def kill_button(self, consumer: ConsumerProcess | None = None) -> KillButton:
        """A button that SIGKILLs the consumer (default: the last one started) the moment it is pressed.

        It works once: pressed, or once ``kill_consumer`` killed the same consumer,
        it greys out and shows the kill report. Made for a consumer that is
        already dead, it starts greyed out and says so.
        """
        from effectively_once.widgets.kill_button import consumer_kill_button

        consumer = self._last_consumer(consumer)
        button = consumer_kill_button(consumer, lambda: self.kill_consumer(consumer, wait=False,
                                                                           by="you (the button)"))
        self._kill_buttons.append((consumer, button))
        return button

    def lag(self) -> int:
        """How many records this lab produced that the group has not committed past yet.

        Counted from the records the lab itself produced (their partitions and
        offsets), not from the broker's high watermarks: Tansu does not report
        those reliably. A partition's position is the later of Kafka's
        committed offset and the one the ``offsets_in_db`` layer stored in the
        shop database (the one that consumer actually starts from).
        """
        from confluent_kafka import Consumer

        if not self.sent:
            return 0
        probe = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap, **client_settings(), "group.id": self.group,
                          "enable.auto.commit": False, "logger": quiet_logger()})
        try:
            committed = committed_offsets(probe, self.topic, sorted({s.partition for s in self.sent}))
        finally:
            probe.close()
        with psycopg.connect(self.shop_dsn) as conn:
            for partition, next_offset in stored_offsets(conn, self.group, self.topic).items():
                committed[partition] = max(committed.get(partition, -1), next_offset)
        return sum(1 for s in self.sent if s.offset >= committed.get(s.partition, -1))

    def run_until_settled(self, timeout: float = 60.0, layers: str | Iterable[str] | None = None,
                          exit_when_idle: float = 1.0, step: str | None = None, **options: Any) -> int:
        """Let running consumers finish, restart after each crash, until every record is committed.

        Returns how many consumers it had to start (``options`` go to each,
        see ``start_consumer``). A consumer killed by SIGKILL, or one that
        exited with ``EXIT_RESTART`` (its shop database or broker went away),
        is replaced; one that fails for any other reason stops the run with its log.
        """
        deadline = time.monotonic() + timeout
        started = 0
        while True:
            for consumer in self.consumers:
                if consumer.running:
                    consumer.wait(max(0.1, deadline - time.monotonic()))
            last = self.consumers[-1] if self.consumers else None
            if last is not None and last.returncode == EXIT_CONNECTION_LIMIT:
                raise_if_limit(last.log_tail())
            if last is not None and not (last.returncode in (0, EXIT_RESTART) or last.killed_by_sigkill):
                raise RuntimeError(f"the consumer exited with code {last.returncode}:\n{last.log_tail()}")
            if last is not None and last.returncode == EXIT_RESTART:
                time.sleep(0.5)  # it lost the shop database or the broker: give them a moment to come back
            if last is not None and last.returncode == 0 and self.lag() == 0:
                return started
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pipeline had not settled after {timeout} s (lag {self.lag()})")
            self.start_consumer(layers=layers if layers is not None else (last.layers if last else None),
                                exit_when_idle=exit_when_idle, step=step, **options)
            started += 1

    # -- life cycle ----------------------------------------------------------------------
    def stop(self, keep: bool | None = None) -> None:
        """Stop every process by pid; drop the run's databases and topics unless ``keep``."""
        if self._stopped:
            return
        self._stopped = True
        keep = self.keep if keep is None else keep
        stop_together(self.consumers)
        if self._owns_provider and self.provider is not None:
            self.provider.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if not keep:
            self.stack.delete_topics(self.topic, self.dlq_topic)
            if self._owns_shop:
                self.stack.drop_database(f"shop_{self._token}")
            if self._owns_provider and self.provider_dsn:
                self.stack.drop_database(f"provider_{self._token}")
        else:  # left to inspect: the run's watchdog leaves them; `clean` or `reset` removes them
            kept = [f"shop_{self._token}"] if self._owns_shop else []
            if self._owns_provider and self.provider_dsn:
                kept.append(f"provider_{self._token}")
            self.stack.keep_for_inspection(topics=(self.topic,), databases=tuple(map(self.stack.database, kept)))
        atexit.unregister(self.stop)

    def __enter__(self) -> PaymentLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<PaymentLab {self.run_id} layers={layer_set_name(self.layers)} topic={self.topic} "
                f"consumers={len(self.consumers)}>")


def run_scenario(stack: Stack, crash_at: str | None, layers: str | Iterable[str] = "both", messages: int = 5, *,
                 seed: int = 0, provider: ProviderProcess | None = None, expire_keys: bool = False,
                 crash_on: int = 1, keep: bool = False, run_id: str | None = None, timeout: float = 60.0,
                 faults: dict[str, Any] | None = None, shop_dsn: str | None = None,
                 exit_when_idle: float = 1.0, consumer_options: dict[str, Any] | None = None) -> PaymentReport:
    """One crash scenario end to end: produce, consume until the crash, restart, settle, report.

    ``expire_keys=True`` ages the provider's keys past their TTL between the
    crash and the restart (the "a day went by" trap). Pass a running
    ``provider`` to share it between scenarios: each scenario's msg_ids carry
    its own run id, so their ledger rows never mix; the same holds for a
    shared ``shop_dsn`` (rows by msg_id, events by topic). ``consumer_options``
    go to every consumer (e.g. ``{"batch_dedup": True}``).
    """
    options = consumer_options or {}
    with PaymentLab(stack, layers, run_id=run_id, provider=provider, shop_dsn=shop_dsn, keep=keep) as lab:
        lab.start_provider(**(faults or {}))
        lab.produce(messages, seed=seed)
        first = lab.start_consumer(crash_at=crash_at, crash_on=crash_on, exit_when_idle=exit_when_idle, **options)
        first.wait(timeout)
        if first.returncode == EXIT_CONNECTION_LIMIT:
            raise_if_limit(first.log_tail())
        if crash_at and not first.killed_by_sigkill:
            raise RuntimeError(f"the consumer never reached {crash_at} (exit {first.returncode}):\n"
                               f"{first.log_tail()}")
        if expire_keys:
            lab.expire_keys()
        lab.run_until_settled(timeout, exit_when_idle=exit_when_idle, **options)
        report = lab.report()
        report.crash_at = crash_at
        return report
