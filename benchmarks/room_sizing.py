"""What one learner costs a shared machine: memory, PostgreSQL connections and CPU, for notebooks 04 and 05.

It starts a secured stack (``up --backend embedded --secure``) in a private
EO_HOME, adds one learner, and runs each notebook as that learner would (their
``.env`` file loaded, their own EO_HOME, the external backend), with nbclient.
Every half second it samples:

- the learner's side: the kernel and every process it starts (provider,
  consumers): proportional set size (PSS) summed, and CPU seconds;
- the servers' side: the broker's JVM and PostgreSQL (postmaster and every
  backend): PSS and CPU seconds, against the same servers idle;
- PostgreSQL sessions of the learner's role, and its CONNECTION LIMIT.

It prints one row per notebook, the idle stack beside it, and what N learners
would need (the idle stack once, plus N times a learner's peak), so an
instructor can size a JupyterHub server. A peak of connections above the
limit would mean the limit is wrong: the run then fails.

    .venv/bin/python benchmarks/room_sizing.py [04 05] [--learners 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from effectively_once.connections import LEARNER_CONNECTION_LIMIT  # noqa: E402
from effectively_once.stack.record import StackRecord  # noqa: E402
from effectively_once.stack.secure import read_env_file  # noqa: E402

CLIENT_ENV = ("EO_BACKEND", "EO_NAMESPACE", "EO_KAFKA_BOOTSTRAP", "EO_KAFKA_CONFIG", "EO_POSTGRES_DSN")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "effectively_once", *args], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}")
    return result


def pss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for proc in processes:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def cpu_seconds(proc: psutil.Process, with_children: bool = True) -> float:
    """User and system CPU of ``proc``, its reaped children, and (``with_children``) its live ones."""
    try:
        times = proc.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        if with_children:
            for child in proc.children(recursive=True):
                try:
                    t = child.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


@dataclass
class Sample:
    """The peaks and totals of one notebook run."""

    learner_pss: float = 0.0
    server_pss: float = 0.0
    connections: int = 0
    learner_cpu: float = 0.0
    server_cpu: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class Sampler(threading.Thread):
    def __init__(self, broker: psutil.Process, postgres: psutil.Process, dsn: str, role: str) -> None:
        super().__init__(daemon=True)
        self.broker, self.postgres, self.dsn, self.role = broker, postgres, dsn, role
        self.sample = Sample()
        self.stop = threading.Event()

    def servers(self) -> list[psutil.Process]:
        return [self.broker, self.postgres, *self.postgres.children(recursive=True)]

    def run(self) -> None:
        import psycopg

        me = psutil.Process()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.5):
                learner = me.children(recursive=True)
                self.sample.learner_pss = max(self.sample.learner_pss, pss_mb(learner))
                self.sample.server_pss = max(self.sample.server_pss, pss_mb(self.servers()))
                used = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                                    (self.role,)).fetchone()
                self.sample.connections = max(self.sample.connections, int(used[0]) if used else 0)


def run_notebook(path: Path, learner_env: dict[str, str], sampler: Sampler) -> Sample:
    """Execute ``path`` as the learner; the sampler's peaks, and the CPU both sides spent."""
    nb = nbformat.read(str(path), as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(learner_env)  # the kernel inherits the learner's shell
    me = psutil.Process()
    server_cpu = cpu_seconds(sampler.broker) + cpu_seconds(sampler.postgres)
    learner_cpu = cpu_seconds(me, with_children=False) - (me.cpu_times().user + me.cpu_times().system)
    started = time.monotonic()
    sampler.start()
    try:
        NotebookClient(nb, timeout=1800, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as exc:  # the row says the notebook failed, and why
        sampler.sample.errors.append(str(exc).strip().splitlines()[-1][:300])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        sampler.stop.set()
        sampler.join(10)
    sample = sampler.sample
    sample.seconds = time.monotonic() - started
    sample.learner_cpu = cpu_seconds(me, with_children=False) - (me.cpu_times().user + me.cpu_times().system) \
        - learner_cpu
    sample.server_cpu = cpu_seconds(sampler.broker) + cpu_seconds(sampler.postgres) - server_cpu
    return sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=["04", "05"], help="notebook numbers (default: 04 05)")
    parser.add_argument("--learners", type=int, default=30, help="the room to size for (default: 30)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="eo-bench-room-"))
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["EO_HOME"] = str(base / "instructor")
    try:
        cli("up", "--backend", "embedded", "--secure", env=env)
        cli("workshop", "add-learners", "1", "--out", str(base / "room"), env=env)
        record = StackRecord.from_json(json.loads((base / "instructor" / "stack.json").read_text()))
        instructor = read_env_file(base / "instructor" / "instructor.env")
        learner = read_env_file(base / "room" / "learner01.env")
        learner_env = {**env, **learner, "EO_HOME": str(base / "learner01")}
        broker, postgres = psutil.Process(record.pids["broker"]), psutil.Process(record.pids["postgres"])
        idle = Sampler(broker, postgres, instructor["EO_POSTGRES_DSN"], "learner01")
        idle_pss = pss_mb(idle.servers())
        print(f"idle secured stack: {idle_pss:.0f} MB (broker and PostgreSQL, PSS); load average "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        rows = []
        for name in args.names:
            path = next((ROOT / "notebooks").glob(f"{name}_*.ipynb"))
            sample = run_notebook(path, learner_env, Sampler(broker, postgres, instructor["EO_POSTGRES_DSN"],
                                                             "learner01"))
            rows.append((path.stem, sample))
            print(f"{path.stem}: {sample.seconds:.0f} s; learner {sample.learner_pss:.0f} MB peak, "
                  f"{sample.learner_cpu:.0f} CPU s; servers +{sample.server_pss - idle_pss:.0f} MB peak, "
                  f"{sample.server_cpu:.0f} CPU s; {sample.connections} PostgreSQL connections at the peak "
                  f"(limit {LEARNER_CONNECTION_LIMIT})" + (f"; FAILED: {sample.errors[0]}" if sample.errors else ""),
                  flush=True)
        print("\n| notebook | run (s) | learner's processes, peak (MB) | servers' share, peak (MB) | "
              "CPU (s): learner + servers | PostgreSQL connections, peak |")
        print("|:---|---:|---:|---:|---:|---:|")
        for stem, s in rows:
            print(f"| `{stem}` | {s.seconds:.0f} | {s.learner_pss:.0f} | {max(0.0, s.server_pss - idle_pss):.0f} | "
                  f"{s.learner_cpu:.0f} + {s.server_cpu:.0f} | {s.connections} |")
        worst_mb = max(s.learner_pss + max(0.0, s.server_pss - idle_pss) for _, s in rows)
        worst_cpu = max((s.learner_cpu + s.server_cpu) / s.seconds for _, s in rows)
        print(f"\n{args.learners} learners at their peak at once: {idle_pss + args.learners * worst_mb:.0f} MB "
              f"(the idle stack {idle_pss:.0f} MB + {args.learners} x {worst_mb:.0f} MB), "
              f"{args.learners * LEARNER_CONNECTION_LIMIT} PostgreSQL connections at most, and "
              f"{args.learners * worst_cpu:.1f} cores busy while every learner runs a cell "
              f"({worst_cpu:.2f} of a core each, averaged over a Run All)")
        return 1 if any(s.errors for _, s in rows) else 0
    finally:
        subprocess.run([sys.executable, "-m", "effectively_once", "down", "--purge"], env=env, cwd=ROOT,
                       capture_output=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
