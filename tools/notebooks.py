"""The notebooks' sources and their executed forms: check, execute, carry prose over, strip.

Every notebook has one text source, a jupytext MyST Markdown file under
``sources/``, and one executed form, the committed ``.ipynb``::

    sources/notebooks/04_kill_the_consumer.md  ->  notebooks/04_kill_the_consumer.ipynb
    sources/solutions/04_kill_the_consumer.md  ->  solutions/04_kill_the_consumer.ipynb

The source wins when the two disagree. Commands (``NB`` selects notebooks by
name: ``04``, ``04_kill``, ``solutions/04``; none means all)::

    python tools/notebooks.py check [NB...]     # no kernel, seconds: every .ipynb matches its source
    python tools/notebooks.py execute NB...     # rebuild from the source, run every cell, write the .ipynb
    python tools/notebooks.py prose [NB...]     # carry markdown-only edits into the .ipynb, no kernel
    python tools/notebooks.py strip [NB...]     # drop widget state, timings and no-saved-output outputs
    python tools/notebooks.py adopt NB...       # write the source from the .ipynb (an edit made in JupyterLab)
    python tools/notebooks.py course [--check]  # write (or check) the course map in README and the Time lines

``execute`` needs the stack (``make up``): each notebook attaches to it, as a
learner's does. After rebuilding a solution, ``tools/make_labs.py`` rewrites
``labs/``; ``make notebooks NB=04`` does both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat
from nbformat.notebooknode import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "sources"
KINDS = ("notebooks", "solutions")
FORMAT = "md:myst"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# The source's header keeps the format and the kernel, not the jupytext version that wrote it.
HEADER_FILTER = "-jupytext.text_representation.jupytext_version"
# Paths of the machine that executed a notebook must not be stored in its outputs.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|Users|tmp|private/var)/[\w.\-]+")
TIME_LINE = re.compile(r"\*\*Time:\*\* about (\d+) minutes")
README_BEGIN = "<!-- course map: written by `python tools/notebooks.py course` from effectively_once/course/map.py -->"
README_END = "<!-- end of course map -->"
README_TIME = re.compile(r"about [\d.]+ hours for the notebooks \(\d+ minutes\) and [\d.]+ more for the exercises "
                         r"\(\d+ minutes\)")
GUIDE = ROOT / "docs" / "instructor-guide.md"
GUIDE_BEGIN = ("<!-- workshop plans: written by `python tools/notebooks.py course` "
               "from effectively_once/course/map.py -->")
GUIDE_END = "<!-- end of workshop plans -->"
# The .ipynb's metadata key holding a digest of the code its outputs came from: `execute` writes it,
# `check` compares it, so code edited after the last run (outputs now stale) fails the check.
DIGEST_KEY = "executed_code_sha256"
# A cell whose output shows something only the learner should do (a SIGKILL the notebook asks them to
# send, an answer they give) is stored without it: executed, then cleared, so a notebook opened fresh
# never shows an action nobody has taken yet.
NO_SAVED_OUTPUT = "no-saved-output"


@dataclass(frozen=True)
class Pair:
    """A notebook's source and its executed form."""

    source: Path
    ipynb: Path

    @property
    def name(self) -> str:
        return f"{self.ipynb.parent.name}/{self.ipynb.stem}"


def pairs() -> list[Pair]:
    """Every (source, .ipynb) pair, from the sources and from the .ipynb files, so an orphan shows up."""
    stems = set()
    for kind in KINDS:
        stems |= {(kind, p.stem) for p in (SOURCES / kind).glob("*.md")}
        stems |= {(kind, p.stem) for p in (ROOT / kind).glob("*.ipynb")}
    return [Pair(SOURCES / kind / f"{stem}.md", ROOT / kind / f"{stem}.ipynb") for kind, stem in sorted(stems)]


def select(names: Sequence[str]) -> list[Pair]:
    """The pairs whose name (``notebooks/04_kill_the_consumer``) or stem starts with one of ``names``.

    A name that ends in a digit is a whole number: ``04`` selects ``04_kill_the_consumer``, not ``04b_...``.
    """
    everything = pairs()
    if not names:
        return everything
    prefixes = [n.strip("/") + ("_" if n.strip("/")[-1:].isdigit() else "") for n in names]
    chosen = [p for p in everything if any(p.name.startswith(n) or p.ipynb.stem.startswith(n) for n in prefixes)]
    if not chosen:
        raise SystemExit(f"no notebook matches {' '.join(names)}: try a number such as 04, or notebooks/04")
    return chosen


def read_source(path: Path) -> NotebookNode:
    """The notebook a source describes: its cells, stable ids, the python3 kernel, no outputs."""
    nb = jupytext.read(path, fmt=FORMAT)
    cells = []
    for cell in nb.cells:
        tags = list(cell.metadata.get("tags", []))
        new = (nbformat.v4.new_code_cell(cell.source) if cell.cell_type == "code"
               else nbformat.v4.new_markdown_cell(cell.source))
        if tags:
            new.metadata["tags"] = tags
        cells.append(new)
    fresh = nbformat.v4.new_notebook()
    fresh.cells = cells
    fresh.metadata["kernelspec"] = dict(KERNELSPEC)
    fresh.metadata["language_info"] = {"name": "python"}
    return renumber(fresh)


def source_text(nb: NotebookNode) -> str:
    """The MyST Markdown text of ``nb``'s cells (outputs and execution counts are not part of a source)."""
    bare = nbformat.v4.new_notebook()
    for cell in nb.cells:
        new = (nbformat.v4.new_code_cell(cell.source) if cell.cell_type == "code"
               else nbformat.v4.new_markdown_cell(cell.source))
        if cell.metadata.get("tags"):
            new.metadata["tags"] = list(cell.metadata["tags"])
        bare.cells.append(new)
    bare.metadata = {"kernelspec": dict(KERNELSPEC), "jupytext": {"notebook_metadata_filter": HEADER_FILTER}}
    return jupytext.writes(bare, fmt=FORMAT)


def renumber(nb: NotebookNode) -> NotebookNode:
    """Stable cell ids (``cell-000``, ``cell-001``, ...), so a rebuild does not churn the diff."""
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    return nb


def strip(nb: NotebookNode) -> NotebookNode:
    """Remove saved widget state, per-cell timings (they change on every run) and the outputs of cells
    tagged ``no-saved-output``; renumber the ids."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code" and NO_SAVED_OUTPUT in cell.metadata.get("tags", []):
            cell.outputs = []
            cell.execution_count = None
    return renumber(nb)


def code_digest(nb: NotebookNode) -> str:
    """A digest of every code cell's source and tags, in order: what the stored outputs came from."""
    code = [[c.source, list(c.metadata.get("tags", []))] for c in nb.cells if c.cell_type == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def _key(cell: NotebookNode) -> tuple[str, str, tuple[str, ...]]:
    return cell.cell_type, cell.source, tuple(cell.metadata.get("tags", []))


def _first_difference(want: str, have: str) -> str:
    """Where two cell sources part: the line number and both versions of that line."""
    a, b = want.split("\n"), have.split("\n")
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    line_a = a[n] if n < len(a) else "(nothing)"
    line_b = b[n] if n < len(b) else "(nothing)"
    return f"line {n + 1}: source {line_a[:70]!r}, .ipynb {line_b[:70]!r}"


def differences(source: NotebookNode, executed: NotebookNode) -> list[str]:
    """How ``executed``'s cells differ from ``source``'s, one line each (empty when they agree)."""
    problems = []
    for i, (want, have) in enumerate(zip(source.cells, executed.cells, strict=False)):
        if _key(want) != _key(have):
            if want.cell_type != have.cell_type:
                problems.append(f"cell {i} is {want.cell_type} in the source, {have.cell_type} in the .ipynb")
            elif want.source == have.source:
                problems.append(f"cell {i} ({want.cell_type}) has tags {list(_key(want)[2])} in the source, "
                                f"{list(_key(have)[2])} in the .ipynb")
            else:
                problems.append(f"cell {i} ({want.cell_type}) differs at {_first_difference(want.source, have.source)}")
    if len(source.cells) != len(executed.cells):
        problems.append(f"the source has {len(source.cells)} cells, the .ipynb {len(executed.cells)}")
    return problems


def hygiene(nb: NotebookNode) -> list[str]:
    """What must never be committed in an executed notebook: unstable ids, widget state, machine paths,
    an output of a cell tagged ``no-saved-output``."""
    problems = []
    if nb.metadata.get(DIGEST_KEY) != code_digest(nb):
        problems.append("its outputs did not come from the code it holds (a code cell changed after the last run, "
                        "or it never ran through `tools/notebooks.py execute`)")
    if "widgets" in nb.metadata:
        problems.append("saved widget state in metadata.widgets")
    for i, cell in enumerate(nb.cells):
        if cell.get("id") != f"cell-{i:03d}":
            problems.append(f"cell {i} has id {cell.get('id')!r}, not cell-{i:03d}")
        if "execution" in cell.metadata:
            problems.append(f"cell {i} stores execution timings")
        if cell.get("outputs") and NO_SAVED_OUTPUT in cell.metadata.get("tags", []):
            problems.append(f"cell {i} is tagged {NO_SAVED_OUTPUT} but stores an output")
        for out in cell.get("outputs", []):
            found = MACHINE_PATH.search(json.dumps(out))
            if found:
                problems.append(f"cell {i} output shows a path of the machine that ran it: {found.group(0)}")
                break
    return problems


def check_pair(pair: Pair) -> list[str]:
    """Every problem of one pair, each naming the notebook."""
    if not pair.source.exists():
        return [f"{pair.name}: {pair.ipynb.relative_to(ROOT)} has no source {pair.source.relative_to(ROOT)} "
                f"(write one with `python tools/notebooks.py adopt {pair.name}`)"]
    if not pair.ipynb.exists():
        return [f"{pair.name}: {pair.source.relative_to(ROOT)} was never executed "
                f"(run `make notebooks NB={pair.name}`)"]
    executed = nbformat.read(str(pair.ipynb), as_version=4)
    problems = [f"{pair.name}: {p}" for p in differences(read_source(pair.source), executed)]
    if problems:
        fix = (f"`python tools/notebooks.py prose {pair.name}` carries the markdown over"
               if only_prose_differs(read_source(pair.source), executed)
               else f"`make notebooks NB={pair.name}` re-executes it")
        problems.append(f"{pair.name}: the source wins; {fix} (or, to keep an edit made to the .ipynb, "
                        f"`python tools/notebooks.py adopt {pair.name}`)")
    for problem in hygiene(executed):
        fix = (f"make notebooks NB={pair.name}" if "outputs" in problem
               else f"python tools/notebooks.py strip {pair.name}")
        problems.append(f"{pair.name}: {problem} (run `{fix}`)")
    return problems


def write_ipynb(nb: NotebookNode, path: Path) -> None:
    strip(nb)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))


def execute_pair(pair: Pair, timeout: int = 900) -> None:
    """Build the notebook from its source, run every cell in its own directory, and write the .ipynb.

    Raises on the first failing cell, so a broken notebook is never written as if it ran.
    """
    from nbclient import NotebookClient

    nb = read_source(pair.source)
    NotebookClient(nb, timeout=timeout, kernel_name=KERNELSPEC["name"], record_timing=False,
                   resources={"metadata": {"path": str(pair.ipynb.parent)}}).execute()
    nb.metadata[DIGEST_KEY] = code_digest(nb)
    write_ipynb(nb, pair.ipynb)
    found = hygiene(nb)
    if found:
        raise SystemExit(f"{pair.name}: written, but {'; '.join(found)}")


def only_prose_differs(source: NotebookNode, executed: NotebookNode) -> bool:
    """True when both have the same cells in the same order and every code cell agrees."""
    if [c.cell_type for c in source.cells] != [c.cell_type for c in executed.cells]:
        return False
    return all(_key(a) == _key(b) for a, b in zip(source.cells, executed.cells, strict=True) if a.cell_type == "code")


def carry_prose(pair: Pair) -> bool:
    """Copy the source's markdown cells into the .ipynb when only markdown changed; True when it wrote."""
    source = read_source(pair.source)
    executed = nbformat.read(str(pair.ipynb), as_version=4)
    if not only_prose_differs(source, executed):
        raise SystemExit(f"{pair.name}: code cells (or the cell order) changed, so the outputs would be stale: "
                         f"run `make notebooks NB={pair.name}`")
    changed = False
    for want, have in zip(source.cells, executed.cells, strict=True):
        if want.cell_type == "markdown" and _key(want) != _key(have):
            have.source = want.source
            have.metadata = want.metadata
            changed = True
    if changed:
        write_ipynb(executed, pair.ipynb)
    return changed


# --- the course map: effectively_once/course/map.py is its one source ----------------------------------


def readme_table() -> str:
    from effectively_once.course.map import COURSE, total_minutes

    rows = ["| notebook | what you learn | minutes | services |", "|---|---|---:|---|"]
    rows += [f"| `{nb.stem}` | **{nb.title}**: {nb.teaches} | {nb.minutes} | "
             f"{'broker + PostgreSQL' if nb.needs_services else 'none'} |" for nb in COURSE]
    rows.append(f"| | *total* | {total_minutes()} | |")
    return "\n".join(rows)


def readme_time() -> str:
    """README's sentence of how long the course takes, from the course map (to the nearest half hour)."""
    from effectively_once.course.map import exercise_minutes, total_minutes

    def hours(minutes: int) -> str:
        return f"{round(minutes / 30) / 2:g}"

    return (f"about {hours(total_minutes())} hours for the notebooks ({total_minutes()} minutes) and "
            f"{hours(exercise_minutes())} more for the exercises ({exercise_minutes()} minutes)")


def workshop_plans() -> str:
    """The instructor guide's workshop plans, as Markdown."""
    from effectively_once.course.map import WORKSHOP_PLANS

    return "\n\n".join(plan.markdown() for plan in WORKSHOP_PLANS)


def course_targets() -> dict[Path, str]:
    """Every file the course map writes, with the text it should have."""
    from effectively_once.course.map import COURSE

    readme = (ROOT / "README.md").read_text()
    if README_BEGIN not in readme or README_END not in readme:
        raise SystemExit(f"README.md lacks the course map markers {README_BEGIN!r} ... {README_END!r}")
    head, rest = readme.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    readme = f"{head}{README_BEGIN}\n{readme_table()}\n{README_END}{tail}"
    if not README_TIME.search(readme):
        raise SystemExit(f"README.md lacks the sentence the course map keeps ({README_TIME.pattern!r})")
    out = {ROOT / "README.md": README_TIME.sub(readme_time(), readme, count=1)}
    guide = GUIDE.read_text()
    if GUIDE_BEGIN not in guide or GUIDE_END not in guide:
        raise SystemExit(f"{GUIDE.relative_to(ROOT)} lacks the markers {GUIDE_BEGIN!r} ... {GUIDE_END!r}")
    head, rest = guide.split(GUIDE_BEGIN, 1)
    out[GUIDE] = f"{head}{GUIDE_BEGIN}\n{workshop_plans()}\n{GUIDE_END}{rest.split(GUIDE_END, 1)[1]}"
    for nb in COURSE:
        for kind, minutes in (("notebooks", nb.minutes), ("solutions", nb.exercise_minutes)):
            path = SOURCES / kind / f"{nb.stem}.md"
            if minutes is None or not path.exists():
                continue
            text = path.read_text()
            if not TIME_LINE.search(text):
                raise SystemExit(f"{path.relative_to(ROOT)} has no '**Time:** about N minutes' line")
            out[path] = TIME_LINE.sub(f"**Time:** about {minutes} minutes", text, count=1)
    return out


def course(check_only: bool) -> int:
    stale = [p for p, text in course_targets().items() if p.read_text() != text]
    if check_only:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: differs from the course map in effectively_once/course/map.py "
                  f"(run `python tools/notebooks.py course`)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in course_targets().items():
        if path in stale:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("check", "every .ipynb matches its source, without a kernel"),
                       ("execute", "rebuild from the source and run every cell (needs the stack)"),
                       ("prose", "carry markdown-only edits of the source into the .ipynb"),
                       ("strip", "drop widget state, timings and no-saved-output outputs; renumber the ids"),
                       ("adopt", "write the source from the .ipynb")):
        command = sub.add_parser(name, help=text)
        command.add_argument("names", nargs="*", metavar="NB")
    course_cmd = sub.add_parser("course", help="write the course map into README.md and the Time lines")
    course_cmd.add_argument("--check", action="store_true", help="exit 1 when they differ; write nothing")
    args = parser.parse_args(list(argv) if argv is not None else None)

    if args.command == "course":
        return course(args.check)
    if args.command in ("execute", "adopt") and not args.names:
        parser.error(f"{args.command} needs at least one notebook, e.g. `{args.command} 04`")
    chosen = select(args.names)
    if args.command == "check":
        problems = [p for pair in chosen for p in check_pair(pair)]
        for problem in problems:
            print(problem, file=sys.stderr)
        if course(check_only=True):
            problems.append("course map")
        if not problems:
            print(f"{len(chosen)} notebooks match their sources")
        return 1 if problems else 0
    for pair in chosen:
        if args.command == "execute":
            print(f"executing {pair.name} ...", flush=True)
            execute_pair(pair)
            print(f"wrote {pair.ipynb.relative_to(ROOT)}")
        elif args.command == "prose":
            if carry_prose(pair):
                print(f"wrote {pair.ipynb.relative_to(ROOT)} (markdown only)")
        elif args.command == "strip":
            write_ipynb(nbformat.read(str(pair.ipynb), as_version=4), pair.ipynb)
        elif args.command == "adopt":
            pair.source.parent.mkdir(parents=True, exist_ok=True)
            pair.source.write_text(source_text(nbformat.read(str(pair.ipynb), as_version=4)))
            print(f"wrote {pair.source.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
