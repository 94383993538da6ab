"""Stripe, 2023: redrive-all floods the consumers and the payment API throttles; a paced redrive does not.

The story (told in the field; no public post-mortem was found for it): a
downstream incident filled a dead-letter queue with about a million messages.
Once it was over, an operator redrove the whole DLQ at once: the source queue
received everything in one burst, the consumer pool took it as fast as it
could, and the payment API behind it answered with rate-limit errors.
Throttled calls were retried, retries added load, and throttling cascaded.

``FloodLab`` replays it on the real pipeline, scaled down to run in seconds
(``replay(stack, rate=None | R, messages=...)`` is one run in a lab of its own):

1. a provider with a rate limit (``rate_limit_per_second``: 429 with
   ``Retry-After: 1`` above it) and a pool of consumer processes on the source
   topic, warmed up so that every consumer holds its partitions before the
   redrive starts;
2. a dead-letter topic filled with ``messages`` charges, headers and all, as
   the consumers would have left them during the provider's outage (produced
   directly: failing that many charges first would only cost time);
3. the redrive (``effectively_once.incidents.redrive.redrive``) into the
   source topic: all at once (``rate=None``) or paced by a token bucket at
   ``rate`` records per second; meanwhile ``LiveTraffic`` sends a few checkout
   charges per second straight to the provider, sharing its limit, and times
   each checkout until the provider accepts it (a refused checkout waits the
   ``Retry-After`` second and tries again, as a checkout page would);
4. the consumers charge everything; each HTTP answer the provider gives them
   is recorded (``answering_step`` / ``answering_batch_step``, plugged in with
   ``--step``), so that 429s and retries can be counted and plotted in time.

``FloodReplay`` holds the counts (429s, retries, drain time, charges, live
checkouts refused and how long they waited) and the series; ``plot_side_by_side(flood, paced)`` draws
both runs.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from effectively_once import protocol
from effectively_once.db import one
from effectively_once.schemas import load

if TYPE_CHECKING:
    from effectively_once.payments.client import ChargeFailed
    from effectively_once.payments.lab import PaymentLab
    from effectively_once.payments.messages import ChargeMessage
    from effectively_once.payments.steps import Outcome, StepContext
    from effectively_once.stack import Stack

ANSWERING_STEP = "effectively_once.incidents.stripe2023:answering_step"
ANSWERING_BATCH_STEP = "effectively_once.incidents.stripe2023:answering_batch_step"
DEFAULT_MESSAGES = 240
DEFAULT_PROVIDER_LIMIT = 30.0
DEFAULT_LIVE_RATE = 8.0
CHECKOUT_RETRIES = 2  # a checkout refused three times in a row gives up: the customer sees an error
ANSWERS_SCHEMA = load("stripe2023_answers.sql")
_ANSWERS_LOCK = 0x45_4F_32_33  # serialises concurrent creation of the table by several consumers


# -- the consumer step: process_message, with the provider's answers recorded -------------------------
_answers: list[tuple[float, int]] = []
_hooked: set[int] = set()
_schema_ready = [False]


def _record_answer(status: int) -> None:
    _answers.append((time.time(), status))


def _hook(ctx: StepContext) -> None:
    """Record every HTTP answer of the provider to the consumer's SDK client (once per process)."""
    if id(ctx.provider) not in _hooked:
        ctx.provider.add_answer_hook(_record_answer)
        _hooked.add(id(ctx.provider))
    if not _schema_ready[0]:
        with ctx.shop.transaction():
            ctx.shop.execute("SELECT pg_advisory_xact_lock(%s)", (_ANSWERS_LOCK,))
            ctx.shop.execute(ANSWERS_SCHEMA)
        _schema_ready[0] = True


def _save_answers(ctx: StepContext) -> None:
    rows, _answers[:] = list(_answers), []
    if rows:
        # Telemetry: not worth waiting for the disk, which the charges themselves do.
        with ctx.shop.transaction():
            ctx.shop.execute("SET LOCAL synchronous_commit = off")
            with ctx.shop.cursor() as cur:
                cur.executemany("INSERT INTO provider_answers (at, status, consumer_pid) VALUES (%s, %s, %s)",
                                [(at, status, os.getpid()) for at, status in rows])


def answering_step(ctx: StepContext, msg: ChargeMessage) -> Outcome:
    """The course's one-shot ``process_charge``, with every HTTP answer of the provider saved to ``provider_answers``.

    The flood is about how many calls reach a rate-limited API, so the replay
    takes the one-shot Charges path: one call per charge. Retries happen inside
    the provider client, out of the step's sight; a hook on the SDK's HTTP
    client sees each attempt, 429s included. The rows go to the shop database
    after each message.
    """
    from effectively_once.payments.steps import process_charge

    _hook(ctx)
    try:
        return process_charge(ctx, msg)
    finally:
        _save_answers(ctx)


def answering_batch_step(ctx: StepContext, msgs: list[ChargeMessage]) -> list[Outcome | ChargeFailed]:
    """``process_charge_batch`` (the consumer's ``--batch-dedup`` mode) with the provider's answers saved likewise."""
    from effectively_once.payments.steps import process_charge_batch

    _hook(ctx)
    try:
        return process_charge_batch(ctx, msgs)
    finally:
        _save_answers(ctx)


# -- filling the DLQ ------------------------------------------------------------------------------
def dlq_records(n: int, *, seed: int, prefix: str, source_topic: str, group: str) -> list[tuple[bytes, bytes, list]]:
    """``n`` charge records with the headers the consumer adds when the provider keeps answering 503."""
    from effectively_once.payments.producer import charge_records

    records = []
    for offset, (key, value, headers) in enumerate(charge_records(n, seed=seed, prefix=prefix)):
        extra = {protocol.DLQ_ERROR_TYPE: "retries_exhausted",
                 protocol.DLQ_REASON: "gave up after 5 retries; last: HTTP 503: api_error: the card network is down",
                 protocol.DLQ_SOURCE_TOPIC: source_topic, protocol.DLQ_SOURCE_PARTITION: str(offset % 3),
                 protocol.DLQ_SOURCE_OFFSET: str(offset // 3), protocol.DLQ_CONSUMER_GROUP: group}
        records.append((key, value, headers + [(k, v.encode()) for k, v in extra.items()]))
    return records


# -- the replay -------------------------------------------------------------------------------------
THROTTLED, NOT_THROTTLED = "the provider throttled (429)", "no 429"
# What each redrive must meet, by whether it is paced (``run(rate=...)``): notebook 06 and the tests assert it.
EXPECTED_OUTCOME = {"redrive-all": THROTTLED, "paced": NOT_THROTTLED}


@dataclass
class FloodReplay:
    """One redrive into a live consumer pool behind a rate-limited provider, and what followed."""

    rate: float | None
    messages: int
    provider_limit: float
    consumers: int
    redrive: Any                                  # the RedriveResult
    answers: list[tuple[float, int]] = field(repr=False)    # (seconds since the first redriven send, HTTP status)
    finished: list[tuple[float, str, int]] = field(repr=False)  # (seconds, result, retries) per consumer event
    live: list[tuple[float, int]] = field(default_factory=list, repr=False)  # live checkout answers (seconds, status)
    # one per live checkout: (seconds when it started, seconds until its last answer, attempts, last status)
    checkouts: list[tuple[float, float, int, int]] = field(default_factory=list, repr=False)
    live_rate: float = 0.0
    charged_messages: int = 0
    duplicate_charges: int = 0
    redead_lettered: int = 0

    @property
    def throttled(self) -> int:
        """How many times the provider answered 429 (rate limit)."""
        return sum(1 for _, status in self.answers if status == 429)

    @property
    def outcome(self) -> str:
        """``THROTTLED`` when the provider answered 429 to the pool or to a live checkout, else ``NOT_THROTTLED``."""
        return THROTTLED if self.throttled or self.live_throttled else NOT_THROTTLED

    @property
    def expected_outcome(self) -> str:
        """The outcome this redrive must have: ``EXPECTED_OUTCOME`` of redrive-all or of a paced one."""
        return EXPECTED_OUTCOME["redrive-all" if self.rate is None else "paced"]

    @property
    def live_throttled(self) -> int:
        """Live checkout charges the provider refused with 429 while the redrive drained."""
        return sum(1 for _, status in self.live if status == 429)

    @property
    def checkouts_refused(self) -> int:
        """Live checkouts whose customer was refused at least once (a 429 on some attempt)."""
        return sum(1 for _, _, attempts, status in self.checkouts if attempts > 1 or status != 200)

    @property
    def checkouts_failed(self) -> int:
        """Live checkouts that never got a 200: refused ``CHECKOUT_RETRIES + 1`` times, the customer gave up."""
        return sum(1 for _, _, _, status in self.checkouts if status != 200)

    def checkout_latency(self, q: float = 0.99) -> float:
        """The ``q`` quantile of the live checkouts' latency in seconds, first attempt to last answer."""
        latencies = sorted(latency for _, latency, _, _ in self.checkouts)
        if not latencies:
            return 0.0
        return latencies[max(0, math.ceil(q * len(latencies)) - 1)]  # the nearest rank

    @property
    def provider_calls(self) -> int:
        """Every HTTP answer the consumers got from the provider, retries included."""
        return len(self.answers)

    @property
    def retries(self) -> int:
        """Provider retries, summed over the consumers' events."""
        return sum(retries for _, _, retries in self.finished)

    @property
    def retry_count_p99(self) -> float:
        """``retry_count_p99`` (the metric of notebook 05) over the redriven messages."""
        from effectively_once.observe.metrics import retry_count_p99

        return retry_count_p99(retries for _, _, retries in self.finished)

    @property
    def drain_seconds(self) -> float:
        """From the first redriven send to the last redriven message handled."""
        return max((t for t, _, _ in self.finished), default=0.0)

    def peak_answer_rate(self, window: float = 1.0) -> int:
        """The most provider answers (any status) in any window of ``window`` seconds."""
        times = sorted(t for t, _ in self.answers)
        best = lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def answer_rate(self, status: int | None = None, bin_seconds: float = 0.25) -> tuple[list[float], list[float]]:
        """(bin start times, provider answers per second) for one HTTP status, or all of them."""
        times = [t for t, s in self.answers if status is None or s == status]
        end = max(self.drain_seconds, max((t for t, _ in self.answers), default=0.0))
        bins = int(end // bin_seconds) + 1
        counts = [0] * bins
        for t in times:
            if t >= 0:
                counts[min(int(t // bin_seconds), bins - 1)] += 1
        return [i * bin_seconds for i in range(bins)], [c / bin_seconds for c in counts]

    def summary(self) -> dict[str, Any]:
        """The counts as plain data (what the HTML table shows)."""
        return {
            "redrive": "all at once" if self.rate is None else f"token bucket, {self.rate:g}/s",
            "messages redriven": self.redrive.sent,
            "provider rate limit (/s)": self.provider_limit,
            "consumers": self.consumers,
            "provider answers": self.provider_calls,
            "429 Too Many Requests": self.throttled,
            "retries": self.retries,
            "retry_count_p99": self.retry_count_p99,
            "back in the DLQ": self.redead_lettered,
            f"live checkouts refused at least once (of {len(self.checkouts)})": self.checkouts_refused,
            "live checkouts given up": self.checkouts_failed,
            "live checkout latency p50 (ms)": round(self.checkout_latency(0.5) * 1000),
            "live checkout latency p99 (ms)": round(self.checkout_latency(0.99) * 1000),
            "messages charged": self.charged_messages,
            "charged twice": self.duplicate_charges,
            "drain time (s)": round(self.drain_seconds, 1),
        }

    def verdict(self) -> str:
        """One sentence on the outcome."""
        how = "Redriven all at once" if self.rate is None else f"Redriven at {self.rate:g}/s"
        live = (f"; {self.checkouts_refused} of {len(self.checkouts)} live checkouts were refused at least once "
                f"(p99 {self.checkout_latency(0.99) * 1000:.0f} ms)") if self.checkouts else ""
        if self.throttled or self.live_throttled:
            return (f"{how}: the provider answered 429 {self.throttled} times to the consumers, which retried "
                    f"{self.retries} times{live}; {self.charged_messages} of {self.messages} charged "
                    f"in {self.drain_seconds:.1f} s.")
        return (f"{how}: no 429 from the provider, no retry{live}; {self.charged_messages} of {self.messages} "
                f"charged in {self.drain_seconds:.1f} s.")

    def plot_checkouts(self, ax=None, xmax: float | None = None):
        """One dot per live checkout: when it started, and how long its customer waited for a 200."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 2.5))
        name = "redrive-all" if self.rate is None else f"redrive --rate {self.rate:g}"
        ok = [(t, latency * 1000) for t, latency, _, status in self.checkouts if status == 200]
        gave_up = [(t, latency * 1000) for t, latency, _, status in self.checkouts if status != 200]
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=14, color="tab:blue", label="checkout accepted")
        if gave_up:
            ax.scatter(*zip(*gave_up, strict=True), s=24, marker="x", color="tab:red",
                       label=f"checkout given up ({len(gave_up)})")
        ax.set_yscale("symlog", linthresh=100)
        ax.set_ylim(0, 5000)
        _label(ax, f"{name}: live checkouts, p99 {self.checkout_latency(0.99) * 1000:.0f} ms",
               "seconds since the first redriven record", "wait for a 200 (ms)", "upper right", xmax)
        return ax.figure

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.summary().items())
        return f"<p><b>{html.escape(self.verdict())}</b></p><table>{rows}</table>"

    def accepted_in_last_second(self, step: float = 0.05) -> tuple[list[float], list[int]]:
        """(times, charges the provider accepted in the second before each time): what its limiter counts."""
        accepted = sorted(t for t, status in self.answers + self.live if status == 200)
        end = max(self.drain_seconds, accepted[-1] if accepted else 0.0) + 1.0
        times = [i * step for i in range(int(end / step) + 1)]
        counts, lo, hi = [], 0, 0
        for t in times:
            while hi < len(accepted) and accepted[hi] <= t:
                hi += 1
            while lo < hi and accepted[lo] <= t - 1.0:
                lo += 1
            counts.append(hi - lo)
        return times, counts

    def plot(self, axes=None, bin_seconds: float = 0.25, xmax: float | None = None):
        """Two panels: arrivals at the source topic; what the provider's limiter counted, and its 429s."""
        import matplotlib.pyplot as plt

        if axes is None:
            _, axes = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
        top, bottom = axes
        name = "redrive-all" if self.rate is None else f"redrive --rate {self.rate:g}"
        self.redrive.plot(top, bin_seconds=bin_seconds, label=name)
        top.set_title(f"{name}: arrivals at the source topic")
        top.set_xlabel("")
        xs, ys = self.accepted_in_last_second()
        bottom.plot(xs, ys, color="tab:green", label="charges accepted in the last second")
        bottom.axhline(self.provider_limit, color="black", linestyle="--", linewidth=1,
                       label=f"provider limit {self.provider_limit:g}/s")
        for source, colour, label in ((self.answers, "tab:red", "429 to a consumer"),
                                      (self.live, "tab:orange", "429 to a live checkout")):
            refused = [t for t, status in source if status == 429]
            if refused:
                bottom.scatter(refused, [self.provider_limit * 1.08] * len(refused), marker="x", color=colour,
                               label=f"{label} ({len(refused)})", zorder=3)
        bottom.set_ylim(0, self.provider_limit * 1.5)
        _label(bottom, f"at the provider: {self.throttled + self.live_throttled} x 429, {self.retries} retries",
               "", "charges per trailing second", "lower right", xmax)
        return top.figure


def _label(ax, title: str, xlabel: str, ylabel: str, legend_at: str, xmax: float | None) -> None:
    """Title, axis labels, legend and x range of one panel."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc=legend_at)
    if xmax is not None:
        ax.set_xlim(0, xmax)


def plot_side_by_side(flood: FloodReplay, paced: FloodReplay, bin_seconds: float = 0.25):
    """Both replays in two columns on one time axis: arrivals, the provider's limiter, the live checkouts."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(12, 9), sharex=True)
    xmax = max(flood.drain_seconds, paced.drain_seconds) + 0.5
    for column, run in enumerate((flood, paced)):
        run.plot(axes[:2, column], bin_seconds, xmax)
        run.plot_checkouts(axes[2, column], xmax)
    fig.tight_layout()
    return fig


class LiveTraffic:
    """Checkout traffic that does not go through the queue: charges POSTed straight to the provider.

    A thread starts ``rate`` checkouts per second (each with its own
    Idempotency-Key) until stopped. A checkout refused with 429 waits the
    ``Retry-After`` the provider asks for and tries again under the same key,
    at most ``retries`` times, as a checkout page would; then its customer
    gives up. It records every answer (when, which status) and, per checkout,
    how long the customer waited. It shares the provider's rate limit with
    the redrive, as live payments share an account's limit with a backlog
    being replayed.

    Raw HTTP on purpose: these are not the consumer's calls but a load that
    stands for other services' checkouts, and the replay times every attempt
    and honours the 429's ``Retry-After`` itself; the SDK would hide the
    attempts, and does not retry a 429 at all.
    """

    def __init__(self, url: str, api_key: str, rate: float, prefix: str, retries: int = CHECKOUT_RETRIES) -> None:
        import threading

        self.url, self.api_key, self.rate, self.prefix, self.retries = url, api_key, rate, prefix, retries
        self.answers: list[tuple[float, int]] = []   # (time.time(), status), every attempt
        self.checkouts: list[tuple[float, float, int, int]] = []  # (started, seconds waited, attempts, last status)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="live-traffic")
        self._workers: list[threading.Thread] = []

    def _checkout(self, http, key: str) -> None:
        import httpx

        started, attempts, status = time.time(), 0, 0
        while True:
            attempts += 1
            try:
                response = http.post(f"{self.url}/v1/charges", headers={"Idempotency-Key": key},
                                     json={"amount": 1500, "currency": "usd", "customer": "cus_checkout",
                                           "metadata": {"msg_id": key}})
                status = response.status_code
                wait = float(response.headers.get("retry-after", "1") or 1)
            except httpx.TransportError:
                status, wait = 0, 1.0
            with self._lock:
                self.answers.append((time.time(), status))
            if status != 429 or attempts > self.retries:
                break
            time.sleep(wait)
        with self._lock:
            self.checkouts.append((started, time.time() - started, attempts, status))

    def _run(self) -> None:
        import threading

        import httpx

        with httpx.Client(timeout=5.0, trust_env=False, limits=httpx.Limits(max_connections=32),
                          headers={"Authorization": f"Bearer {self.api_key}"}) as http:
            n = 0
            while not self._stop.wait(1.0 / self.rate):
                n += 1
                worker = threading.Thread(target=self._checkout, args=(http, f"{self.prefix}-{n}"), daemon=True)
                worker.start()
                self._workers.append(worker)
            for worker in self._workers:  # the client must outlive the checkouts still waiting
                worker.join(timeout=10)

    def __enter__(self) -> LiveTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)


class FloodLab:
    """A rate-limited provider and a warm pool of consumers, into which DLQs are redriven one run at a time.

        with FloodLab(stack, provider_limit=50) as lab:
            flood = lab.run(rate=None, messages=200)
            paced = lab.run(rate=20, messages=200)

    Each run parks its own ``messages`` charges in a dead-letter topic of its
    own (``<source>.dlq.<n>``), redrives it into the source topic the pool
    consumes, and waits until every redriven charge has been handled. What the
    consumers dead-letter again goes to ``<source>.dlq`` and is counted.
    Everything is stopped and dropped on exit.
    """

    def __init__(self, stack: Stack, *, provider_limit: float = DEFAULT_PROVIDER_LIMIT, consumers: int = 3,
                 batch_dedup: bool = True, progress: Callable[[str], None] | None = None) -> None:
        if consumers < 1 or not provider_limit > 0:
            raise ValueError("consumers must be at least 1 and provider_limit above 0")
        self.stack, self.provider_limit, self.consumers = stack, float(provider_limit), consumers
        self.batch_dedup = batch_dedup
        self.say = progress or (lambda text: None)
        self.lab: PaymentLab | None = None
        self.pool: list = []
        self.runs = 0
        self._topics: list[str] = []

    def start(self) -> FloodLab:
        """Start the provider and the consumer pool; return once every consumer has handled a charge."""
        import psycopg

        from effectively_once.payments.lab import PaymentLab

        lab = self.lab = PaymentLab(self.stack, "both")
        try:
            lab.start_provider(rate_limit_per_second=self.provider_limit)
            with psycopg.connect(lab.shop_dsn, autocommit=True) as conn:
                conn.execute(ANSWERS_SCHEMA)
            self.say(f"starting {self.consumers} consumers, waiting until each holds a partition...")
            step = ANSWERING_BATCH_STEP if self.batch_dedup else ANSWERING_STEP
            self.pool = [lab.start_consumer(step=step, batch_dedup=self.batch_dedup, exit_when_idle=None)
                         for _ in range(self.consumers)]
            _wait_for_every_consumer(lab, self.pool, lab.shop_dsn, timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_pool(self) -> None:
        dead = [c for c in self.pool if not c.running]
        if dead:
            raise RuntimeError(f"a consumer of the pool exited (code {dead[0].returncode}):\n{dead[0].log_tail()}")

    def run(self, rate: float | None = None, messages: int = DEFAULT_MESSAGES, *, seed: int = 0,
            live_rate: float = DEFAULT_LIVE_RATE, timeout: float = 90.0) -> FloodReplay:
        """Park ``messages`` charges in a fresh DLQ, redrive them (all at once, or at ``rate``/s), wait, count.

        While the redrive drains, ``LiveTraffic`` sends ``live_rate`` checkout
        charges per second straight to the provider (0 for none).
        """
        import psycopg

        from effectively_once.incidents.redrive import redrive
        from effectively_once.payments.producer import send_records

        if self.lab is None:
            raise RuntimeError("start the FloodLab first (use it in a with block)")
        if messages < 1:
            raise ValueError(f"messages must be at least 1, got {messages!r}")
        lab = self.lab
        if lab.provider is None or lab.provider.url is None or lab.provider_dsn is None:
            raise RuntimeError("the FloodLab's provider is not running: start the FloodLab first")
        provider_url, provider_dsn = lab.provider.url, lab.provider_dsn
        self.runs += 1
        dlq = f"{lab.topic}.dlq.{self.runs}"
        self.stack.ensure_topic(dlq)
        self._topics.append(dlq)
        self.say(f"parking {messages} dead-lettered charges in {dlq}...")
        records = dlq_records(messages, seed=seed, prefix=f"{lab.run_id}r{self.runs}", source_topic=lab.topic,
                              group=lab.group)
        send_records(self.stack, dlq, records)
        msg_ids = [json.loads(value)["msg_id"] for _, value, _ in records]
        self._check_pool()
        time.sleep(1.1)  # the provider's one-second window forgets what came before

        self.say("redriving " + ("everything at once..." if rate is None else f"at {rate:g} records/s..."))
        first_send: list[float] = []
        live = LiveTraffic(provider_url, lab.api_key, live_rate, f"live-{lab.run_id}-{self.runs}") \
            if live_rate > 0 else contextlib.nullcontext()
        with live:
            result = redrive(self.stack, dlq, lab.topic, rate=rate, group=f"{lab.group}.redrive",
                             on_send=lambda r: first_send.append(time.time()) if r.index == 0 else None)
            t0 = first_send[0]
            self.say("waiting until the consumers have handled every redriven charge...")
            deadline = time.monotonic() + timeout
            with psycopg.connect(lab.shop_dsn, autocommit=True) as conn:
                while True:
                    done = one(conn.execute("SELECT count(DISTINCT msg_id) FROM consumer_events"
                                            " WHERE msg_id = ANY(%s)", (msg_ids,)), "the count of handled charges")[0]
                    if done >= len(msg_ids):
                        break
                    self._check_pool()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the consumers handled {done} of {len(msg_ids)} redriven charges in "
                                           f"{timeout:.0f} s")
                    time.sleep(0.2)
        with psycopg.connect(lab.shop_dsn, autocommit=True) as conn:
            finished = [(float(t) - t0, r, int(n)) for t, r, n in conn.execute(
                "SELECT extract(epoch FROM created_at), result, retries FROM consumer_events"
                " WHERE msg_id = ANY(%s) ORDER BY created_at", (msg_ids,))]
            t_end = t0 + max(t for t, _, _ in finished) + 0.5
            answers = [(float(at) - t0, int(status)) for at, status in conn.execute(
                "SELECT at, status FROM provider_answers WHERE at >= %s AND at <= %s ORDER BY at", (t0, t_end))]
        live_answers = [(at - t0, status) for at, status in getattr(live, "answers", []) if t0 <= at <= t_end]
        checkouts = [(at - t0, waited, attempts, status) for at, waited, attempts, status
                     in getattr(live, "checkouts", []) if t0 <= at <= t_end]
        with psycopg.connect(provider_dsn) as conn:
            charged, twice = one(conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE n > 1) FROM"
                " (SELECT msg_id, count(*) AS n FROM ledger WHERE msg_id = ANY(%s) GROUP BY msg_id) AS per_message",
                (msg_ids,)), "the ledger's counts")
        return FloodReplay(rate=rate, messages=messages, provider_limit=self.provider_limit,
                           consumers=self.consumers, redrive=result, answers=answers, finished=finished,
                           live=live_answers, checkouts=checkouts, live_rate=live_rate,
                           charged_messages=int(charged),
                           duplicate_charges=int(twice),
                           redead_lettered=sum(1 for _, r, _ in finished if r == "dead_lettered"))

    def stop(self) -> None:
        """Stop the consumers and the provider by pid; delete the run's topics and databases."""
        from effectively_once.payments.lab import stop_together

        stop_together(self.pool)
        if self._topics:
            self.stack.delete_topics(*self._topics)
            self._topics = []
        if self.lab is not None:
            self.lab.stop()

    def __enter__(self) -> FloodLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for_every_consumer(lab, consumers: list, shop_dsn: str, timeout: float) -> None:
    """Produce a few warm-up charges at a time until each consumer process has handled one."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        while True:
            pids = {row[0] for row in conn.execute("SELECT DISTINCT consumer_pid FROM consumer_events")}
            if {c.pid for c in consumers} <= pids:
                return
            dead = [c for c in consumers if not c.running]
            if dead:
                raise RuntimeError(f"a consumer exited during warm-up (code {dead[0].returncode}):\n"
                                   f"{dead[0].log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(pids)} of {len(consumers)} consumers handled a warm-up charge "
                                   f"within {timeout:.0f} s")
            lab.produce(6, seed=len(lab.sent))
            time.sleep(0.5)


def replay(stack: Stack, rate: float | None = None, messages: int = DEFAULT_MESSAGES, *,
           provider_limit: float = DEFAULT_PROVIDER_LIMIT, consumers: int = 3, seed: int = 0,
           batch_dedup: bool = True, live_rate: float = DEFAULT_LIVE_RATE, timeout: float = 90.0,
           progress: Callable[[str], None] | None = None) -> FloodReplay:
    """One redrive of a DLQ of ``messages`` charges into a fresh consumer pool; see the module docstring.

    ``rate=None`` redrives everything at once (as in the story); a number of
    records per second paces the redrive with a token bucket (the fix). Keep
    ``rate`` well under ``provider_limit``: the consumers pass on whatever
    arrives, and arrivals bunch up (see the notebook). ``batch_dedup`` runs the
    consumers in their faster per-poll dedup mode, so that the pool can outrun
    the provider. To compare runs without starting a pool each time, use
    ``FloodLab`` and call ``run`` on it twice.
    """
    with FloodLab(stack, provider_limit=provider_limit, consumers=consumers, batch_dedup=batch_dedup,
                  progress=progress) as lab:
        return lab.run(rate, messages, seed=seed, live_rate=live_rate, timeout=timeout)
