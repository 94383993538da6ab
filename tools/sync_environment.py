"""Write environment.yml (conda, Binder) from pyproject.toml, the one list of versions.

    python tools/sync_environment.py          # rewrite environment.yml
    python tools/sync_environment.py --check  # exit 1 when environment.yml has drifted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]


def render() -> str:
    """The environment.yml text that matches pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = project["requires-python"].removeprefix(">=")
    lines = [
        "# Generated from pyproject.toml by tools/sync_environment.py: edit pyproject.toml, then run",
        "# `make environment`. tests/unit/test_packaging.py fails when the two differ.",
        "name: effectively-once",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python>={python},<3.13",
        "  - pip",
        "  - pip:",
    ]
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        lines.append(f"      - {requirement}")
    lines.append("      - -e .")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on drift")
    args = parser.parse_args(argv)
    target = ROOT / "environment.yml"
    wanted = render()
    if args.check:
        if not target.exists() or target.read_text() != wanted:
            print("environment.yml differs from pyproject.toml: run `make environment` and commit it.")
            return 1
        print("environment.yml matches pyproject.toml")
        return 0
    target.write_text(wanted)
    print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
