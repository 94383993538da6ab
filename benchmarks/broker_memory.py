"""The embedded broker's resident memory after the course's notebook 04, against an idle broker.

Two embedded stacks in one run: one idle (started, nothing else), one that has
just run ``notebooks/04_kill_the_consumer.ipynb`` (every crash, the matrix, the
traps). Prints each JVM's resident set size (RSS, from /proc through psutil)
and their ratio. Goal: at most 1 GB after notebook 04 (the heap is capped at
512 MB; the rest is the JVM's own metaspace, threads and page buffers).

    .venv/bin/python benchmarks/broker_memory.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

from effectively_once import stack as stack_mod
from effectively_once.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_kill_the_consumer.ipynb"


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="eo-bench-memory-"))
    os.environ["EO_HOME"] = str(home)  # the notebook's kernel attaches to the stack `up` starts here
    try:
        with stack_mod.start("embedded", progress=lambda *_: None) as idle:
            assert cli(["up", "--backend", "embedded"]) == 0
            worked = stack_mod.attach()
            started = time.monotonic()
            nb = nbformat.read(str(NOTEBOOK), as_version=4)
            NotebookClient(nb, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
            seconds = time.monotonic() - started
            idle_mb, worked_mb = rss_mb(idle.pids["broker"]), rss_mb(worked.pids["broker"])
        print(f"Apache Kafka {worked.broker_version}, heap {os.environ.get('KAFKA_HEAP_OPTS', '-Xms512m -Xmx512m')}")
        print(f"idle broker:                     {idle_mb:7.0f} MB resident")
        print(f"after notebook 04 ({seconds:.0f} s of work): {worked_mb:7.0f} MB resident (goal <= 1024 MB)")
        print(f"ratio after notebook 04 / idle: {worked_mb / idle_mb:.2f}x")
    finally:
        cli(["down", "--purge"])
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
