"""What `make setup` costs with pip compiling every module up front, and without (``--no-compile``).

Two fresh virtual environments get this checkout (``pip install -e '.[dev]'``) side by side, one with
pip's default (every ``.py`` of every package byte-compiled at install) and one with ``--no-compile``
(Python compiles a module the first time it is imported). Each install is then charged what the lanes
import first (the consumer, the provider, JupyterLab, nbval, the browser's Playwright...), since the
second one compiles those then. Prints both times and their ratio. Run it with pip's cache warm (a
second run), so that both installs read the same wheels.

    .venv/bin/python benchmarks/setup_install.py [--rounds 1]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_IMPORTS = ("effectively_once.payments.consumer, effectively_once.payments.provider, effectively_once.stack.core,"
                 " jupyter_server, jupyterlab, nbclient, nbval, ipykernel.kernelapp, schemathesis, hypothesis,"
                 " playwright.sync_api, pytest, xdist")


def install(venv: Path, compile_up_front: bool) -> float:
    """Seconds for a venv, the install and the first imports."""
    python = venv / "bin" / "python"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *([] if compile_up_front else ["--no-compile"]),
                    "-e", ".[dev]"], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    subprocess.run([python, "-c", f"import {FIRST_IMPORTS}"], cwd=ROOT, check=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    work = Path(tempfile.mkdtemp(prefix="eo-setup-bench-"))
    try:
        for round_no in range(args.rounds):
            for up_front in (True, False) if round_no % 2 == 0 else (False, True):
                venv = work / ("compiled" if up_front else "lazy")
                times[up_front].append(install(venv, up_front))
                shutil.rmtree(venv)
                print(f"round {round_no + 1}: {'compile at install' if up_front else '--no-compile':<18} "
                      f"{times[up_front][-1]:5.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    before, after = min(times[True]), min(times[False])
    print(f"setup with its first imports: {before:.0f} s compiling at install, {after:.0f} s with --no-compile; "
          f"ratio {after / before:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
