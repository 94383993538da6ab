"""Kafka's jars for a learner with Python and pip only: jgo fetches them, mvn is optional, the lock decides.

The order of the ways to fetch (``fetch_routes``) and the refusals are checked
without the network: a refusal points jgo at a port of 127.0.0.1 where nothing
listens. tests/integration/test_jar_fetch.py fetches from Maven Central itself, with
no ``mvn`` and no ``java`` on PATH, into an empty cache, and starts Apache
Kafka on it.
"""

from __future__ import annotations

import http.server
import sys
import threading
import time
from pathlib import Path

import pytest

from effectively_once import cli
from effectively_once import stack as stack_mod
from effectively_once.stack import jars
from tests.conftest import closed_port

MIRROR = "https://mirror.invalid/maven2"


@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    """An empty private jar cache (the shared one is never touched)."""
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("EO_JAR_CACHE", str(cache))
    monkeypatch.delenv("EO_MAVEN_REPOSITORY", raising=False)
    monkeypatch.delenv("EO_JAR_FETCH", raising=False)
    monkeypatch.delenv("EO_BACKEND", raising=False)
    assert not jars.cached()
    return cache


def no_docker() -> None:
    if stack_mod.docker_available()[0]:
        pytest.skip("Docker answers here, so auto picks docker before it looks at Kafka's jars")


@pytest.fixture
def flaky_mirror():
    """A Maven-layout server on 127.0.0.1 for the pinned jars that breaks off its first answer for one jar.

    It serves the shared cache, read-only (fetched first on a machine that has none yet, as the mirror of
    tests/unit/test_kafka_backend.py does; this fixture comes before ``empty_cache`` redirects
    EO_JAR_CACHE); the first request for ``victim`` gets the full Content-Length but only half the bytes
    before the connection closes.
    """
    shared = jars.ensure_jars(progress=lambda *_: None, bar=lambda *_: None)
    assert not jars.missing_jars(shared), f"ensure_jars left jars missing in {shared}"
    by_name = {jar.filename: shared / jar.filename for jar in jars.pinned_jars()}
    state = {"victim": jars.pinned_jars()[-1].filename, "cut": 0, "served": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            path = by_name.get(self.path.rsplit("/", 1)[-1])
            if path is None:
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if path.name == state["victim"] and not state["cut"]:
                state["cut"] += 1
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            state["served"] += 1
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


# -- the order ------------------------------------------------------------------------------
@pytest.mark.parametrize(("env", "jgo", "mvn", "expected"), [
    ({}, True, True, [("jgo", None), ("mvn", None)]),
    ({}, True, False, [("jgo", None)]),
    ({}, False, True, [("mvn", None)]),
    ({}, False, False, []),
    ({"EO_MAVEN_REPOSITORY": MIRROR + "/"}, True, True, [("jgo", MIRROR), ("mvn", MIRROR)]),
    ({"EO_MAVEN_REPOSITORY": MIRROR}, True, False, [("jgo", MIRROR)]),
    ({"EO_JAR_FETCH": "mvn"}, True, True, [("mvn", None)]),
    ({"EO_JAR_FETCH": "mvn"}, True, False, []),
    ({"EO_JAR_FETCH": "jgo"}, True, True, [("jgo", None)]),
    ({"EO_JAR_FETCH": "jgo"}, False, True, []),
])
def test_jgo_comes_first_mvn_second_and_eo_jar_fetch_keeps_one(env, jgo, mvn, expected):
    routes = jars.fetch_routes(env, jgo=jgo, mvn=mvn)
    assert [(route.tool, route.repository) for route in routes] == expected


@pytest.mark.parametrize(("env", "missing", "fix"), [
    ({}, "the jgo package is not installed and `mvn` is not on PATH", "run `make setup` (it installs jgo)"),
    ({"EO_JAR_FETCH": "mvn"}, "EO_JAR_FETCH=mvn asks for `mvn`, which is not on PATH",
     "install Maven, or unset EO_JAR_FETCH"),
    ({"EO_JAR_FETCH": "jgo"}, "EO_JAR_FETCH=jgo asks for the jgo package, which is not installed",
     "run `make setup`"),
])
def test_without_a_route_the_reason_names_what_is_missing_and_the_fix(env, missing, fix):
    assert jars.fetch_routes(env, jgo=False, mvn=False) == []
    assert jars.why_no_route(env) == f"{missing}; {fix}"


def test_an_unknown_eo_jar_fetch_is_one_sentence_naming_the_choices():
    with pytest.raises(jars.JarsUnavailable) as raised:
        jars.fetch_routes({"EO_JAR_FETCH": "curl"}, jgo=True, mvn=True)
    message = str(raised.value)
    assert "'curl'" in message and "jgo or mvn" in message and message.count(". ") == 0


def test_jgo_is_installed_with_the_course_and_asks_maven_central_by_default(monkeypatch):
    monkeypatch.delenv("EO_MAVEN_REPOSITORY", raising=False)
    monkeypatch.delenv("EO_JAR_FETCH", raising=False)
    assert jars.jgo_installed(), "jgo is a dependency in pyproject.toml: `make setup` installs it"
    first = jars.fetch_routes()[0]
    assert first == jars.FetchRoute("jgo") and first.describe() == "jgo from Maven Central"
    import jgo.maven

    context = jars.jgo_context(Path("unused"), None)
    assert isinstance(context, jgo.maven.MavenContext)
    assert list(context.remote_repos) == ["central"] and context.local_repos == []


def test_auto_reaches_embedded_with_pip_alone(monkeypatch, empty_cache, no_mvn):
    """What `doctor` asks (fetch=False): no mvn, no Docker, an empty cache, and still Apache Kafka."""
    no_docker()
    backend, why = stack_mod.choose_backend("auto", progress=lambda *_: None, fetch=False)
    assert backend == "embedded", why
    assert "its jars are fetched on first use, with jgo from Maven Central" in why


def test_doctor_names_the_command_that_fetches_the_jars_with_jgo(empty_cache, no_mvn):
    line = next(check for check in cli.kafka_checks() if check[0] == "kafka jars")
    _, ok, found, fix = line
    assert not ok and found.startswith(f"0 of {len(jars.pinned_jars())} jars verified")
    assert fix.startswith("`python -m effectively_once up` fetches them once") and "with jgo from Maven Central" in fix
    assert "mvn" not in fix and "EO_MAVEN_REPOSITORY" not in fix, "neither is needed any more"


# -- refusals -------------------------------------------------------------------------------
def test_with_no_way_to_fetch_the_refusal_is_one_sentence_with_the_fix(monkeypatch, empty_cache, no_mvn):
    monkeypatch.setitem(sys.modules, "jgo", None)  # as on a Python where jgo was never installed
    assert jars.fetch_routes() == []
    with pytest.raises(jars.JarsUnavailable) as raised:
        jars.ensure_jars(progress=lambda *_: None, bar=lambda *_: None)
    message = str(raised.value)
    assert "the jgo package is not installed and `mvn` is not on PATH" in message
    assert "run `make setup`" in message and "EO_BACKEND=tansu" in message
    assert message.count(". ") == 0 and message.endswith("."), "one sentence"
    assert "make setup" in cli.jars_fix()
    no_docker()
    backend, why = stack_mod.choose_backend("auto", progress=lambda *_: None, fetch=False)
    assert backend == "tansu" and "the jgo package is not installed" in why


def test_when_jgo_reaches_no_repository_the_refusal_is_one_sentence(monkeypatch, empty_cache, no_mvn, capsys):
    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("EO_MAVEN_REPOSITORY", dead)
    started = time.monotonic()
    with pytest.raises(jars.JarsUnavailable) as raised:
        jars.ensure_jars(progress=print, bar=lambda *_: None)
    assert time.monotonic() - started < jars.JGO_TIMEOUT_S, "a refused connection must not wait for the timeout"
    message = str(raised.value)
    assert f"jgo from {dead} (EO_MAVEN_REPOSITORY): cannot connect to {dead}" in message
    assert "check the network connection" in message and "EO_MAVEN_REPOSITORY" in message
    assert "EO_BACKEND=tansu" in message and message.count(". ") == 0, message
    assert f"with jgo from {dead}" in capsys.readouterr().out, "the fetch says where it goes before it starts"
    assert not list(empty_cache.glob("*.jar")) and not (empty_cache / ".verified").exists()
    assert not [p for p in empty_cache.iterdir() if p.is_dir()], "the staging directory is removed"
    no_docker()
    backend, why = stack_mod.choose_backend("auto", progress=lambda *_: None)
    assert backend == "tansu" and "could not be fetched" in why and "cannot connect" in why


def test_a_download_cut_short_is_fetched_again_and_never_used_half(monkeypatch, flaky_mirror, empty_cache, no_mvn):
    monkeypatch.setenv("EO_MAVEN_REPOSITORY", flaky_mirror["url"])
    jars.ensure_jars(progress=lambda *_: None, bar=lambda *_: None)
    assert flaky_mirror["cut"] == 1, "the server broke off one download"
    assert flaky_mirror["served"] == len(jars.pinned_jars()), "and served every jar whole, that one on the retry"
    victim = empty_cache / flaky_mirror["victim"]
    assert jars.sha256_of(victim) == next(j.sha256 for j in jars.pinned_jars() if j.filename == victim.name)
    assert jars.cached()
