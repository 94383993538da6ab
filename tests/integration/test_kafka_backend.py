"""Apache Kafka's jars fetched by Maven into an empty cache: Maven is a JVM, and it asks a real repository."""

from __future__ import annotations

import shutil

import pytest

from effectively_once.stack import jars


def test_mvn_fetches_the_jars_into_an_empty_cache(monkeypatch, tmp_path):
    if shutil.which("mvn") is None:
        pytest.skip("mvn is not on PATH here; the jgo fetch is tested instead")
    monkeypatch.setenv("EO_JAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EO_JAR_FETCH", "mvn")  # asked for: jgo comes first otherwise
    assert jars.fetch_routes() == [jars.FetchRoute("mvn")] and not jars.cached()
    jars.ensure_jars(progress=lambda *_: None, bar=lambda *_: None)
    assert jars.cached()
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.jar")) == sorted(j.filename for j in jars.pinned_jars())
