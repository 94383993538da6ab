"""What a consumer process is told: one ``ConsumerSettings``, declared and validated once.

The lab builds one in the parent, which refuses bad settings before any
process starts; ``to_argv()`` turns it into the child's command line, and the
child (``python -m effectively_once.payments.consumer``) reads it back with
``from_argv()``. The command line itself (``build_parser``) is made from the
fields below, so a setting is declared in one place only.

    settings = ConsumerSettings(bootstrap="127.0.0.1:9092", topic="t", group="g",
                                shop_dsn="postgresql://...", provider_url="http://127.0.0.1:8000",
                                layers="both", crash_at="after_provider_call")
    settings.to_argv()   # ["--bootstrap=127.0.0.1:9092", "--topic=t", ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from effectively_once.observe.exporter import DEFAULT_WINDOW_SECONDS
from effectively_once.payments.messages import DEFAULT_API_KEY
from effectively_once.protocol import (
    ALL_CRASH_POINTS,
    DEDUP_LAYERS,
    HANDLED_LAYERS,
    LAYERS,
    NO_LAYERS,
    CrashPoint,
    Layer,
)

DEFAULT_STEP = "effectively_once.payments.steps:process_message"
DEFAULT_BATCH_STEP = "effectively_once.payments.steps:process_batch"
CHARGES_STEP = "effectively_once.payments.steps:process_charge"
CHARGES_BATCH_STEP = "effectively_once.payments.steps:process_charge_batch"
# The provider API the default step takes: the PaymentIntent path (create, store the id, confirm; the recovery
# point) or the one-shot Charges path (one call, nothing to ask afterwards but the key).
APIS = ("payment_intents", "charges")
STEPS = {("payment_intents", False): DEFAULT_STEP, ("payment_intents", True): DEFAULT_BATCH_STEP,
         ("charges", False): CHARGES_STEP, ("charges", True): CHARGES_BATCH_STEP}
OFFSETS_STEP = "effectively_once.payments.offsets:process_message"
CONSUMER_MODULE = "effectively_once.payments.consumer"

LAYER_SETS: dict[str, tuple[Layer, ...]] = {
    "both": ("dedup", "idempotency_key"),
    "dedup_only": ("dedup",),
    "idempotency_key_only": ("idempotency_key",),
    "none": (),
    # The textbook recipe to the letter ("if 0 rows inserted: already processed, skip"): it skips any
    # existing row, even a 'pending' one left by a crash.
    "dedup_as_written": ("dedup_as_written", "idempotency_key"),
}
# Beyond the dedup table: the consumer's offsets stored in the transaction that records the charge.
# Kept apart from LAYER_SETS, whose five sets are the crash matrix of the dedup table.
OFFSET_LAYER_SETS: dict[str, tuple[Layer, ...]] = {
    "offsets_in_db": ("offsets_in_db", "idempotency_key"),
    "offsets_only": ("offsets_in_db",),
}
NAMED_LAYER_SETS: dict[str, tuple[Layer, ...]] = {**LAYER_SETS, **OFFSET_LAYER_SETS}


def resolve_layers(layers: str | Iterable[str] | None) -> tuple[Layer, ...]:
    """A layer set by name (``both``, ``dedup_only``, ``offsets_in_db``, ...), a comma list, or a sequence
    of layers, checked.

    ``None`` is ``both``; ``none`` or an empty list is no layer. Refuses an
    unknown layer, ``dedup`` with ``dedup_as_written`` (two versions of one
    layer), and ``offsets_in_db`` with either (two ways of remembering a handled message).
    """
    if layers is None:
        return LAYER_SETS["both"]
    if isinstance(layers, str):
        if layers in NAMED_LAYER_SETS:
            return NAMED_LAYER_SETS[layers]
        layers = [p.strip() for p in layers.split(",") if p.strip()]
        if layers == [NO_LAYERS]:
            layers = []
    chosen = tuple(dict.fromkeys(layers))
    if any(not isinstance(layer, str) for layer in chosen):
        raise ValueError(f"layers: each layer is a name, got {list(chosen)!r}")
    unknown = [layer for layer in chosen if layer not in LAYERS]
    if unknown:
        raise ValueError(f"layers: unknown layer(s) {', '.join(unknown)}: use a set name "
                         f"({', '.join(NAMED_LAYER_SETS)}) or layers among {', '.join(LAYERS)}")
    if all(layer in chosen for layer in DEDUP_LAYERS):
        raise ValueError("layers: dedup and dedup_as_written are two versions of one layer: pick one")
    handled = [layer for layer in chosen if layer in HANDLED_LAYERS]
    if len(handled) > 1:
        raise ValueError(f"layers: {' and '.join(handled)} both remember which messages were handled; offsets_in_db "
                         "stores the offset with the charge, so a handled message never comes back: pick one")
    return cast("tuple[Layer, ...]", chosen)  # each one checked against LAYERS above


def layers_text(layers: Iterable[str]) -> str:
    """Layers as the command line writes them: ``dedup,idempotency_key``, or ``none``.

    A lone layer that is also the name of a larger set (``offsets_in_db``,
    ``dedup_as_written``) gets a trailing comma, so that it reads back as itself.
    """
    chosen = tuple(layers)
    text = ",".join(chosen) or NO_LAYERS
    if text in NAMED_LAYER_SETS and set(NAMED_LAYER_SETS[text]) != set(chosen):
        text += ","
    return text


def load_step(spec: str) -> Callable:
    """Import ``module:function`` (the per-message step) and return the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--step must look like module:function, got {spec!r}")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"{spec}: {attr} is not a function in {module_name}")
    return function


# -- how each kind of field is written on a command line and read back --------------------------------
def _option(help: str, *, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
            parse: Callable[[str], Any] = str, text: Callable[[Any], str] = str, metavar: str | None = None) -> Any:
    metadata = {"help": help, "parse": parse, "text": text, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"consumer_config: not JSON ({exc})") from None
    return value


def _api_key_default() -> str:
    return os.environ.get("EO_PROVIDER_API_KEY", DEFAULT_API_KEY)


@dataclass(frozen=True)
class ConsumerSettings:
    """Everything one consumer process needs to know, checked when it is made.

    Bad values raise ``ValueError`` naming the field. ``layers`` may be given
    as a set name, a comma list or a sequence; it is kept as a tuple of layers.
    """

    bootstrap: str = _option("the Kafka bootstrap servers, host:port[,host:port]")
    topic: str = _option("the topic of charge messages")
    group: str = _option("the consumer group")
    shop_dsn: str = _option("the shop database (dedup table, events), a libpq URI")
    provider_url: str = _option("the payment provider's base URL, http://host:port")
    api_key: str = _option("the provider's API key (default: $EO_PROVIDER_API_KEY, else the lab's key)",
                           default_factory=_api_key_default)
    layers: tuple[Layer, ...] = _option(f"comma list of {', '.join(LAYERS)}; or none",
                                        default=LAYER_SETS["both"], parse=resolve_layers, text=layers_text)
    api: str = _option(f"the provider API of the default step: {' or '.join(APIS)} (create a PaymentIntent, store "
                       "its id, confirm it; or one POST /v1/charges)", default="payment_intents")
    step: str | None = _option(f"the per-message function, as module:function (default {DEFAULT_STEP}, or "
                               f"{CHARGES_STEP} with --api charges; with --batch-dedup, a per-batch function, "
                               f"default {DEFAULT_BATCH_STEP} or {CHARGES_BATCH_STEP})", default=None)
    batch_dedup: bool = _option("do the dedup-table work once per poll batch instead of once per message",
                                default=False)
    crash_at: CrashPoint | None = _option(f"SIGKILL this process at one of {', '.join(ALL_CRASH_POINTS)}", default=None)
    crash_on: int = _option("crash the Nth time the crash point is reached", default=1, parse=int)
    pause_at: CrashPoint | None = _option("stop at this crash point the first time it is reached, and wait for a "
                                          "SIGKILL from outside", default=None)
    log_answers: bool = _option("log each answer of the provider to a charge, with its Idempotent-Replayed header",
                                default=False)
    exit_when_idle: float | None = _option("exit after this many seconds holding partitions and receiving no record "
                                           "(time waiting for a rebalance is not idle)", default=None,
                                           parse=float, metavar="SECONDS")
    batch_size: int = _option("records per poll", default=100, parse=int)
    poll_timeout: float = _option("seconds one poll waits for records", default=0.1, parse=float)
    max_retries: int = _option("provider calls retried at most this many times", default=5, parse=int)
    provider_timeout: float = _option("seconds one provider call may take before it counts as failed and is retried",
                                      default=5.0, parse=float, metavar="SECONDS")
    consumer_config: dict[str, Any] = _option("JSON of extra librdkafka settings (e.g. session timeouts)",
                                              default_factory=dict, parse=_json_object,
                                              text=lambda v: json.dumps(v, sort_keys=True))
    metrics_port: int | None = _option("serve Prometheus metrics on this port (0: a free one, printed at start)",
                                       default=None, parse=int)
    metrics_window: float = _option("the window of the rolling gauges (hit rate, p99s)",
                                    default=DEFAULT_WINDOW_SECONDS, parse=float, metavar="SECONDS")
    spans_file: str | None = _option("append this consumer's spans to PATH as JSON lines", default=None,
                                     metavar="PATH")

    def __post_init__(self) -> None:
        for name in ("bootstrap", "topic", "group", "shop_dsn", "provider_url", "api_key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: must be a non-empty string, got {value!r}")
        if not self.provider_url.startswith(("http://", "https://")):
            raise ValueError(f"provider_url: must start with http:// or https://, got {self.provider_url!r}")
        object.__setattr__(self, "layers", resolve_layers(self.layers))
        if self.api not in APIS:
            raise ValueError(f"api: must be one of {', '.join(APIS)}, got {self.api!r}")
        if self.step is not None:
            module, sep, function = str(self.step).partition(":")
            if not sep or not module or not function:
                raise ValueError(f"step: must look like module:function, got {self.step!r}")
        if not isinstance(self.batch_dedup, bool):
            raise ValueError(f"batch_dedup: must be True or False, got {self.batch_dedup!r}")
        if self.batch_dedup and "offsets_in_db" in self.layers:
            raise ValueError("batch_dedup: the batch step keeps a dedup table, and the offsets_in_db layer has none; "
                             "drop batch_dedup or the offsets_in_db layer")
        if self.crash_at is not None and self.crash_at not in ALL_CRASH_POINTS:
            raise ValueError(f"crash_at: unknown crash point {self.crash_at!r}; "
                             f"use one of {', '.join(ALL_CRASH_POINTS)}")
        _check_number("crash_on", self.crash_on, int, minimum=1, note="counts from 1")
        if self.pause_at is not None and self.pause_at not in ALL_CRASH_POINTS:
            raise ValueError(f"pause_at: unknown crash point {self.pause_at!r}; "
                             f"use one of {', '.join(ALL_CRASH_POINTS)}")
        if not isinstance(self.log_answers, bool):
            raise ValueError(f"log_answers: must be True or False, got {self.log_answers!r}")
        if self.exit_when_idle is not None:
            _check_number("exit_when_idle", self.exit_when_idle, float, minimum=0)
        _check_number("batch_size", self.batch_size, int, minimum=1)
        _check_number("poll_timeout", self.poll_timeout, float, minimum=0, strict=True)
        _check_number("max_retries", self.max_retries, int, minimum=0)
        _check_number("provider_timeout", self.provider_timeout, float, minimum=0, strict=True)
        if self.metrics_port is not None:
            _check_number("metrics_port", self.metrics_port, int, minimum=0, maximum=65535)
        _check_number("metrics_window", self.metrics_window, float, minimum=0, strict=True)
        if not isinstance(self.consumer_config, dict) or not all(isinstance(k, str) for k in self.consumer_config):
            raise ValueError(f"consumer_config: must be a dict of librdkafka settings, got {self.consumer_config!r}")
        try:
            json.dumps(self.consumer_config)
        except TypeError as exc:
            raise ValueError(f"consumer_config: must be plain JSON data ({exc})") from None
        if self.spans_file is not None:
            if not isinstance(self.spans_file, (str, os.PathLike)) or not os.fspath(self.spans_file):
                raise ValueError(f"spans_file: must be a path, got {self.spans_file!r}")
            object.__setattr__(self, "spans_file", os.fspath(self.spans_file))

    # -- derived ---------------------------------------------------------------------------
    @property
    def step_spec(self) -> str:
        """The step the consumer runs: ``step``, else the per-message or per-batch default of its ``api``
        (the offsets-in-the-database step, a one-shot charge, when that layer is on)."""
        if self.step:
            return self.step
        if self.stores_offsets:
            return OFFSETS_STEP
        return STEPS[(self.api, self.batch_dedup)]

    @property
    def stores_offsets(self) -> bool:
        """True when the consumer keeps its offsets in the shop database (the ``offsets_in_db`` layer)."""
        return "offsets_in_db" in self.layers

    @property
    def uses_dedup(self) -> bool:
        """True when one of the dedup-table layers is on."""
        return any(layer in DEDUP_LAYERS for layer in self.layers)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The names of every setting (the keyword arguments it takes)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    # -- the command line -----------------------------------------------------------------
    def to_argv(self) -> list[str]:
        """The child's command-line arguments; ``from_argv`` of them gives these settings back.

        Each value is joined to its option (``--api-key=...``) so that a value
        starting with ``-`` is not taken for an option.
        """
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                argv += [_flag(f.name)] if value else []
            elif value is not None:
                argv.append(f"{_flag(f.name)}={f.metadata['text'](value)}")
        return argv

    def command(self) -> list[str]:
        """The whole command that runs a consumer with these settings."""
        return [sys.executable, "-m", CONSUMER_MODULE, *self.to_argv()]

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> ConsumerSettings:
        """Read settings from a command line (``sys.argv[1:]`` when None).

        A malformed number or a missing required option ends the program as
        argparse does (exit 2); a value the settings refuse raises ``ValueError``.
        """
        args = vars(build_parser().parse_args(argv))
        return cls(**{name: value for name, value in args.items() if value is not None})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _read(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its error names the field instead of saying "invalid value"."""
    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            message = str(exc) if str(exc).startswith(f"{name}:") else f"{name}: cannot read {text!r} ({exc})"
            raise argparse.ArgumentTypeError(message) from None

    read.__name__ = name
    return read


def _check_number(name: str, value: Any, kind: type, *, minimum: float, maximum: float | None = None,
                  strict: bool = False, note: str = "") -> None:
    numeric = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise ValueError(f"{name}: must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if value < minimum or (strict and value == minimum) or (maximum is not None and value > maximum):
        bound = f"more than {minimum}" if strict else f"at least {minimum}"
        if maximum is not None:
            bound = f"between {minimum} and {maximum}"
        raise ValueError(f"{name}: must be {bound}{f' ({note})' if note else ''}, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The consumer's command line, one option per ``ConsumerSettings`` field."""
    parser = argparse.ArgumentParser(prog=f"python -m {CONSUMER_MODULE}",
                                     description="Consume charge messages and charge them through the provider.")
    for f in dataclasses.fields(ConsumerSettings):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.default is False:
            parser.add_argument(_flag(f.name), action="store_true", default=None, help=f.metadata["help"])
            continue
        parser.add_argument(_flag(f.name), required=required, default=None, type=_read(f.name, f.metadata["parse"]),
                            metavar=f.metadata["metavar"], help=f.metadata["help"])
    return parser
