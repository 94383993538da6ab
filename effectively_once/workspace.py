"""The learner's copy of the course: ``my-course/``, and ``python -m effectively_once reset NB``.

``make lab`` opens the course from ``my-course/``, a git-ignored folder beside
``notebooks/``: the notebooks, with ``labs/`` and ``solutions/`` inside it.
Each file is copied from the course the first time (``workspace``), so a
learner's runs and edits never touch a tracked file and ``git pull`` always
applies. A notebook a course update adds is copied in on the next ``make lab``;
a copy the learner already has is never overwritten. When the course changed
a notebook the learner has, ``workspace`` says so, and ``reset NB`` takes the
new version (the learner's copy is kept under ``my-course/.backups/``).

``reset NB`` also removes what earlier runs of that notebook created (see
``effectively_once.stack.cleanup``): its topics, consumer groups, databases,
temporary directories and any process still running.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from effectively_once.runs import NOTEBOOK_FOLDERS

WORKSPACE = "my-course"
MANIFEST = ".course-copies.json"   # name -> SHA-256 of the course file it was copied from
BACKUPS = ".backups"


def course_root() -> Path:
    """The checkout the course runs from (the folder holding ``notebooks/``)."""
    return Path(__file__).resolve().parents[1]


def workspace_dir() -> Path:
    """The learner's copy of the course: ``$EO_WORKSPACE``, default ``my-course/`` in the checkout."""
    return Path(os.environ.get("EO_WORKSPACE") or course_root() / WORKSPACE).expanduser()


@dataclass(frozen=True)
class CourseFile:
    """One notebook of the course and where the learner's copy of it lives."""

    name: str        # as ``reset`` and the runs' records name it: "04_kill_the_consumer", "labs/04_..."
    source: Path     # the tracked file in the checkout
    copy: Path       # the learner's copy

    @property
    def short(self) -> str:
        """The shortest name ``reset`` takes for it: ``04``, ``04b``, ``labs/04``."""
        folder, _, stem = self.name.rpartition("/")
        return f"{folder}/" * bool(folder) + stem.split("_", 1)[0]

    def digest(self) -> str:
        return hashlib.sha256(self.source.read_bytes()).hexdigest()


def course_files(root: Path | None = None, workspace: Path | None = None) -> list[CourseFile]:
    """Every notebook of the course (``notebooks/``, ``labs/``, ``solutions/``), in order."""
    root = root or course_root()
    workspace = workspace or workspace_dir()
    found = [CourseFile(p.stem, p, workspace / p.name) for p in sorted((root / "notebooks").glob("*.ipynb"))]
    for folder in NOTEBOOK_FOLDERS:
        found += [CourseFile(f"{folder}/{p.stem}", p, workspace / folder / p.name)
                  for p in sorted((root / folder).glob("*.ipynb"))]
    return found


def _manifest(workspace: Path) -> dict[str, str]:
    try:
        return json.loads((workspace / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _save_manifest(workspace: Path, manifest: dict[str, str]) -> None:
    (workspace / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


@dataclass
class Synced:
    """What ``sync`` did: the notebooks it copied in, and those the course changed since the learner's copy."""

    workspace: Path
    copied: list[CourseFile]
    updated_in_course: list[CourseFile]

    def __str__(self) -> str:
        lines = []
        if self.copied:
            lines.append(f"copied into {self.workspace}: " + ", ".join(f.name for f in self.copied))
        for changed in self.updated_in_course:
            lines.append(f"{changed.name}: the course has a newer version than your copy; "
                         f"`python -m effectively_once reset {changed.short}` takes it (your copy is kept in "
                         f"{self.workspace / BACKUPS})")
        return "\n".join(lines) or f"{self.workspace} is up to date with the course"


def sync(workspace: Path | None = None) -> Synced:
    """Copy every notebook the learner does not have yet into the workspace; never overwrite a copy."""
    workspace = workspace or workspace_dir()
    workspace.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(workspace)
    copied, updated = [], []
    for course_file in course_files(workspace=workspace):
        if not course_file.copy.exists():
            course_file.copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(course_file.source, course_file.copy)
            manifest[course_file.name] = course_file.digest()
            copied.append(course_file)
        elif manifest.get(course_file.name) not in (None, course_file.digest()):
            updated.append(course_file)
    _save_manifest(workspace, manifest)
    return Synced(workspace, copied, updated)


class UnknownNotebook(ValueError):
    """``reset`` was given a name that matches no notebook, or more than one."""


def find(name: str, workspace: Path | None = None) -> CourseFile:
    """The notebook ``name`` means: ``04``, ``04b``, ``labs/04``, ``04_kill_the_consumer``, or a path to one."""
    files = course_files(workspace=workspace)
    text = name.strip().replace("\\", "/").removesuffix(".ipynb").strip("/")
    folder, _, stem = text.rpartition("/")
    folder = folder.rsplit("/", 1)[-1]
    if folder not in NOTEBOOK_FOLDERS:
        folder = ""  # notebooks/04..., my-course/04..., or a bare name
    prefix = f"{stem}_" if stem[-1:].isdigit() else stem
    chosen = [f for f in files if f.name.rpartition("/")[0] == folder
              and (f.name.rpartition("/")[2] == stem or f.name.rpartition("/")[2].startswith(prefix))]
    if len(chosen) == 1:
        return chosen[0]
    names = ", ".join(f.name for f in files)
    if not chosen:
        raise UnknownNotebook(f"{name!r} names no notebook of the course; the notebooks are: {names}")
    raise UnknownNotebook(f"{name!r} names {len(chosen)} notebooks ({', '.join(f.name for f in chosen)}): "
                          "give more of the name")


def restore(course_file: CourseFile) -> Path | None:
    """Copy the course's version of a notebook over the learner's; return where their copy was kept (if any)."""
    workspace = workspace_dir()
    kept = None
    if course_file.copy.exists():
        backups = workspace / BACKUPS
        backups.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = backups / f"{course_file.name.replace('/', '-')}-{stamp}.ipynb"
        shutil.move(str(course_file.copy), kept)
    course_file.copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(course_file.source, course_file.copy)
    manifest = _manifest(workspace)
    manifest[course_file.name] = course_file.digest()
    _save_manifest(workspace, manifest)
    return kept


# -- the commands ----------------------------------------------------------------------------------
class WorkspaceCommand:
    """``python -m effectively_once workspace``: copy new notebooks into ``my-course/`` (``make lab`` runs it)."""

    HELP = "copy the notebooks you do not have yet into my-course/ (make lab does it); never overwrites a copy"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--print-dir", action="store_true",
                            help="print the workspace's path on stdout (the report goes to stderr)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        synced = sync()
        print(synced, file=sys.stderr if args.print_dir else sys.stdout)
        if args.print_dir:
            print(synced.workspace)
        return 0


class ResetCommand:
    """``python -m effectively_once reset NB``: one notebook back to the course's version, its runs' leftovers gone."""

    HELP = ("start one notebook over: restore it (or labs/NB) from the course into my-course/ and remove "
            "what its earlier runs created (topics, groups, databases, files, processes)")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("notebook", help="e.g. 04, 04b, labs/04, solutions/06 or 04_kill_the_consumer")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from effectively_once.stack.cleanup import clean, report, runs_to_clean

        try:
            chosen = find(args.notebook)
        except UnknownNotebook as exc:
            print(exc, file=sys.stderr)
            return 2
        _, alive = runs_to_clean(chosen.name)
        holding = [run for run in alive if run.resources]
        if holding:
            pids = ", ".join(str(run.owner.pid) for run in holding)
            print(f"{chosen.name} is still running in a kernel (pid {pids}), which holds what it created: shut "
                  "that kernel down first (in JupyterLab: Kernel > Shut Down Kernel, and close the notebook), "
                  f"then run `python -m effectively_once reset {args.notebook}` again.", file=sys.stderr)
            return 1
        kept = restore(chosen)
        print(f"{chosen.copy} is the course's version again"
              + (f"; your copy is kept as {kept}" if kept else "") + ".")
        results = clean(chosen.name)
        print(report(results, [], dry_run=False, whose=chosen.name))
        return 0 if not any(c.waiting for c in results) else 1

