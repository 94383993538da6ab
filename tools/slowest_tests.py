"""The slowest tests of the last run of every lane, from the JUnit XML files under test-results/.

    python tools/slowest_tests.py            # the 20 slowest, across lanes
    python tools/slowest_tests.py -n 50      # more
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "test-results"


def timings(results: Path = RESULTS) -> list[tuple[float, str, str]]:
    """(seconds, lane, test id) of every test case in ``results/*.xml``."""
    rows = []
    for path in sorted(results.glob("*.xml")):
        for case in ET.parse(path).getroot().iter("testcase"):
            test = f"{case.get('classname', '')}::{case.get('name', '')}"
            rows.append((float(case.get("time") or 0.0), path.stem, test))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="how many to print (default 20)")
    args = parser.parse_args(argv)
    rows = timings()
    if not rows:
        print(f"no JUnit XML under {RESULTS}: run a lane first (make check, make test)", file=sys.stderr)
        return 1
    for seconds, lane, test in sorted(rows, reverse=True)[:args.n]:
        print(f"{seconds:8.1f} s  {lane:<12} {test}")
    total = sum(seconds for seconds, _, _ in rows)
    print(f"{len(rows)} tests in {len({lane for _, lane, _ in rows})} lanes, {total:.0f} s of test time in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
