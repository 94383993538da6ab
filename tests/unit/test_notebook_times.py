"""benchmarks/notebook_times.py: what its in-kernel preamble records per cell, and its quiet-machine estimate."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def notebook_times():
    spec = importlib.util.spec_from_file_location("notebook_times", ROOT / "benchmarks" / "notebook_times.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["notebook_times"] = module
    spec.loader.exec_module(module)
    return module


def test_the_preamble_records_each_cells_sleeps_and_processes(notebook_times, tmp_path):
    from IPython.testing.globalipapp import start_ipython

    from effectively_once.observe import workload

    out = tmp_path / "cells.jsonl"
    shell = start_ipython()
    preamble = notebook_times.PREAMBLE.replace("__EO_TIMES_FILE__", repr(str(out))).replace(
        "__EO_FIXED__", repr(notebook_times.FIXED_DURATION))
    assert shell.run_cell(preamble).success
    try:
        assert shell.run_cell("import subprocess, time\ntime.sleep(0.05)\nsubprocess.run(['true'])").success
        assert shell.run_cell("x = 1").success
        assert workload.steady_load.__name__ == "run_for_its_time", "a fixed-duration function is timed as a whole"
    finally:  # this process is shared with other tests: put back what the preamble wrapped
        import subprocess
        import time

        shell.events.callbacks["post_run_cell"].clear()
        time.sleep, subprocess.Popen.__init__ = shell.user_ns["_orig_sleep"], shell.user_ns["_orig_init"]
        workload.steady_load = getattr(workload.steady_load, "__wrapped__", workload.steady_load)
    preamble_line, slept, idle = (json.loads(line) for line in out.read_text().splitlines())
    assert slept["sleep"] >= 0.05 and slept["sites"][0][0].startswith("cell:2 ")
    assert slept["spawned"] == {"true": 1}
    assert idle["sleep"] == 0 and idle["spawned"] == {} and idle["fixed"] == 0


def test_the_quiet_estimate_takes_the_slowdown_off_and_keeps_fixed_waits(notebook_times):
    cell = notebook_times.CellTime(1, "x", wall=10.0, cpu=0.5, runq=0.5, blocked=9.0, sleep=1.0, kids=3.0, stack=1.0)
    assert cell.quiet(slow=2.0) == pytest.approx(0.5 + 9.0 - 4.0 * 1.0)  # the other processes' CPU took twice as long
    assert cell.quiet(slow=4.0) == pytest.approx(0.5 + 4.0 / 2)  # never below their CPU spread over 2 cores
    waiting = notebook_times.CellTime(2, "y", wall=7.0, cpu=0.1, runq=0.1, blocked=6.8, fixed=6.0, kids=4.0)
    assert waiting.quiet(slow=3.0) == pytest.approx(0.1 + 6.0), "a recording of 6 s takes 6 s on any machine"
