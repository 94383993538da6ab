"""How long the embedded stack takes from nothing to ready, against the floor.

Ready means: the broker answers a metadata request and PostgreSQL answers
``select 1``. The floor is the least any such stack can take on these jars and
this JVM: a bare ``kafka.tools.StorageTool format`` + ``kafka.Kafka`` start
(polled for metadata, nothing else) and, in parallel, a bare PostgreSQL
``initdb`` + start with the same binaries. Both are measured alternately in one
run (this machine is noisy; only the ratio is comparable between runs).
Goal: at most 1.3x. The first-run jar download is timed separately, into an
empty private cache.

``--secure`` measures instead what the workshop's lock costs: the secured
stack (`up --secure`: SASL/SCRAM users, ACLs, password logins) against the
plain one, alternately, as a ratio.

    .venv/bin/python benchmarks/stack_start.py [--rounds 5] [--no-download] [--secure]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from effectively_once import stack as stack_mod
from effectively_once.stack import jars
from effectively_once.stack.embedded import EmbeddedPostgres
from effectively_once.stack.java import find_java
from effectively_once.stack.kafka_broker import KafkaBroker, answers_metadata, cluster_id
from effectively_once.stack.processes import stop_pid


def time_stack(base: Path, secure: bool = False) -> float:
    started = time.perf_counter()
    running = stack_mod.start("embedded", root=Path(tempfile.mkdtemp(dir=base)), progress=lambda *_: None,
                              secure=secure)
    health = running.health()
    elapsed = time.perf_counter() - started
    assert health["broker"] and health["postgres"], health
    running.stop()
    return elapsed


def bare_kafka(base: Path) -> float:
    """Format and start Kafka with nothing around it; seconds until metadata answers."""
    broker = KafkaBroker(Path(tempfile.mkdtemp(dir=base)), java=find_java())
    broker._choose_ports()
    root = broker.root
    (root / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in broker.properties().items()))
    (root / "log4j2.properties").write_text("status = warn\nrootLogger.level = OFF\n")
    started = time.perf_counter()
    subprocess.run(broker._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id()}", "--config",
                                str(root / "server.properties"), heap="-Xmx256m"), check=True,
                   capture_output=True)
    proc = subprocess.Popen(broker._java("kafka.Kafka", str(root / "server.properties")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not answers_metadata(broker.bootstrap, timeout=1):
            assert proc.poll() is None, "bare Kafka exited"
            time.sleep(0.1)
        return time.perf_counter() - started
    finally:
        stop_pid(proc.pid, timeout=30)


def bare_postgres(base: Path) -> float:
    started = time.perf_counter()
    postgres = EmbeddedPostgres(Path(tempfile.mkdtemp(dir=base)))
    postgres.initdb()
    postgres.start()
    elapsed = time.perf_counter() - started
    postgres.stop()
    return elapsed


def time_floor(base: Path) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(bare_kafka, base), pool.submit(bare_postgres, base)]:
            future.result()
    return time.perf_counter() - started


def time_download(base: Path) -> float:
    cache = base / "empty-jar-cache"
    previous = os.environ.get("EO_JAR_CACHE")
    os.environ["EO_JAR_CACHE"] = str(cache)
    try:
        started = time.perf_counter()
        jars.ensure_jars(progress=lambda *_: None, bar=lambda *_: None)
        return time.perf_counter() - started
    finally:
        if previous is None:
            os.environ.pop("EO_JAR_CACHE")
        else:
            os.environ["EO_JAR_CACHE"] = previous


def secure_against_plain(base: Path, rounds: int) -> int:
    """The secured stack's start against the plain one's, alternately; prints both medians and their ratio."""
    time_stack(base)  # warm the page cache once, outside the measurement
    plain_times, secure_times = [], []
    for round_no in range(rounds):
        plain_times.append(time_stack(base))
        secure_times.append(time_stack(base, secure=True))
        print(f"round {round_no + 1}: plain {plain_times[-1]:.2f} s, secured {secure_times[-1]:.2f} s", flush=True)
    plain, secured = statistics.median(plain_times), statistics.median(secure_times)
    print(f"median start: plain embedded stack {plain:.2f} s, secured {secured:.2f} s")
    print(f"ratio secured / plain: {secured / plain:.2f}x")
    shutil.rmtree(base, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-download", action="store_true", help="skip timing the first-run jar fetch")
    parser.add_argument("--secure", action="store_true", help="the secured stack against the plain one")
    args = parser.parse_args(argv)
    jars.ensure_jars()
    base = Path(tempfile.mkdtemp(prefix="eo-bench-"))
    base.chmod(0o755)
    if args.secure:
        return secure_against_plain(base, args.rounds)
    java = find_java()
    print(f"Apache Kafka {KafkaBroker.version} on {java.describe()}")
    if not args.no_download:
        print(f"first run: fetching the {len(jars.pinned_jars())} jars into an empty cache with "
              f"{jars.fetch_routes()[0].describe()}: {time_download(base):.1f} s (once per machine)", flush=True)
    time_floor(base)  # warm the page cache for the binaries and jars once, outside the measurement
    stack_times, floor_times = [], []
    for round_no in range(args.rounds):
        floor_times.append(time_floor(base))
        stack_times.append(time_stack(base))
        print(f"round {round_no + 1}: floor {floor_times[-1]:.2f} s, embedded stack {stack_times[-1]:.2f} s",
              flush=True)
    floor, stack = statistics.median(floor_times), statistics.median(stack_times)
    print(f"median floor (bare Kafka format + start, beside bare PostgreSQL initdb + start): {floor:.2f} s")
    print(f"median embedded stack (PostgreSQL + Apache Kafka, ready): {stack:.2f} s")
    print(f"ratio stack / floor: {stack / floor:.2f}x (goal <= 1.3x)")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
