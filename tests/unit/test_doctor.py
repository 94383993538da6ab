"""The first commands a learner types: ``doctor`` and ``status`` on a Python with nothing installed.

Each runs the real command in a fresh interpreter started with ``-S``: no
site-packages, so none of the packages ``make setup`` installs can be imported,
as on a machine where nothing is installed yet. Only this repository is on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from effectively_once import settings
from tests.conftest import ROOT


def bare(*args: str, home) -> subprocess.CompletedProcess:
    """``python -S -m effectively_once ARGS``: the standard library and this repository, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EO_", "PYTHON", "JUPYTERHUB"))}
    env.update(PYTHONPATH=str(ROOT), EO_HOME=str(home), EO_NAMESPACE="bare")
    return subprocess.run([sys.executable, "-S", "-m", "effectively_once", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_the_bare_interpreter_really_lacks_the_packages(tmp_path):
    probe = subprocess.run([sys.executable, "-S", "-c", "import psycopg"], capture_output=True, text=True,
                           env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}, timeout=60)
    assert probe.returncode != 0 and "No module named 'psycopg'" in probe.stderr


def test_doctor_runs_before_any_install_and_names_the_fix(tmp_path):
    result = bare("doctor", home=tmp_path)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 1, "missing packages are a problem doctor must report"
    lines = result.stdout.splitlines()
    packages = next(line for line in lines if line.startswith("FIX packages"))
    assert "psycopg" in packages and "confluent-kafka" in packages and "make setup" in packages, packages
    for check in ("python", "venv", "java", "kafka jars", "docker", "free disk", "ports", "namespace"):
        assert any(line[4:].startswith(f"{check} ") for line in lines), f"doctor does not report {check}"
    assert all(" -> " in line for line in lines if line.startswith("FIX")), "every FIX line names its fix"


def test_status_with_nothing_running_fails_and_says_how_to_start(tmp_path):
    result = bare("status", home=tmp_path)
    assert result.returncode == 1
    assert "No stack is running" in result.stdout and "python -m effectively_once up" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command", [["demo"], ["up", "--backend", "embedded"]])
def test_a_command_that_needs_a_package_says_so_in_one_sentence(tmp_path, command):
    result = bare(*command, home=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "make setup" in result.stderr, result.stderr
    assert not (tmp_path / "keeper.log").exists(), "nothing may start before the missing package is named"


def test_jupyterhub_user_names_the_namespace(monkeypatch):
    monkeypatch.delenv("EO_NAMESPACE", raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "Alice.Smith")
    assert settings.namespace() == "alice_smith"
    assert settings.namespace_source() == "JUPYTERHUB_USER"
    monkeypatch.setenv("EO_NAMESPACE", "bob")
    assert settings.namespace() == "bob", "EO_NAMESPACE wins over the hub's user name"
    monkeypatch.delenv("EO_NAMESPACE")
    monkeypatch.setenv("JUPYTERHUB_USER", "")
    monkeypatch.setattr(settings.getpass, "getuser", lambda: "jovyan")
    assert settings.namespace() == "jovyan"


@pytest.mark.parametrize("name", ["jovyan", "root", "user", "ubuntu", "admin"])
def test_a_generic_namespace_on_a_shared_cluster_is_warned_about(monkeypatch, name):
    monkeypatch.setenv("EO_NAMESPACE", name)
    warning = settings.namespace_warning("external")
    assert warning is not None and "EO_NAMESPACE" in warning and repr(name) in warning
    assert settings.namespace_warning("embedded") is None, "a private stack is nobody else's"
    monkeypatch.setenv("EO_BACKEND", "external")
    assert settings.namespace_warning() == warning


def test_a_personal_namespace_is_not_warned_about(monkeypatch):
    monkeypatch.setenv("EO_NAMESPACE", "alice")
    assert settings.namespace_warning("external") is None


def test_doctor_warns_about_a_generic_namespace_on_a_shared_cluster(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EO_", "JUPYTERHUB"))}
    env.update(PYTHONPATH=str(ROOT), EO_HOME=str(tmp_path), EO_BACKEND="external", EO_NAMESPACE="jovyan",
               EO_KAFKA_BOOTSTRAP="127.0.0.1:1", EO_POSTGRES_DSN="postgresql://x@127.0.0.1:1/postgres")
    result = subprocess.run([sys.executable, "-S", "-m", "effectively_once", "doctor"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    line = next(line for line in result.stdout.splitlines() if line[4:].startswith("namespace "))
    assert line.startswith("FIX") and "set EO_NAMESPACE" in line, line
    kafka = next(line for line in result.stdout.splitlines() if line[4:].startswith("kafka server "))
    assert kafka.startswith("FIX") and "EO_KAFKA_BOOTSTRAP" in kafka, kafka


def test_status_warns_about_a_generic_namespace_on_a_shared_cluster(monkeypatch, capsys):
    from effectively_once import cli

    report = {"running": True, "healthy": True, "backend": "external", "broker_flavor": "apache-kafka",
              "broker_version": None, "kafka_bootstrap": "kafka.example:9092", "namespace": "jovyan",
              "postgres_dsn": "postgresql://db.example/postgres", "pids": {}, "problems": [], "fix": None}
    monkeypatch.setattr(cli, "status_report", lambda: report)
    assert cli.main(["status"]) == 0
    assert "warning: the namespace is 'jovyan'" in capsys.readouterr().out
    monkeypatch.setattr(cli, "status_report", lambda: {**report, "namespace": "alice"})
    assert cli.main(["status"]) == 0
    assert "warning" not in capsys.readouterr().out
