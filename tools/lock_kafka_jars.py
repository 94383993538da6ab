"""Write effectively_once/stack/kafka-jars.lock: every jar the embedded broker needs, with its SHA-256.

Run it after changing KAFKA_VERSION in effectively_once/stack/kafka_settings.py
(or the log4j binding in jars.ROOT_ARTIFACTS). It resolves the artifacts with
`mvn`, hashes what Maven brought, and rewrites the lock file; commit the result.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effectively_once.stack import jars  # noqa: E402
from effectively_once.stack.kafka_settings import KAFKA_VERSION  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        jars._fetch_with_mvn(staging, [], lambda *_: None)
        listing = staging / "list.txt"
        subprocess.run(["mvn", "-B", "-q", "-f", str(staging / "project" / "pom.xml"), "dependency:list",
                        "-DincludeScope=runtime", f"-DoutputFile={listing}"], check=True)
        lines = []
        for group, artifact, version in sorted(re.findall(r"^\s+([\w.\-]+):([\w.\-]+):jar:([\w.\-]+):\w+",
                                                          listing.read_text(), re.M)):
            path = staging / f"{artifact}-{version}.jar"
            lines.append(f"{group}:{artifact}:{version}  {jars.sha256_of(path)}")
    header = (f"# Apache Kafka {KAFKA_VERSION}'s broker and its runtime dependencies, with their SHA-256.\n"
              "# Written by tools/lock_kafka_jars.py; a jar that does not match is never used.\n")
    jars.LOCK_FILE.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} jars to {jars.LOCK_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
