"""No two modules of the package share a file name: a name says what its module holds, in one place only.

Two ``checks.py`` or two ``demo.py`` leave a reader (and a traceback, and an editor's
tab) to tell them apart by folder. The few names below stand for a role every
package or command has, not for what a module holds, so they may repeat.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "effectively_once"

# Names that may repeat: most stand for a role, not a content, and may appear once per package.
SHARED_ROLES = {
    "__init__.py",   # a package's face
    "__main__.py",   # `python -m <package>`
    "cli.py",        # a package's command line (the course's, and `probe`'s)
    "settings.py",   # a package's settings (the course's home and namespace, and a consumer's)
    # The Two Generals as data (theory/) and as a widget (widgets/): notebook 01 imports both by these paths,
    # and a notebook's code cannot change without running it again.
    "generals.py",
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
