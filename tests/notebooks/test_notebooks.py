"""Every notebook tells the truth on the stack at hand; every lab fails until solved.

* Each ``notebooks/*.ipynb`` and ``solutions/*.ipynb`` runs under nbval in a
  subprocess, against the run's stack (the kernel inherits ``EO_HOME`` and
  attaches with ``attach_or_start()``). Outputs of deterministic cells are
  compared; cells tagged ``output-varies`` only have to run (tests/notebooks/output_tags.py
  teaches nbval that tag).
* That ``labs/`` is what ``solutions/`` gives is ``make check``'s to say
  (``tools/make_labs.py --check``), before any kernel starts.
* Each ``labs/*.ipynb``, executed, stops with an error at a cell tagged
  ``check`` (an unfinished exercise raises NotImplementedError, or its check
  raises AssertionError), never earlier and never not at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from effectively_once.lifetime import spawn

ROOT = Path(__file__).resolve().parents[2]
SANITIZE = ROOT / "tests" / "notebooks" / "nbval_sanitize.cfg"
# The inner pytest loads nbval and the course's output-varies tag (tests/notebooks/output_tags.py), and no
# other plugin: the environment's others (schemathesis, hypothesis, anyio, xdist) cost about 3 s of CPU per
# notebook at start, for nothing (benchmarks/nbval_start.py).
PLUGINS = ("-p", "nbval", "-p", "tests.notebooks.output_tags")
COURSE = sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("solutions/*.ipynb"))
LABS = sorted(ROOT.glob("labs/*.ipynb"))
CHECK_TAG = "check"
LAB_ERRORS = ("NotImplementedError", "AssertionError")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _pytest(cmd: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run an inner pytest that dies with this one, however this one dies (its kernel follows it).

    With a plain ``subprocess.run``, a lane stopped from outside (CI's timeout, a Ctrl-C, a
    SIGKILL) would leave the inner pytest running its notebook on, against a stack going away.
    """
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # only the PLUGINS it names
    proc = spawn(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("path", COURSE, ids=_ids(COURSE))
def test_notebook_passes_nbval(path, stack):
    """Run the notebook with nbval; its asserts and its stored outputs must hold on this stack."""
    cmd = [sys.executable, "-m", "pytest", "--nbval", str(path), "--nbval-sanitize-with", str(SANITIZE), *PLUGINS,
           "-p", "no:cacheprovider", "-q", "-o", "addopts=", "--nbval-cell-timeout=600"]
    result = _pytest(cmd)
    assert result.returncode == 0, (f"nbval failed on {path.relative_to(ROOT)} (exit {result.returncode}):\n"
                                    f"{_tail(result.stdout + result.stderr)}")


TANSU_NOTEBOOKS = [ROOT / "notebooks" / "03_kafka_guarantees.ipynb", ROOT / "notebooks" / "04_kill_the_consumer.ipynb"]


@pytest.mark.tansu_only
@pytest.mark.parametrize("path", TANSU_NOTEBOOKS, ids=_ids(TANSU_NOTEBOOKS))
def test_notebook_runs_on_tansu(path, stack):
    """The notebooks whose cells branch on the broker, run on Tansu: every cell and assert must hold.

    Their stored outputs come from Apache Kafka, so outputs are not compared
    (``--nbval-lax``); what must hold on Tansu is each assert cell, which states
    what this broker does.
    """
    assert stack.broker_flavor == "tansu", "this test belongs to make test-tansu"
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", str(path), *PLUGINS, "-p", "no:cacheprovider", "-q",
           "-o", "addopts=", "--nbval-cell-timeout=600"]
    result = _pytest(cmd)
    assert result.returncode == 0, (f"{path.relative_to(ROOT)} failed on Tansu (exit {result.returncode}):\n"
                                    f"{_tail(result.stdout + result.stderr)}")


@pytest.mark.parametrize("path", LABS, ids=_ids(LABS))
def test_lab_fails_at_a_check_cell(path, stack, tmp_path):
    """An unsolved lab must stop at one of its check cells, with NotImplementedError or AssertionError."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(str(path), as_version=4)
    assert any(CHECK_TAG in c.metadata.get("tags", []) for c in nb.cells), f"{path.name} has no cell tagged 'check'"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError) as raised:
        client.execute()
    failing = [(i, c) for i, c in enumerate(nb.cells)
               if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failing, f"{path.name} raised outside any cell: {raised.value}"
    index, cell = failing[0]
    error = next(o for o in cell.outputs if o.get("output_type") == "error")
    assert CHECK_TAG in cell.metadata.get("tags", []), (
        f"{path.name} failed at cell {index}, which is not a check cell (it should fail only where the learner's "
        f"work is checked): {error['ename']}: {error['evalue']}")
    assert error["ename"] in LAB_ERRORS, f"{path.name} cell {index} raised {error['ename']}: {error['evalue']}"


