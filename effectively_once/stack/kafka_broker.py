"""Apache Kafka as our own child process: one KRaft node (broker and controller) in a JVM.

The node keeps its log under ``root`` (the ``up`` stack's root is
``$EO_HOME/stack``, so topics and records survive ``down`` and ``up``). Its
ports are recorded in ``root/ports.json`` and reused on the next start, so the
controller quorum the log was formatted with stays valid. ``KafkaNode`` is
what the node is (its ``server.properties``, its format and start commands);
the docker backend runs the same node in a container (``docker.py``).
"""

from __future__ import annotations

import base64
import json
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from effectively_once import runs
from effectively_once.lifetime import SIGKILL
from effectively_once.stack import jars
from effectively_once.stack.java import JavaRuntime, find_java
from effectively_once.stack.kafka_settings import BROKER_SETTINGS, HEAP_OPTS, KAFKA_VERSION
from effectively_once.stack.processes import free_port, port_open, stop_pid

LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:eo.kafka.log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
"""

# The JVM flags Kafka's own start script uses, minus the GC log.
JVM_FLAGS = ["-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
             "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true"]


# The instructor of a secured stack (``up --secure``): the one super user of its broker.
INSTRUCTOR = "instructor"
SCRAM_MECHANISM = "SCRAM-SHA-512"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def scram_client_settings(username: str, password: str) -> dict[str, str]:
    """The librdkafka settings of a client that logs in to the secured broker as ``username``."""
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": username, "sasl.password": password}


def secured_properties(port: int, controller_port: int, password: str) -> dict[str, str]:
    """The listener settings of a secured node: SASL/SCRAM for clients, ACLs, the instructor as super user.

    Clients (and the node itself, as inter-broker traffic) log in with SCRAM on
    the client listener. The controller listener takes SASL/PLAIN with one
    static user, the instructor: SCRAM credentials live in the metadata log,
    which the controller must serve before it could check them.
    """
    plain_login = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
                   f'username="{INSTRUCTOR}" password="{password}" user_{INSTRUCTOR}="{password}";')
    scram_login = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
                   f'username="{INSTRUCTOR}" password="{password}";')
    return {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain_login,
        f"listener.name.sasl_plaintext.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": scram_login,
        "authorizer.class.name": AUTHORIZER,
        "super.users": f"User:{INSTRUCTOR}",
        "allow.everyone.if.no.acl.found": "false",
    }


class BrokerStartError(RuntimeError):
    """The broker did not start; the message names its log file."""


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64, as `kafka-storage random-uuid` prints.

    Like Kafka's own ``Uuid.randomUuid()``, never one that starts with "-": a
    command line would read it as an option (1 id in 64 would).
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


# What a container runs the node with: the image's own Java and Kafka's jars, where both the
# official apache/kafka image and tools/build_images.py put them. Java expands the wildcard.
IMAGE_JAVA = "java"
IMAGE_CLASSPATH = "/opt/kafka/libs/*"


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node (broker and controller): its ``server.properties`` and the commands that run it.

    Both backends run exactly this: embedded with the Java it found and the
    cached jars, docker in a container with the image's Java and
    ``/opt/kafka/libs``, ``root`` mounted at the same path. The one
    difference is ``bind_host``: a container must listen on every interface
    of its own network for its published port to reach it, so it binds
    0.0.0.0 where embedded binds 127.0.0.1 (the published port itself is on
    the host's 127.0.0.1 only).
    """

    root: Path
    port: int
    controller_port: int
    bind_host: str = "127.0.0.1"
    # The instructor's password on a secured node (``up --secure``); None for the open one.
    instructor_password: str | None = None

    @property
    def config_file(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def properties(self) -> dict[str, str]:
        """This node's ``server.properties``: where it listens and keeps its log, plus the shared settings."""
        settings = {
            "node.id": "1",
            "process.roles": "broker,controller",
            "listeners": f"PLAINTEXT://{self.bind_host}:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.data_dir),
            **BROKER_SETTINGS,
        }
        if self.instructor_password is not None:
            settings.update(secured_properties(self.port, self.controller_port, self.instructor_password))
        return settings

    def write_config(self) -> None:
        """Write ``server.properties`` (owner-only: a secured node's holds a password) and the log configuration."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.touch(mode=0o600)
        self.config_file.write_text("".join(f"{key}={value}\n" for key, value in self.properties().items()))
        self.log4j_file.write_text(LOG4J)

    def formatted(self) -> bool:
        """True once the log directory was formatted (the node then starts on its log)."""
        return (self.data_dir / "meta.properties").exists()

    def java_command(self, java: str, classpath: str, main_class: str, *args: str,
                     heap: str = HEAP_OPTS) -> list[str]:
        """``java`` running ``main_class`` with Kafka's start-script flags and this node's log configuration."""
        return [java, *heap.split(), *JVM_FLAGS, f"-Deo.kafka.log={self.log_path}",
                f"-Dlog4j2.configurationFile={self.log4j_file}", "-cp", classpath, main_class, *args]

    def format_command(self, java: str, classpath: str, cluster: str) -> list[str]:
        """Format the log directory for cluster ``cluster`` (run once, before the first start)."""
        # A secured node is formatted with the instructor's SCRAM credential (KIP-900), so
        # the first client, and the node itself, can log in before any user was created.
        scram = [] if self.instructor_password is None else \
            ["--add-scram", f"{SCRAM_MECHANISM}=[name={INSTRUCTOR},password={self.instructor_password}]"]
        return self.java_command(java, classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster}",
                                 "--config", str(self.config_file), *scram, heap="-Xmx256m")

    def start_command(self, java: str, classpath: str) -> list[str]:
        """Start the node on its ``server.properties``."""
        return self.java_command(java, classpath, "kafka.Kafka", str(self.config_file))

    def container_command(self, cluster: str) -> list[str]:
        """What a container runs: format on its first start only, then start; the image's Java and jars."""
        format_it = shlex.join(self.format_command(IMAGE_JAVA, IMAGE_CLASSPATH, cluster))
        start_it = shlex.join(self.start_command(IMAGE_JAVA, IMAGE_CLASSPATH))
        marker = shlex.quote(str(self.data_dir / "meta.properties"))
        return ["sh", "-c", f"set -e\ntest -f {marker} || {format_it}\nexec {start_it}\n"]


def choose_ports(root: Path, port: int = 0, controller_port: int = 0) -> tuple[int, int]:
    """The node's (client, controller) ports: the ones recorded in ``root/ports.json`` when both are free.

    Reusing them keeps the controller quorum the log was formatted with valid.
    """
    record = root / "ports.json"
    root.mkdir(parents=True, exist_ok=True)
    if record.exists() and not port and not controller_port:
        saved = json.loads(record.read_text())
        if not port_open("127.0.0.1", saved["broker"]) and not port_open("127.0.0.1", saved["controller"]):
            port, controller_port = saved["broker"], saved["controller"]
    port = port or free_port()
    controller_port = controller_port or free_port()
    record.write_text(json.dumps({"broker": port, "controller": controller_port}))
    return port, controller_port


@dataclass
class KafkaBroker:
    """One Apache Kafka KRaft node on 127.0.0.1, run by ``java`` from the cached jars."""

    root: Path
    java: JavaRuntime | None = None
    port: int = 0
    controller_port: int = 0
    process: subprocess.Popen | None = None
    # The instructor's password on a secured node (``up --secure``); None for the open one.
    instructor_password: str | None = None
    started_seconds: dict[str, float] = field(default_factory=dict)

    version = KAFKA_VERSION
    name = f"Apache Kafka {KAFKA_VERSION} (KRaft, a JVM)"
    role = "broker"  # what the runs' records and the stack's pids call its process

    @property
    def log_path(self) -> Path:
        return self.node.log_path

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def node(self) -> KafkaNode:
        """The node this broker runs (its ports once chosen)."""
        return KafkaNode(self.root, self.port, self.controller_port, instructor_password=self.instructor_password)

    def client_settings(self) -> dict[str, str]:
        """What a client adds to ``bootstrap.servers`` to reach this node: the instructor's login, or nothing."""
        if self.instructor_password is None:
            return {}
        return scram_client_settings(INSTRUCTOR, self.instructor_password)

    def _choose_ports(self) -> None:
        self.port, self.controller_port = choose_ports(self.root, self.port, self.controller_port)

    def properties(self) -> dict[str, str]:
        """This node's ``server.properties`` (see ``KafkaNode.properties``)."""
        return self.node.properties()

    def _java(self, main_class: str, *args: str, heap: str = HEAP_OPTS) -> list[str]:
        assert self.java is not None
        return self.node.java_command(self.java.path, jars.classpath(), main_class, *args, heap=heap)

    def prepare(self) -> None:
        """Write the configuration and, on the first start only, format the log directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.java = self.java or find_java()
        self._choose_ports()
        node = self.node
        node.write_config()
        if node.formatted():
            return
        started = time.monotonic()
        result = subprocess.run(node.format_command(self.java.path, jars.classpath(), cluster_id()),
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            raise BrokerStartError(f"formatting Kafka's log directory failed: {result.stderr.strip()[-500:]}")
        self.started_seconds["format"] = time.monotonic() - started

    def start(self, timeout: float = 120.0, progress: Callable[..., None] = lambda *_: None) -> None:
        """Start the JVM and wait until the broker answers a metadata request."""
        self.prepare()
        assert self.java is not None
        started = time.monotonic()
        with open(self.root / "stdout.log", "ab") as out:
            # Killed outright when its owner dies: Kafka recovers its log from an unclean shutdown.
            self.process = runs.start_process(
                self.role, self.node.start_command(self.java.path, jars.classpath()), die_signal=SIGKILL,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                runs.process_ended(self.role, self.process)
                raise BrokerStartError(
                    f"Apache Kafka exited with code {self.process.returncode} while starting; "
                    f"see {self.log_path} (and {self.root / 'stdout.log'}).")
            if port_open("127.0.0.1", self.port) and answers_metadata(self.bootstrap, self.client_settings()):
                self.started_seconds["start"] = time.monotonic() - started
                return
            time.sleep(0.1)
        self.stop()
        raise BrokerStartError(f"Apache Kafka did not answer a metadata request within {timeout:.0f} s; "
                               f"see its log, {self.log_path}.")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown flushes the log), then SIGKILL after 30 s."""
        if self.process is not None:
            stop_pid(self.process.pid, signal.SIGTERM, timeout=30)
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            runs.process_ended(self.role, self.process)


def answers_metadata(bootstrap: str, config: dict[str, str] | None = None, timeout: float = 2.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request naming at least one broker.

    ``config`` adds client settings (the instructor's login on a secured node).
    """
    from effectively_once.kafka import admin_client

    try:
        md = admin_client(bootstrap, config).list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(md.brokers)
