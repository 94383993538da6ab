"""A secured workshop stack with N learners, for the room's tests: bring it up, run as a learner, take it down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from effectively_once.stack.secure import read_env_file
from tests.conftest import ROOT, run_cli

# What a learner's shell must not carry into the instructor's commands, nor the instructor's into a learner's.
CLIENT_ENV = ("EO_BACKEND", "EO_NAMESPACE", "EO_KAFKA_BOOTSTRAP", "EO_KAFKA_CONFIG", "EO_POSTGRES_DSN")


@dataclass
class SecuredRoom:
    """A running secured stack: the instructor's environment, and where the learners' files are."""

    base: Path
    env: dict[str, str]

    @property
    def files(self) -> Path:
        return self.base / "room"

    def learner(self, n: int) -> dict[str, str]:
        """The values of learner ``n``'s file."""
        return read_env_file(self.files / f"learner{n:02d}.env")

    def learner_env(self, n: int) -> dict[str, str]:
        """The environment of a learner's shell after `set -a; . ./learnerNN.env; set +a`, with their own EO_HOME."""
        env = clean_env(self.base / f"home-learner{n:02d}")
        env.update(self.learner(n))
        return env

    def instructor(self) -> Instructor:
        """The instructor's logins, read from their file (nothing is put in this process's environment)."""
        from effectively_once.kafka import client_settings

        values = read_env_file(Path(self.env["EO_HOME"]) / "instructor.env")
        return Instructor(values["EO_KAFKA_BOOTSTRAP"], client_settings(values["EO_KAFKA_CONFIG"]),
                          values["EO_POSTGRES_DSN"])


@dataclass
class Instructor:
    """The super user of both servers: the broker's address and login, PostgreSQL's superuser DSN."""

    bootstrap: str
    kafka: dict[str, str]
    dsn: str

    def admin(self):
        """An AdminClient logged in as the instructor."""
        from confluent_kafka.admin import AdminClient

        from effectively_once.kafka import quiet_logger

        return AdminClient({"bootstrap.servers": self.bootstrap, **self.kafka, "logger": quiet_logger()})

    def quotas(self):
        """A QuotaClient logged in as the instructor."""
        from effectively_once.stack.kafka_quotas import QuotaClient

        return QuotaClient(self.bootstrap, self.kafka["sasl.username"], self.kafka["sasl.password"])


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any client login, and ``EO_HOME`` set to ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["EO_HOME"] = str(home)
    return env


@contextmanager
def secured_room(learners: int, prefix: str = "eo-room-") -> Iterator[SecuredRoom]:
    """`up --secure --learners N` in a private EO_HOME and `workshop add-learners N`; `down --purge` at the end."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    room = SecuredRoom(base, clean_env(base / "instructor"))
    try:
        up = run_cli("up", "--backend", "embedded", "--secure", "--learners", str(learners), env=room.env,
                     timeout=600)
        assert up.returncode == 0, f"`up --secure` failed:\n{up.stdout}\n{up.stderr}"
        added = run_cli("workshop", "add-learners", str(learners), "--out", str(room.files), env=room.env)
        assert added.returncode == 0, added.stdout + added.stderr
        yield room
    finally:
        down = run_cli("down", "--purge", env=room.env)
        shutil.rmtree(base, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def start_demo(env: dict[str, str], messages: int = 10, timeout: float = 900.0, *extra: str) -> subprocess.Popen:
    """Start `demo --json --crash-at after_provider_call` in a learner's environment (not waited for)."""
    return subprocess.Popen([sys.executable, "-m", "effectively_once", "demo", "--json", "--crash-at",
                             "after_provider_call", "--messages", str(messages), "--timeout", str(timeout), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def finish_demo(proc: subprocess.Popen, timeout: float = 1800.0) -> dict:
    """Wait for a `demo --json` and return its report; fail with its output when it did not run."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"demo still running after {timeout:.0f} s:\n{stderr[-3000:]}") from None
    assert proc.returncode == 0, f"demo failed (exit {proc.returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def timed_demo(env: dict[str, str], messages: int = 10) -> tuple[float, dict]:
    """Run one demo to its end; (seconds, report)."""
    started = time.monotonic()
    report = finish_demo(start_demo(env, messages))
    return time.monotonic() - started, report


def charged_exactly_once(report: dict, messages: int = 10) -> bool:
    """Every message charged, none twice."""
    return (report["messages"] == report["charges"] == messages and report["duplicate_charges"] == 0
            and report["lost_charges"] == 0)


def load_average() -> str:
    """The machine's load averages (1, 5, 15 minutes), for the printed timings."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())
