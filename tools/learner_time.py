"""How long a notebook takes a fresh learner: reading time at a stated pace, plus its measured Run All time.

    python tools/learner_time.py                 # every notebook and solution, run against the stack
    python tools/learner_time.py 03 04b          # some of them
    python tools/learner_time.py --no-run 03     # reading time only, no kernel

The method, stated so that anyone can redo it:

- **reading**: the words of every Markdown cell at ``PROSE_WPM`` words a minute, every line of code
  at ``CODE_LINES_PER_MINUTE`` lines a minute, and the words of every text output the learner reads
  (printed lines, tables, the plain or HTML form of a displayed object) at ``OUTPUT_WPM`` words a
  minute. The paces are assumptions for a reader new to the topic, not measurements; change them
  with ``--prose-wpm`` and the like and the table says what follows.
- **interacting**: ``WIDGET_MINUTES`` for each interactive widget the notebook shows (a proof to
  step through, a slider to turn, a button to press, a quiz to answer), as its prose asks.
- **running**: the notebook is built from its source and every cell run in order against the stack
  (``make up``), as Run All does, in a scratch copy that is never written back; the wall time from
  the first cell's start to the last cell's end is what the learner waits. On a loaded machine this
  is an upper bound.
- **total**: reading plus interacting plus running, rounded up to the next 5 minutes. An exercise's
  time also needs the minutes the learner spends writing code, which this does not measure.

It needs the stack for the running part: ``make up`` first (with your ``EO_HOME``).
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import notebooks  # noqa: E402  (tools/notebooks.py, the sources' reader)

PROSE_WPM = 150
CODE_LINES_PER_MINUTE = 10
OUTPUT_WPM = 300
WIDGET_MINUTES = 3
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WORD = re.compile(r"[A-Za-z0-9_'`.-]+")
TAG = re.compile(r"<[^>]+>")


@dataclass
class LearnerTime:
    """One notebook's reading and running time, and the inputs they were computed from."""

    name: str
    prose_words: int
    code_lines: int
    output_words: int
    widgets: int
    run_seconds: float | None

    def reading_minutes(self, prose_wpm: float, code_lpm: float, output_wpm: float) -> float:
        """Minutes to read the prose, the code and the outputs at the given paces."""
        return self.prose_words / prose_wpm + self.code_lines / code_lpm + self.output_words / output_wpm

    def total_minutes(self, prose_wpm: float, code_lpm: float, output_wpm: float,
                      widget_minutes: float = WIDGET_MINUTES) -> int:
        """Reading plus interacting plus running, rounded up to the next 5 minutes."""
        minutes = (self.reading_minutes(prose_wpm, code_lpm, output_wpm) + self.widgets * widget_minutes
                   + (self.run_seconds or 0) / 60)
        return 5 * math.ceil(minutes / 5)


def words(text: str) -> int:
    """The words of ``text`` (identifiers and numbers count as words)."""
    return len(WORD.findall(text))


def output_text(output: dict) -> str:
    """What a learner reads of one output: its text, or the text of its HTML without the tags."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    if "text/markdown" in data:
        return data["text/markdown"]
    if "text/html" in data:
        return html.unescape(TAG.sub(" ", data["text/html"]))
    if "text/plain" in data and WIDGET_VIEW not in data:
        return data["text/plain"]
    return ""


def measure(pair: notebooks.Pair, run: bool) -> LearnerTime:
    """Count the notebook's words and lines; with ``run``, execute it against the stack and time it."""
    nb = notebooks.read_source(pair.source)
    prose = sum(words(c.source) for c in nb.cells if c.cell_type == "markdown")
    code = sum(len([line for line in c.source.splitlines() if line.strip()]) for c in nb.cells
               if c.cell_type == "code")
    seconds = None
    if run:
        from nbclient import NotebookClient

        started = time.monotonic()
        NotebookClient(nb, timeout=900, kernel_name=notebooks.KERNELSPEC["name"], record_timing=False,
                       resources={"metadata": {"path": str(pair.ipynb.parent)}}).execute()
        seconds = time.monotonic() - started
        shown = nb
    else:
        import nbformat

        shown = nbformat.read(str(pair.ipynb), as_version=4)  # the stored outputs stand in for a run
    outputs = [o for c in shown.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    widgets = sum(WIDGET_VIEW in o.get("data", {}) for o in outputs)
    return LearnerTime(pair.name, prose, code, sum(words(output_text(o)) for o in outputs), widgets, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NB")
    parser.add_argument("--no-run", action="store_true", help="reading time only; outputs from the stored .ipynb")
    parser.add_argument("--prose-wpm", type=float, default=PROSE_WPM)
    parser.add_argument("--code-lines-per-minute", type=float, default=CODE_LINES_PER_MINUTE)
    parser.add_argument("--output-wpm", type=float, default=OUTPUT_WPM)
    parser.add_argument("--widget-minutes", type=float, default=WIDGET_MINUTES)
    args = parser.parse_args(argv)
    paces = (args.prose_wpm, args.code_lines_per_minute, args.output_wpm)
    print(f"reading: prose {paces[0]:g} words/min, code {paces[1]:g} lines/min, outputs {paces[2]:g} words/min; "
          f"{args.widget_minutes:g} min per widget")
    print(f"{'notebook':<40} {'prose':>6} {'code':>5} {'output':>7} {'widgets':>7} {'read min':>9} {'run s':>6} "
          f"{'total min':>10}")
    for pair in notebooks.select(args.names):
        found = measure(pair, run=not args.no_run)
        run = f"{found.run_seconds:.0f}" if found.run_seconds is not None else "-"
        print(f"{found.name:<40} {found.prose_words:>6} {found.code_lines:>5} {found.output_words:>7} "
              f"{found.widgets:>7} {found.reading_minutes(*paces):>9.1f} {run:>6} "
              f"{found.total_minutes(*paces, args.widget_minutes):>10}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
