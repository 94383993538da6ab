"""Write effectively_once/stack/kafka-jars.lock: every jar the embedded broker needs, with its SHA-256.

    python tools/lock_kafka_jars.py          # resolve with jgo (no Maven needed), hash, rewrite the lock
    python tools/lock_kafka_jars.py --mvn    # the same, resolved by `mvn` instead
    python tools/lock_kafka_jars.py --check  # resolve with jgo and compare with the lock; exit 1 on a difference

Run it after changing KAFKA_VERSION in effectively_once/stack/kafka_settings.py
(or the log4j binding in jars.ROOT_ARTIFACTS, or jars.EXCLUSIONS); commit the result.
It asks the repository in EO_MAVEN_REPOSITORY when that is set, else jgo's (or
Maven's) default. Everything it downloads goes to a temporary directory.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effectively_once.stack import jars  # noqa: E402
from effectively_once.stack.kafka_settings import KAFKA_VERSION  # noqa: E402


def resolve_with_jgo(repository_cache: Path) -> dict[str, Path]:
    """``{group:artifact:version: downloaded jar}`` for the root artifacts' runtime graph, resolved by jgo.

    Each root is a "raw" coordinate (jgo's ``!``): resolved as Maven resolves a dependency, without
    importing the root's own dependencyManagement as a BOM (log4j's would pin kafka-clients 3.x).
    """
    context = jars.jgo_context(repository_cache, jars.maven_repository())
    roots = [context.create_dependency(f"{coordinate}!", [context.project(*excluded.split(":"))
                                                          for excluded in jars.EXCLUSIONS.get(coordinate, ())])
             for coordinate in jars.ROOT_ARTIFACTS]
    inputs, transitive = context.resolver.resolve(roots)
    graph = list(inputs) + [dep for dep in transitive if dep.scope in ("compile", "runtime")]
    return {f"{dep.groupId}:{dep.artifactId}:{dep.version}": dep.artifact.resolve() for dep in graph}


def resolve_with_mvn(staging: Path) -> dict[str, Path]:
    """The same graph, resolved and downloaded by ``mvn`` (Maven's own settings and local repository)."""
    route = jars.FetchRoute("mvn", jars.maven_repository())
    jars._fetch_with_mvn(route, staging, [], lambda *_: None)
    listing = staging / "list.txt"
    subprocess.run(["mvn", "-B", "-q", *jars._maven_settings(staging, route.repository),
                    "-f", str(staging / "project" / "pom.xml"), "dependency:list",
                    "-DincludeScope=runtime", f"-DoutputFile={listing}"], check=True)
    found = re.findall(r"^\s+([\w.\-]+):([\w.\-]+):jar:([\w.\-]+):\w+", listing.read_text(), re.M)
    return {f"{g}:{a}:{v}": staging / f"{a}-{v}.jar" for g, a, v in found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mvn", action="store_true", help="resolve with mvn instead of jgo")
    parser.add_argument("--check", action="store_true", help="only compare the resolved graph with the lock file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        graph = resolve_with_mvn(staging) if args.mvn else resolve_with_jgo(staging / "repository")
        lines = [f"{coordinate}  {jars.sha256_of(path)}" for coordinate, path in sorted(graph.items())]
    if args.check:
        locked = {f"{jar.coordinate}  {jar.sha256}" for jar in jars.pinned_jars()}
        extra, absent = sorted(set(lines) - locked), sorted(locked - set(lines))
        for line in extra:
            print(f"resolved, not in the lock: {line}")
        for line in absent:
            print(f"in the lock, not resolved: {line}")
        print(f"{len(lines)} jars resolved; the lock has {len(locked)}: "
              + ("they match" if not extra and not absent else "they differ, run tools/lock_kafka_jars.py"))
        return 1 if extra or absent else 0
    header = (f"# Apache Kafka {KAFKA_VERSION}'s broker and its runtime dependencies, with their SHA-256.\n"
              "# Written by tools/lock_kafka_jars.py; a jar that does not match is never used.\n")
    jars.LOCK_FILE.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} jars to {jars.LOCK_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
