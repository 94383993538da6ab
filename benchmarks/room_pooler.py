"""A room's demos on PostgreSQL's own limits, against the same demos through PgBouncer, side by side.

One secured stack, N learners (default 10). Three passes, each with every
learner running `demo --crash-at after_provider_call --messages 10` at once:

1. direct: each learner's file as `add-learners` wrote it (PostgreSQL with
   max_connections sized for the room, a CONNECTION LIMIT per role);
2. PgBouncer in session mode: the same files with the port of a PgBouncer in
   front of PostgreSQL (SCRAM pass-through from the roles' stored secrets);
3. PgBouncer in transaction mode, one learner: the mode that would let fewer
   server connections serve many clients.

It prints, for each pass, the room's time, the runs that failed, the peak of
PostgreSQL backends and of PostgreSQL's memory (PSS, plus PgBouncer's own),
and the ratio of the pooled room's time to the direct one's.

Needs the `pgbouncer` binary (Debian: `apt-get install pgbouncer`); without
it, it says so and exits 2.

    .venv/bin/python benchmarks/room_pooler.py [--learners 10]
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
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from effectively_once.connections import LEARNER_CONNECTION_LIMIT  # noqa: E402
from effectively_once.stack.embedded import PG_SYSTEM_USER  # noqa: E402
from effectively_once.stack.processes import free_port, port_open, stop_pid  # noqa: E402
from effectively_once.stack.record import StackRecord  # noqa: E402
from effectively_once.stack.secure import read_env_file  # noqa: E402

CLIENT_ENV = ("EO_BACKEND", "EO_NAMESPACE", "EO_KAFKA_BOOTSTRAP", "EO_KAFKA_CONFIG", "EO_POSTGRES_DSN")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "effectively_once", *args], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}")
    return result


def with_port(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    login, _, _server = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{login}@127.0.0.1:{port}"))


class Peaks(threading.Thread):
    """PostgreSQL's client backends and memory (PSS of the postmaster's tree, plus PgBouncer's), at their peak."""

    def __init__(self, dsn: str, postgres: psutil.Process, pooler: psutil.Process | None = None) -> None:
        super().__init__(daemon=True)
        self.dsn, self.postgres, self.pooler = dsn, postgres, pooler
        self.backends, self.memory_mb = 0, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.5):
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                                   " AND usename <> 'postgres'").fetchone()
                self.backends = max(self.backends, int(row[0]) if row else 0)
                processes = [self.postgres, *self.postgres.children(recursive=True)]
                if self.pooler is not None:
                    processes.append(self.pooler)
                total = 0
                for proc in processes:
                    try:
                        total += proc.memory_full_info().pss
                    except psutil.Error:
                        pass
                self.memory_mb = max(self.memory_mb, total / 2**20)


def run_room(envs: list[dict[str, str]], peaks: Peaks) -> tuple[float, list[str]]:
    """Every learner's demo at once; (seconds until the last one finished, what failed)."""
    peaks.start()
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "effectively_once", "demo", "--json", "--crash-at",
                               "after_provider_call", "--messages", "10", "--timeout", "900"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for env in envs]
    failures = []
    for env, proc in zip(envs, procs, strict=True):
        out, err = proc.communicate(timeout=3600)
        report = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 and out.strip() else None
        if report is None or report["charges"] != 10 or report["duplicate_charges"] or report["lost_charges"]:
            failures.append(f"{env['EO_NAMESPACE']}: {(err.strip().splitlines() or ['?'])[-1][:200]}")
    seconds = time.monotonic() - started
    peaks.stop.set()
    peaks.join(10)
    return seconds, failures


def start_pgbouncer(base: Path, superuser_dsn: str, pg_port: int, mode: str, learners: int) -> subprocess.Popen:
    """PgBouncer on a free port in front of PostgreSQL, every learner's SCRAM secret in its auth file."""
    import psycopg

    with psycopg.connect(superuser_dsn) as conn:
        secrets = conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolname ~ '^learner'").fetchall()
    folder = base / f"pgbouncer-{mode}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "userlist.txt").write_text("".join(f'"{name}" "{secret}"\n' for name, secret in secrets))
    port = free_port()
    (folder / "pgbouncer.ini").write_text(f"""[databases]
* = host=127.0.0.1 port={pg_port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {folder / 'userlist.txt'}
pool_mode = {mode}
max_client_conn = {learners * LEARNER_CONNECTION_LIMIT + 100}
default_pool_size = {LEARNER_CONNECTION_LIMIT}
max_db_connections = 0
ignore_startup_parameters = options,extra_float_digits
logfile = {folder / 'pgbouncer.log'}
""")
    for path in (folder, folder / "userlist.txt", folder / "pgbouncer.ini"):
        shutil.chown(path, PG_SYSTEM_USER, PG_SYSTEM_USER)
    for parent in folder.parents:
        parent.chmod(parent.stat().st_mode | 0o001)
    proc = subprocess.Popen(["pgbouncer", "-u", PG_SYSTEM_USER, str(folder / "pgbouncer.ini")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"PgBouncer did not start: {(folder / 'pgbouncer.log').read_text()[-2000:]}")
        time.sleep(0.1)
    proc.port = port  # type: ignore[attr-defined]
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, default=10)
    args = parser.parse_args(argv)
    if shutil.which("pgbouncer") is None:
        print("PgBouncer is not installed: `apt-get install pgbouncer` (Debian), then run this again.",
              file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="eo-bench-pooler-"))
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["EO_HOME"] = str(base / "instructor")
    bouncers: list[subprocess.Popen] = []
    try:
        cli("up", "--backend", "embedded", "--secure", "--learners", str(args.learners), env=env)
        cli("workshop", "add-learners", str(args.learners), "--out", str(base / "room"), env=env)
        record = StackRecord.from_json(json.loads((base / "instructor" / "stack.json").read_text()))
        superuser = read_env_file(base / "instructor" / "instructor.env")["EO_POSTGRES_DSN"]
        postgres = psutil.Process(record.pids["postgres"])
        pg_port = urlsplit(superuser).port or 5432
        files = sorted((base / "room").glob("learner*.env"))

        def learner_envs(port: int | None, only: int | None = None) -> list[dict[str, str]]:
            envs = []
            for i, path in enumerate(files[:only] if only else files):
                values = read_env_file(path)
                if port is not None:
                    values["EO_POSTGRES_DSN"] = with_port(values["EO_POSTGRES_DSN"], port)
                envs.append({**env, **values, "EO_HOME": str(base / f"home-{i}")})
            return envs

        print(f"{args.learners} learners, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
              flush=True)
        direct = Peaks(superuser, postgres)
        direct_s, direct_failed = run_room(learner_envs(None), direct)
        print(f"direct:             {direct_s:.0f} s, {len(direct_failed)} failed, {direct.backends} backends at the "
              f"peak, PostgreSQL {direct.memory_mb:.0f} MB", flush=True)

        session = start_pgbouncer(base, superuser, pg_port, "session", args.learners)
        bouncers.append(session)
        pooled = Peaks(superuser, postgres, psutil.Process(session.pid))
        pooled_s, pooled_failed = run_room(learner_envs(session.port), pooled)  # type: ignore[attr-defined]
        print(f"PgBouncer, session: {pooled_s:.0f} s, {len(pooled_failed)} failed, {pooled.backends} backends at "
              f"the peak, PostgreSQL and PgBouncer {pooled.memory_mb:.0f} MB", flush=True)

        transaction = start_pgbouncer(base, superuser, pg_port, "transaction", args.learners)
        bouncers.append(transaction)
        one = Peaks(superuser, postgres, psutil.Process(transaction.pid))
        one_s, one_failed = run_room(learner_envs(transaction.port, only=1), one)  # type: ignore[attr-defined]
        print(f"PgBouncer, transaction (one learner): {one_s:.0f} s, "
              + (f"FAILED: {one_failed[0]}" if one_failed else "charged exactly once"), flush=True)
        for failure in direct_failed + pooled_failed:
            print(f"  failed: {failure}")
        print(f"\nthe room through PgBouncer (session) against PostgreSQL's own limits: {pooled_s / direct_s:.2f}x "
              f"the time, {pooled.backends} against {direct.backends} backends, "
              f"{pooled.memory_mb:.0f} against {direct.memory_mb:.0f} MB")
        return 0
    finally:
        for bouncer in bouncers:
            stop_pid(bouncer.pid, timeout=10)
        subprocess.run([sys.executable, "-m", "effectively_once", "down", "--purge"], env=env, cwd=ROOT,
                       capture_output=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
