"""No two modules of the package share a file name: a name says what its module holds, in one place only.

Two ``checks.py`` or two ``settings.py`` leave a reader (and a traceback, and an editor's
tab) to tell them apart by folder. The two names below stand for a role every
package has, not for what a module holds, so they may repeat.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "effectively_once"

# Names that may repeat: they stand for a role every package has, not for what a module holds.
SHARED_ROLES = {
    "__init__.py",   # a package's face
    "__main__.py",   # `python -m <package>`
}


def modules_by_name(package: Path) -> dict[str, list[str]]:
    """Every ``.py`` file under ``package``, grouped by file name, as paths relative to it."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        found[path.name].append(path.relative_to(package).as_posix())
    return found


def test_no_two_modules_share_a_file_name():
    repeated = {name: paths for name, paths in modules_by_name(PACKAGE).items()
                if len(paths) > 1 and name not in SHARED_ROLES}
    assert not repeated, f"modules that share a file name (rename one to say what it holds): {repeated}"


def test_the_shared_roles_are_still_shared():
    # A name on the list that no longer repeats should leave it, so the list stays an honest exception.
    alone = sorted(name for name in SHARED_ROLES if len(modules_by_name(PACKAGE).get(name, [])) < 2)
    assert not alone, f"these names no longer repeat: take them off SHARED_ROLES: {alone}"
