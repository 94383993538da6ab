"""Apache Kafka's jars for the embedded broker: fetched once, checked, cached.

The jars (``kafka_2.13`` and its runtime dependencies, plus the log4j binding
that gives the broker a log file) are listed with their SHA-256 in
``kafka-jars.lock`` beside this module; ``tools/lock_kafka_jars.py`` writes it.
They are kept in a cache shared by every ``$EO_HOME``: ``$EO_JAR_CACHE``,
default ``~/.cache/effectively_once/kafka-<version>``. A jar whose checksum
differs from the pinned one is never used.

How they are fetched (``fetch_routes``): with ``jgo``, a pure-Python Maven
client installed with the course, from its default repository (Maven
Central) or from ``EO_MAVEN_REPOSITORY`` when that is set; then, if jgo could
not fetch them all and ``mvn`` is on PATH, with ``mvn`` (through
``EO_MAVEN_REPOSITORY`` when set, else as Maven's own settings say).
``EO_JAR_FETCH=jgo`` or ``EO_JAR_FETCH=mvn`` keeps only that one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
FALLBACK = "the `tansu` backend (EO_BACKEND=tansu), which runs without Java or jars"


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


FETCH_TOOLS = ("jgo", "mvn")
# jgo's and requests' own settings decide the rest (proxies, CA bundle); a dead repository must not hang
# a learner's first `up` for minutes, one jar after another.
JGO_TIMEOUT_S = 30
JGO_RETRIES = 1  # per jar: a connection that drops once mid-download (a café's wifi) is not a refusal


@dataclass(frozen=True)
class FetchRoute:
    """One way to fetch the jars: a tool and the repository it asks (None: the tool's own default)."""

    tool: Literal["jgo", "mvn"]
    repository: str | None = None

    def describe(self) -> str:
        if self.repository:
            return f"{self.tool} from {self.repository} (EO_MAVEN_REPOSITORY)"
        return f"{self.tool} from {'Maven Central' if self.tool == 'jgo' else 'the repositories Maven is set up with'}"


def jgo_installed() -> bool:
    """Whether the ``jgo`` package (the pure-Python Maven client ``make setup`` installs) can be imported."""
    try:
        return importlib.util.find_spec("jgo") is not None
    except ValueError:  # a module set to None in sys.modules: import would fail
        return False


def maven_repository(env: Mapping[str, str] | None = None) -> str | None:
    """The repository named by ``EO_MAVEN_REPOSITORY`` (Maven Central's URL or a mirror's), or None."""
    env = os.environ if env is None else env
    return env.get("EO_MAVEN_REPOSITORY", "").strip().rstrip("/") or None


def fetch_routes(env: Mapping[str, str] | None = None, jgo: bool | None = None,
                 mvn: bool | None = None) -> list[FetchRoute]:
    """The ways to fetch the jars on this machine, in the order they are tried; empty when there is none.

    jgo comes first: it is a dependency of the course, so a machine with Python and pip has it; it
    needs neither Maven nor a JDK; it downloads exactly the 47 pinned jars (the lock file is already
    the resolved graph); and it leaves nothing behind but the cache (benchmarks/jar_fetch.py times it
    against mvn into an empty local repository). mvn follows, when it is on PATH, for the machine whose
    network reaches only a company mirror that Maven's own settings name. ``EO_MAVEN_REPOSITORY`` is
    the repository both ask when it is set. ``EO_JAR_FETCH=jgo`` or ``mvn`` keeps only that tool.
    ``jgo`` and ``mvn`` say whether each is there (default: look).
    """
    env = os.environ if env is None else env
    repository = maven_repository(env)
    asked = env.get("EO_JAR_FETCH", "").strip()
    if asked and asked not in FETCH_TOOLS:
        raise JarsUnavailable(f"EO_JAR_FETCH is {asked!r}, which is not a way to fetch jars: set it to "
                              f"{' or '.join(FETCH_TOOLS)}, or unset it to try both")
    there = {"jgo": jgo_installed() if jgo is None else jgo,
             "mvn": shutil.which("mvn") is not None if mvn is None else mvn}
    tools = [asked] if asked else list(FETCH_TOOLS)
    return [FetchRoute(tool, repository) for tool in tools if there[tool]]  # type: ignore[arg-type]


def why_no_route(env: Mapping[str, str] | None = None) -> str:
    """Why ``fetch_routes`` is empty and what fixes it, as a clause."""
    env = os.environ if env is None else env
    asked = env.get("EO_JAR_FETCH", "").strip()
    if asked == "mvn":
        return "EO_JAR_FETCH=mvn asks for `mvn`, which is not on PATH; install Maven, or unset EO_JAR_FETCH"
    if asked == "jgo":
        return "EO_JAR_FETCH=jgo asks for the jgo package, which is not installed; run `make setup`"
    return "the jgo package is not installed and `mvn` is not on PATH; run `make setup` (it installs jgo)"


def ensure_jars(progress: Callable[..., None] = print, bar: Callable[[int, int], None] | None = None) -> Path:
    """Make sure every pinned jar is cached and verified; fetch what is missing. Returns the cache.

    Each route of ``fetch_routes`` is tried in turn for the jars still missing; a jar that does not
    match its pinned SHA-256 is dropped. Raises ``JarsUnavailable`` (one sentence and the fix) when
    the jars cannot all be had.
    """
    directory = cache_dir()
    if not missing_jars(directory):
        return directory
    with _cache_lock(directory):
        missing = missing_jars(directory)
        if not missing:
            return directory
        routes = fetch_routes()
        if not routes:
            raise JarsUnavailable(f"Apache Kafka's jars are not cached and nothing here can fetch them: "
                                  f"{why_no_route()}, or use {FALLBACK}.")
        progress(f"fetching Apache Kafka {KAFKA_VERSION}'s jars ({len(missing)} of them) once, with "
                 f"{routes[0].describe()}, into {directory} ...")
        bar = bar or text_bar("kafka jars")
        started = time.monotonic()
        failures: list[str] = []
        for route in routes:
            missing = missing_jars(directory)
            if not missing:
                break
            if failures:
                progress(f"{failures[-1]}; trying {route.describe()} ...")
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                staging = Path(tmp)
                problems = []
                try:
                    FETCHERS[route.tool](route, staging, missing, bar)
                except JarsUnavailable as exc:
                    problems.append(str(exc))
                else:
                    absent = [jar.filename for jar in missing if not (staging / jar.filename).exists()]
                    if absent:
                        problems.append(f"it did not bring {_some(absent)}")
                # What arrived and matches is kept, even from a fetch that stopped half way.
                refused = _keep_verified(staging, missing, directory)
                if refused:
                    problems.insert(0, _some(refused))
                if problems:
                    failures.append(f"{route.describe()}: {', '.join(problems)}")
        missing = missing_jars(directory)
        if missing:
            raise JarsUnavailable(
                f"Apache Kafka's jars could not all be fetched ({len(missing)} of {len(pinned_jars())} missing; "
                f"{'; '.join(failures) or 'no error reported'}): check the network connection, or set "
                f"EO_MAVEN_REPOSITORY to a reachable mirror of Maven Central, or use {FALLBACK}.")
        _verified(directory).write_text(LOCK_FILE.read_text())
        progress(f"Kafka's jars are cached ({time.monotonic() - started:.1f} s).")
    return directory


def _some(items: list[str]) -> str:
    """The first item, and how many more there are."""
    return items[0] + (f" (and {len(items) - 1} more)" if len(items) > 1 else "")


def _keep_verified(staging: Path, missing: list[Jar], directory: Path) -> list[str]:
    """Move each fetched jar that matches its pinned SHA-256 into the cache; why each other one was refused."""
    refused = []
    for jar in missing:
        got = staging / jar.filename
        if not got.exists():
            continue
        actual = sha256_of(got)
        if actual != jar.sha256:
            got.unlink()
            refused.append(f"{jar.filename} does not match its pinned SHA-256 (got {actual[:12]}…, "
                           f"pinned {jar.sha256[:12]}…), so it was not used")
            continue
        os.replace(got, directory / jar.filename)
    return refused


def jgo_context(repository_cache: Path, repository: str | None) -> Any:
    """jgo's Maven client (a ``jgo.maven.MavenContext``) that asks ``repository`` and keeps what it downloads
    in ``repository_cache``; with ``repository`` None it asks jgo's own default, Maven Central.

    It reads no ``~/.m2`` and no jgo settings file, so the learner's setup cannot change what is fetched.
    """
    from jgo.maven import MavenContext, PythonResolver

    return MavenContext(resolver=PythonResolver(), repo_cache=repository_cache, local_repos=[],
                        remote_repos={"EO_MAVEN_REPOSITORY": repository} if repository else None,
                        timeout=JGO_TIMEOUT_S)


def _fetch_with_jgo(route: FetchRoute, staging: Path, missing: list[Jar], bar: Callable[[int, int], None]) -> None:
    """Download each missing jar with jgo's pure-Python Maven client, into ``staging``.

    Its Maven repository cache is a folder of ``staging``, removed with it: nothing is written to
    ``~/.m2`` or elsewhere in the learner's home. A jar whose download breaks off is tried once more.
    """
    import requests

    context = jgo_context(staging / "repository", route.repository)
    where = ", ".join(context.remote_repos.values())
    bar(0, len(missing))
    for index, jar in enumerate(missing, 1):
        artifact = context.project(jar.group, jar.artifact).at_version(jar.version).artifact()
        for attempt in range(1 + JGO_RETRIES):
            try:
                path = artifact.resolve()
                break
            except requests.RequestException as exc:
                # jgo writes straight into its cache, so a download cut short would be taken as complete.
                if artifact.cached_path is not None:
                    artifact.cached_path.unlink(missing_ok=True)
                if attempt == JGO_RETRIES:
                    raise JarsUnavailable(_jgo_failure(exc, jar, where)) from exc
            except RuntimeError as exc:  # jgo: "Artifact … not found in remote repositories …"
                raise JarsUnavailable(f"{jar.filename} was not found at {where}") from exc
        os.replace(path, staging / jar.filename)
        bar(index, len(missing))


def _jgo_failure(exc: Exception, jar: Jar, where: str) -> str:
    """What went wrong with a download, in a few words (a requests error's text runs to several lines)."""
    import requests

    if isinstance(exc, requests.ConnectionError):
        errno = re.search(r"\[Errno [^\]]+\][^'\")]*", str(exc))
        return f"cannot connect to {where}" + (f" ({errno.group(0).strip()})" if errno else "")
    if isinstance(exc, requests.Timeout):
        return f"{where} did not answer within {JGO_TIMEOUT_S} s"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"the download of {jar.filename} from {where} broke off ({1 + JGO_RETRIES} tries)"
    return f"downloading {jar.filename} from {where} failed ({type(exc).__name__})"


def _maven_settings(staging: Path, mirror: str | None) -> list[str]:
    """``mvn`` arguments that route every download through ``mirror`` (EO_MAVEN_REPOSITORY), when it is set."""
    if not mirror:
        return []
    settings = staging / "settings.xml"
    settings.write_text(
        "<settings><mirrors><mirror><id>eo-mirror</id><mirrorOf>*</mirrorOf>"
        f"<url>{mirror}</url></mirror></mirrors></settings>")
    return ["-s", str(settings)]


def _fetch_with_mvn(route: FetchRoute, staging: Path, missing: list[Jar], bar: Callable[[int, int], None],
                    local_repository: Path | None = None) -> None:
    """Fetch the root artifacts and their runtime graph with ``mvn dependency:copy-dependencies`` into ``staging``.

    ``local_repository`` replaces Maven's own (``~/.m2/repository``), e.g. an empty one to time a cold fetch.
    """
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
    local = [f"-Dmaven.repo.local={local_repository}"] if local_repository else []
    cmd = ["mvn", "-B", "-Dstyle.color=never", *_maven_settings(staging, route.repository), *local,
           "-f", str(project / "pom.xml"),
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
        raise JarsUnavailable(f"mvn failed ({reason.strip()[:300]})")
    if len(done) < len(wanted):
        bar(len(wanted), len(wanted))


FETCHERS: dict[str, Callable[[FetchRoute, Path, list[Jar], Callable[[int, int], None]], None]] = {
    "jgo": _fetch_with_jgo, "mvn": _fetch_with_mvn}
