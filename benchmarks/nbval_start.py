"""What the notebooks lane's inner pytest costs to start, with every installed plugin and with nbval alone.

Each notebook of the lane runs in a pytest of its own (tests/notebooks/test_notebooks.py). Two ways to
start it on the same one-cell notebook, alternated round after round (a kernel starts and runs the cell):

- with every plugin the environment installs (pytest's default: schemathesis, hypothesis, anyio, xdist...);
- as the lane starts it now: ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` and only ``-p nbval`` and the course's tag.

Prints the median wall-clock time and CPU time of one run of each (the kernel's included), and their ratios.

    .venv/bin/python benchmarks/nbval_start.py [--rounds 5] [--starts 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from consumer_start import medians, one_start

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.notebooks.test_notebooks import PLUGINS  # noqa: E402  (the checkout's tests, by path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--starts", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eo-nbval-start-") as tmp:
        notebook = Path(tmp) / "one_cell.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), str(notebook))
        base = [sys.executable, "-m", "pytest", "--nbval-lax", str(notebook), "-p", "no:cacheprovider", "-q",
                "-o", "addopts="]
        ways = {"every plugin": (base, dict(os.environ)),
                "nbval alone": (base + list(PLUGINS), {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for round_no in range(args.rounds):
            for name in (list(ways) if round_no % 2 == 0 else list(reversed(ways))):
                command, env = ways[name]
                results[name].append(one_start(command, args.starts, cwd=ROOT, env=env, stderr=subprocess.DEVNULL))
    wall, cpu = medians(results)
    for name in ways:
        print(f"{name:<13} {wall[name]:6.2f} s wall   {cpu[name]:6.2f} s CPU   per notebook run")
    print(f"nbval alone / every plugin: {wall['nbval alone'] / wall['every plugin']:.2f} wall, "
          f"{cpu['nbval alone'] / cpu['every plugin']:.2f} CPU ({args.rounds} rounds of {args.starts} runs each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
