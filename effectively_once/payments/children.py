"""The pipeline's child processes (provider, consumer, webhook receiver): started, watched and stopped by pid.

Each ``Child`` is owned by the object that started it, works as a context
manager, and registers an atexit cleanup, so that a notebook kernel or a test
that exits leaves nothing running. A kernel that dies without running its
atexit handlers (SIGKILL, a restart) takes its children with it all the
same: each is started to die with the process that started it, and is
recorded in its run (``effectively_once.runs``) for the watchdog and ``clean``.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from effectively_once import protocol, runs
from effectively_once.connections import raise_if_limit
from effectively_once.lifetime import SIGKILL, kill_now
from effectively_once.observe.scrape import Scrape, scrape
from effectively_once.payments.consumer_settings import ConsumerSettings
from effectively_once.payments.messages import DEFAULT_API_KEY
from effectively_once.stack.processes import stop_pid, wait_until

ChildT = TypeVar("ChildT", bound="Child")


class Child:
    """One child process, with its output in a log file and a way to stop it by pid."""

    name = "process"

    def __init__(self, argv: list[str], log_dir: Path | None = None) -> None:
        self.argv = argv
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else runs.temp_dir(f"eo-{self.name}-")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}-{time.time_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Child:
        """Start the process (its stdout and stderr go to ``log_path``)."""
        with open(self.log_path, "ab") as log:
            # A session of its own: Ctrl-C in a notebook must not reach the pipeline's processes.
            # SIGKILL when its owner dies: the pipeline is built to survive exactly that.
            self.proc = runs.start_process(self.name, self.argv, die_signal=SIGKILL, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        atexit.register(self.stop)
        return self

    @property
    def pid(self) -> int | None:
        """The child's process id (None before ``start``)."""
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        """The exit status, None while running; a negative value is the signal that ended it."""
        return self.proc.poll() if self.proc else None

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def killed_by_sigkill(self) -> bool:
        """True when the process ended by SIGKILL (its own crash point or a kill from outside)."""
        return self.returncode == -SIGKILL

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit status (TimeoutError if it does not)."""
        assert self.proc is not None, "start() first"
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the {self.name} (pid {self.pid}) still runs after {timeout} s; "
                               f"its log is {self.log_path}") from None

    def kill(self) -> None:
        """SIGKILL the process now, as a crash would, and collect its exit status."""
        if self.proc is not None and self.running:
            kill_now(self.proc.pid)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to stop (SIGTERM), SIGKILL it after ``timeout`` s; clean up its log."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_pid(self.proc.pid, SIGKILL, timeout=5)
                self.proc.poll()
        runs.process_ended(self.name, self.proc)
        atexit.unregister(self.stop)
        if self._own_log_dir:
            runs.remove_dir(self.log_dir)

    def await_announcement(self, parse: Callable[[str], str | None], what: str, timeout: float) -> str:
        """Wait until the process prints the address ``parse`` finds in its log and answers ``/healthz`` there.

        Returns the address; stops the process and raises when it does not come up in ``timeout`` s.
        """
        found: list[str] = []

        def announced() -> bool:
            address = parse(self.log_tail(20000))
            if address is not None:
                found[:] = [address]
            return address is not None

        try:
            wait_until(announced, timeout, what, proc=self.proc, log=self.log_path)
            wait_until(lambda: httpx.get(f"{found[0]}/healthz", timeout=2).status_code == 200, timeout,
                       f"{what}'s /healthz", proc=self.proc, log=self.log_path)
        except Exception:
            tail = self.log_tail(20000)
            self.stop()
            raise_if_limit(tail)  # refused over the role's CONNECTION LIMIT: one sentence, not the log
            raise
        return found[0]

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's output, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def log_events(self, kind: protocol.EventKind | str | None = None) -> list[protocol.ProcessEvent]:
        """The events the process has written so far (its ``EO-EVENT`` lines), in order; only ``kind``'s when given.

        Read from the whole log, not its tail: an early event (``started``) is never cut off. A stopped
        process's log is removed, so read them before ``stop``.
        """
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return protocol.parse_events(text, kind)

    def __enter__(self: ChildT) -> ChildT:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProviderProcess(Child):
    """The provider service running under uvicorn, on a free port.

    ``faults`` are the start-up fault knobs (``latency_ms``, ``fail_after_charge``,
    ``fail_before_charge``, ``rate_limit_per_second``, ``search_delay_ms``,
    ``webhook_duplicate``, ...); ``set_faults`` changes them while it runs.
    ``port`` 0 picks a free port; a restart after a crash passes the old one,
    so that consumers holding its URL find it again. With ``webhook_url`` and
    ``webhook_secret`` (``whsec_...``) it sends its events there, signed, at
    least once; a restart resumes the deliveries it had not finished.
    """

    name = "provider"

    def __init__(self, dsn: str, *, api_key: str = DEFAULT_API_KEY, key_ttl_seconds: float = 86400,
                 in_flight_timeout: float = 30.0, seed: int | None = None, log_dir: Path | None = None,
                 port: int = 0, webhook_url: str | None = None, webhook_secret: str | None = None,
                 **faults: Any) -> None:
        argv = [sys.executable, "-m", "effectively_once.payments.provider", "--dsn", dsn, "--port", str(port),
                "--api-key", api_key, "--key-ttl-seconds", str(key_ttl_seconds),
                "--in-flight-timeout", str(in_flight_timeout)]
        if seed is not None:
            argv += ["--seed", str(seed)]
        if webhook_url is not None or webhook_secret is not None:
            argv += ["--webhook-url", str(webhook_url), "--webhook-secret", str(webhook_secret)]
        self.dsn, self.api_key = dsn, api_key
        self.webhook_url, self.webhook_secret = webhook_url, webhook_secret
        self._options = dict(api_key=api_key, key_ttl_seconds=key_ttl_seconds, in_flight_timeout=in_flight_timeout,
                             seed=seed, log_dir=log_dir, webhook_url=webhook_url, webhook_secret=webhook_secret,
                             **faults)
        super().__init__(argv, log_dir)
        self._initial_faults = faults
        self.url: str | None = None

    def start(self, timeout: float = 30.0) -> ProviderProcess:
        """Start the provider and wait until it prints its address and answers ``/healthz``."""
        super().start()
        self.url = self.await_announcement(protocol.parse_provider_listening, "the payment provider", timeout)
        if self._initial_faults:
            self.set_faults(**self._initial_faults)
        return self

    def restarted(self, timeout: float = 30.0) -> ProviderProcess:
        """A new provider process on this one's database, port and settings (after it died), started."""
        if self.running:
            raise RuntimeError(f"the provider (pid {self.pid}) is still running: stop or kill it first")
        return ProviderProcess(self.dsn, port=self.port or 0, **self._options).start(timeout)

    @property
    def port(self) -> int | None:
        """The TCP port the provider listens on."""
        return int(self.url.rsplit(":", 1)[1]) if self.url else None

    def _admin(self, path: str, body: dict | None = None) -> dict:
        # Raw HTTP: the lab's own routes (fault knobs, key ageing) are no part of Stripe's API, nor of its SDK.
        response = httpx.post(f"{self.url}{path}", json=body or {}, timeout=10,
                              headers={"Authorization": f"Bearer {self.api_key}"})
        if response.status_code != 200:
            raise ValueError(response.json().get("error", {}).get("message", response.text))
        return response.json()

    def set_faults(self, **faults: Any) -> dict:
        """Change fault knobs while the provider runs; returns every knob's value now."""
        return self._admin("/admin/faults", faults)

    def faults(self) -> dict:
        """Every fault knob's current value."""
        response = httpx.get(f"{self.url}/admin/faults", timeout=10,
                             headers={"Authorization": f"Bearer {self.api_key}"})
        return response.json()

    def expire_keys(self) -> int:
        """Age every stored idempotency key past the TTL (as if a day went by); returns how many."""
        return int(self._admin("/admin/expire-keys")["aged"])

    def metrics(self) -> Scrape:
        """The provider's ``/metrics`` (webhook deliveries, retries, failures by reason), parsed."""
        return scrape(f"{self.url}/metrics", timeout=10)


class WebhookReceiverProcess(Child):
    """The shop's webhook endpoint (``python -m effectively_once.payments.receiver``) on a free port.

    Start it before the provider that sends to it: ``ProviderProcess(dsn,
    webhook_url=receiver.url, webhook_secret=receiver.secret)``. ``handler``
    (``module:function``) replaces the inbox's ``record_event``; a restart
    after a crash keeps the port, so the provider's retries find it again.
    """

    name = "receiver"

    def __init__(self, shop_dsn: str, secret: str, *, handler: str | None = None, tolerance: float | None = None,
                 port: int = 0, log_dir: Path | None = None) -> None:
        argv = [sys.executable, "-m", "effectively_once.payments.receiver", "--shop-dsn", shop_dsn,
                "--webhook-secret", secret, "--port", str(port)]
        if handler is not None:
            argv += ["--handler", handler]
        if tolerance is not None:
            argv += ["--tolerance", str(tolerance)]
        self.shop_dsn, self.secret = shop_dsn, secret
        self.handler, self.tolerance, self._log_dir = handler, tolerance, log_dir
        super().__init__(argv, log_dir)
        self.base_url: str | None = None

    def start(self, timeout: float = 30.0) -> WebhookReceiverProcess:
        """Start the receiver and wait until it prints its address and answers ``/healthz``."""
        super().start()
        self.base_url = self.await_announcement(protocol.parse_receiver_listening, "the webhook receiver", timeout)
        return self

    @property
    def url(self) -> str | None:
        """Where the provider sends events: ``<base>/webhooks``."""
        from effectively_once.payments.receiver import PATH

        return f"{self.base_url}{PATH}" if self.base_url else None

    @property
    def port(self) -> int | None:
        """The TCP port the receiver listens on."""
        return int(self.base_url.rsplit(":", 1)[1]) if self.base_url else None

    def restarted(self, timeout: float = 30.0) -> WebhookReceiverProcess:
        """A new receiver on this one's port and settings (after it died), started."""
        if self.running:
            raise RuntimeError(f"the webhook receiver (pid {self.pid}) is still running: stop or kill it first")
        return WebhookReceiverProcess(self.shop_dsn, self.secret, handler=self.handler, tolerance=self.tolerance,
                                      port=self.port or 0, log_dir=self._log_dir).start(timeout)

    def metrics(self) -> Scrape:
        """The receiver's ``/metrics`` (events recorded, duplicate hits, refused deliveries), parsed."""
        return scrape(f"{self.base_url}/metrics", timeout=10)


class ConsumerProcess(Child):
    """One run of ``python -m effectively_once.payments.consumer`` with the given ``ConsumerSettings``."""

    name = "consumer"

    def __init__(self, settings: ConsumerSettings, *, log_dir: Path | None = None) -> None:
        super().__init__(settings.command(), log_dir)
        self.settings = settings
        self.layers, self.crash_at, self.crash_on = settings.layers, settings.crash_at, settings.crash_on
        self.serves_metrics = settings.metrics_port is not None
        self._metrics_url: str | None = None

    @property
    def metrics_url(self) -> str | None:
        """The consumer's ``/metrics`` URL once it has printed it (None without ``metrics_port``)."""
        if self._metrics_url is None and self.serves_metrics:
            self._metrics_url = protocol.parse_metrics_on(self.log_tail(20000))
        return self._metrics_url

    def wait_for_metrics(self, timeout: float = 30.0) -> str:
        """Wait until the consumer serves ``/metrics``; return the URL."""
        if not self.serves_metrics:
            raise ValueError("this consumer was started without metrics_port")
        wait_until(lambda: self.metrics_url is not None, timeout, "the consumer's /metrics", proc=self.proc,
                   log=self.log_path)
        url = self.metrics_url
        assert url is not None, "wait_until returned before the consumer announced its /metrics"
        return url

    @property
    def paused_at(self) -> tuple[str, str] | None:
        """``(crash point, msg_id)`` once the consumer has stopped at its ``pause_at`` point, else None."""
        if not self.settings.pause_at:
            return None
        paused = self.log_events(protocol.EventKind.PAUSED)
        return (paused[0]["point"], paused[0]["msg_id"]) if paused else None

    def wait_until_paused(self, timeout: float = 30.0) -> tuple[str, str]:
        """Wait until the consumer stops at its ``pause_at`` point; return the point and the msg_id there."""
        if not self.settings.pause_at:
            raise ValueError("this consumer was started without pause_at: it never pauses")
        wait_until(lambda: self.paused_at is not None, timeout, f"the consumer's pause at {self.settings.pause_at}",
                   proc=self.proc, log=self.log_path)
        where = self.paused_at
        assert where is not None, "wait_until returned before the consumer announced its pause"
        return where

    def provider_answers(self) -> list[dict[str, str]]:
        """The provider's answers to this consumer's charges, from its log (started with ``log_answers``):
        ``msg_id``, ``key``, ``status``, ``replayed`` (the ``Idempotent-Replayed`` header) and ``charge_id``."""
        return protocol.parse_provider_answers(self.log_tail(10**7))

    @property
    def crashed_at_point(self) -> bool:
        """True when the process killed itself at its crash point (not from outside)."""
        return self.killed_by_sigkill and bool(self.log_events(protocol.EventKind.CRASH_POINT))

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        where = f"pause_at={self.settings.pause_at}" if self.settings.pause_at else f"crash_at={self.crash_at}"
        return f"<consumer pid={self.pid} layers={','.join(self.layers) or 'none'} {where} {state}>"
