"""Apache Kafka's jars for the embedded broker: fetched once, checked, cached.

The jars (``kafka_2.13`` and its runtime dependencies, plus the log4j binding
that gives the broker a log file) are listed with their SHA-256 in
``kafka-jars.lock`` beside this module; ``tools/lock_kafka_jars.py`` writes it.
They are fetched with ``mvn`` when it is on PATH, else downloaded directly from
the repository named by ``EO_MAVEN_REPOSITORY`` (a Maven Central URL or a
mirror of it), and kept in a cache shared by every ``$EO_HOME``:
``$EO_JAR_CACHE``, default ``~/.cache/effectively_once/kafka-<version>``.
A jar whose checksum differs from the pinned one is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from effectively_once.progress import text_bar
from effectively_once.stack.kafka_settings import KAFKA_VERSION, SCALA_VERSION

LOCK_FILE = Path(__file__).with_name("kafka-jars.lock")
# What Maven is asked for; the lock file lists everything it brings.
ROOT_ARTIFACTS = (
    f"org.apache.kafka:kafka_{SCALA_VERSION}:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-tools:{KAFKA_VERSION}",  # kafka-transactions.sh (TransactionsCommand), KIP-664
    "org.apache.logging.log4j:log4j-slf4j-impl:2.25.5",
)
# Dependencies left out of a root artifact: kafka-tools brings Kafka Connect's runtime (jetty,
# jersey, 47 jars) for one tool that lists Connect plugins; TransactionsCommand needs none of it.
EXCLUSIONS = {
    f"org.apache.kafka:kafka-tools:{KAFKA_VERSION}": ("org.apache.kafka:connect-runtime",),
}
FALLBACK = "the `tansu` backend (EO_BACKEND=tansu) runs without Java or jars"


class JarsUnavailable(RuntimeError):
    """The jars are not cached and cannot be fetched; the message says what is missing."""


@dataclass(frozen=True)
class Jar:
    """One pinned jar: its Maven coordinate and SHA-256."""

    group: str
    artifact: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def coordinate(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    def repository_path(self) -> str:
        """Where the jar lies in a Maven repository, relative to its root."""
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.filename}"


def pinned_jars(lock_file: Path = LOCK_FILE) -> list[Jar]:
    """The jars the broker needs, as pinned in the lock file."""
    jars = []
    for line in lock_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        coordinate, sha256 = line.split()
        group, artifact, version = coordinate.split(":")
        jars.append(Jar(group, artifact, version, sha256))
    return jars


def cache_dir() -> Path:
    """Where the jars are kept: ``$EO_JAR_CACHE``, default under the user's cache directory."""
    explicit = os.environ.get("EO_JAR_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "effectively_once" / f"kafka-{KAFKA_VERSION}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(directory: Path) -> Path:
    """A marker recording that every jar in ``directory`` matched its checksum (re-hashing 45 MB costs 0.2 s)."""
    return directory / ".verified"


def missing_jars(directory: Path | None = None) -> list[Jar]:
    """The pinned jars that are absent from the cache (or, when unchecked, fail their checksum)."""
    directory = directory or cache_dir()
    jars = pinned_jars()
    marker = _verified(directory)
    if marker.exists() and marker.read_text() == LOCK_FILE.read_text():
        return [jar for jar in jars if not (directory / jar.filename).exists()]
    return [jar for jar in jars
            if not (directory / jar.filename).exists() or sha256_of(directory / jar.filename) != jar.sha256]


def cached() -> bool:
    """True when every pinned jar is in the cache with the right checksum."""
    return not missing_jars()


def classpath() -> str:
    """The broker's class path: every pinned jar in the cache."""
    directory = cache_dir()
    return os.pathsep.join(str(directory / jar.filename) for jar in pinned_jars())


# -- fetching ------------------------------------------------------------------------------
@contextlib.contextmanager
def _cache_lock(directory: Path) -> Iterator[None]:
    """One fetch at a time per cache (two notebooks starting at once share one download)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def fetch_method() -> str:
    """``mvn`` when Maven is on PATH, else ``direct`` (which needs EO_MAVEN_REPOSITORY)."""
    return "mvn" if shutil.which("mvn") else "direct"


def ensure_jars(progress: Callable[..., None] = print, bar: Callable[[int, int], None] | None = None) -> Path:
    """Make sure every pinned jar is cached and verified; fetch what is missing. Returns the cache."""
    directory = cache_dir()
    if not missing_jars(directory):
        return directory
    with _cache_lock(directory):
        missing = missing_jars(directory)
        if not missing:
            return directory
        method = fetch_method()
        progress(f"fetching Apache Kafka {KAFKA_VERSION}'s jars ({len(missing)} of them) once, with "
                 f"{'mvn' if method == 'mvn' else 'a direct download'}, into {directory} ...")
        bar = bar or text_bar("kafka jars")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            staging = Path(tmp)
            if method == "mvn":
                _fetch_with_mvn(staging, missing, bar)
            else:
                _fetch_direct(staging, missing, bar)
            for jar in missing:
                got = staging / jar.filename
                if not got.exists():
                    raise JarsUnavailable(f"{jar.coordinate} was not fetched; {FALLBACK}.")
                actual = sha256_of(got)
                if actual != jar.sha256:
                    raise JarsUnavailable(f"{jar.filename} does not match its pinned SHA-256 (got {actual[:12]}…, "
                                          f"pinned {jar.sha256[:12]}…), so it was not used; {FALLBACK}.")
                os.replace(got, directory / jar.filename)
        _verified(directory).write_text(LOCK_FILE.read_text())
        progress(f"Kafka's jars are cached ({time.monotonic() - started:.1f} s).")
    return directory


def _maven_settings(staging: Path) -> list[str]:
    """``mvn`` arguments that route every download through EO_MAVEN_REPOSITORY, when it is set."""
    mirror = os.environ.get("EO_MAVEN_REPOSITORY")
    if not mirror:
        return []
    settings = staging / "settings.xml"
    settings.write_text(
        "<settings><mirrors><mirror><id>eo-mirror</id><mirrorOf>*</mirrorOf>"
        f"<url>{mirror}</url></mirror></mirrors></settings>")
    return ["-s", str(settings)]


def _fetch_with_mvn(staging: Path, missing: list[Jar], bar: Callable[[int, int], None]) -> None:
    def exclusions(coordinate: str) -> str:
        excluded = "".join(f"<exclusion><groupId>{g}</groupId><artifactId>{a}</artifactId></exclusion>"
                           for g, a in (e.split(":") for e in EXCLUSIONS.get(coordinate, ())))
        return f"<exclusions>{excluded}</exclusions>" if excluded else ""

    deps = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version>"
        f"{exclusions(f'{g}:{a}:{v}')}</dependency>"
        for g, a, v in (c.split(":") for c in ROOT_ARTIFACTS))
    project = staging / "project"
    project.mkdir()
    (project / "pom.xml").write_text(
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>effectively-once</groupId><artifactId>kafka-broker-jars</artifactId><version>1</version>"
        f"<packaging>pom</packaging><dependencies>{deps}</dependencies></project>")
    cmd = ["mvn", "-B", "-Dstyle.color=never", *_maven_settings(staging), "-f", str(project / "pom.xml"),
           "dependency:copy-dependencies", f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    wanted = {jar.filename for jar in missing}
    done: set[str] = set()
    bar(0, len(wanted))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-15:]
        # "Downloaded from central: .../kafka-clients-4.4.0.jar (…)" or "Copying kafka-clients-4.4.0.jar to …"
        for name in re.findall(r"([\w.\-]+\.jar)\b", line):
            if name in wanted and name not in done and ("Downloaded" in line or "Copying" in line):
                done.add(name)
                bar(len(done), len(wanted))
    if proc.wait() != 0:
        reason = next((t for t in reversed(tail) if "ERROR" in t), tail[-1] if tail else "no output")
        raise JarsUnavailable(f"mvn could not fetch Apache Kafka's jars ({reason.strip()[:300]}); {FALLBACK}.")
    if len(done) < len(wanted):
        bar(len(wanted), len(wanted))


def _fetch_direct(staging: Path, missing: list[Jar], bar: Callable[[int, int], None]) -> None:
    import urllib.error
    import urllib.request

    repository = os.environ.get("EO_MAVEN_REPOSITORY", "").rstrip("/")
    if not repository:
        raise JarsUnavailable(
            "Apache Kafka's jars are not cached and cannot be fetched: `mvn` is not on PATH and EO_MAVEN_REPOSITORY "
            f"(the URL of Maven Central or a mirror of it) is not set; install Maven or set it, or use {FALLBACK}.")
    bar(0, len(missing))
    for index, jar in enumerate(missing, 1):
        url = f"{repository}/{jar.repository_path()}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(staging / jar.filename, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as exc:
            raise JarsUnavailable(f"downloading {jar.filename} from {repository} failed ({exc}); {FALLBACK}.") from exc
        bar(index, len(missing))
