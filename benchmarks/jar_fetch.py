"""The first fetch of Kafka's 47 jars: jgo (what a learner with pip gets) vs mvn, each into empty caches.

    .venv/bin/python benchmarks/jar_fetch.py [--rounds 3]

Each round fetches the pinned jars twice through ``jars.ensure_jars``, the path
``up`` takes, once per tool (``EO_JAR_FETCH``), each into a new empty jar cache;
mvn also gets a new empty local repository (``-Dmaven.repo.local`` in
``MAVEN_OPTS``), as on a machine where Maven never ran, so its time includes
the plugins it downloads first. The order alternates from round to round, so
that neither tool always meets a warmer network. Both verify every jar against
the lock. It prints each round and the ratio of the medians, mvn / jgo.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effectively_once.stack import jars  # noqa: E402

TOOLS = ("jgo", "mvn")


def cold_fetch(tool: str, base: Path) -> float:
    """Seconds for ``ensure_jars`` with only ``tool``, into an empty cache (and, for mvn, an empty ~/.m2)."""
    saved = {name: os.environ.get(name) for name in ("EO_JAR_CACHE", "EO_JAR_FETCH", "MAVEN_OPTS")}
    work = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=base))
    os.environ.update(EO_JAR_CACHE=str(work / "cache"), EO_JAR_FETCH=tool)
    if tool == "mvn":
        os.environ["MAVEN_OPTS"] = f"{saved['MAVEN_OPTS'] or ''} -Dmaven.repo.local={work / 'm2'}".strip()
    try:
        started = time.perf_counter()
        jars.ensure_jars(progress=lambda *_: None, bar=lambda *_: None)
        elapsed = time.perf_counter() - started
        assert not jars.missing_jars(work / "cache"), f"{tool} left jars missing"
        return elapsed
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("mvn") is None:
        print("mvn is not on PATH here: there is nothing to compare jgo with.")
        return 0
    base = Path(tempfile.mkdtemp(prefix="eo-bench-jars-"))
    times: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    try:
        for round_no in range(args.rounds):
            order = TOOLS if round_no % 2 == 0 else TOOLS[::-1]
            for tool in order:
                times[tool].append(cold_fetch(tool, base))
            print(f"round {round_no + 1}: " + ", ".join(f"{tool} {times[tool][-1]:.1f} s" for tool in order),
                  flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    jgo, mvn = statistics.median(times["jgo"]), statistics.median(times["mvn"])
    print(f"median cold fetch of {len(jars.pinned_jars())} jars: jgo {jgo:.1f} s, mvn {mvn:.1f} s")
    print(f"ratio mvn / jgo: {mvn / jgo:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
