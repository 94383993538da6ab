"""A one-line progress bar on stderr, for command-line work that takes a while."""

from __future__ import annotations

import sys
from collections.abc import Callable


def text_bar(label: str, width: int = 30) -> Callable[[int, int], None]:
    """``show(done, total)`` redraws ``label [####....] done/total`` in place; a newline once done."""

    def show(done: int, total: int) -> None:
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr,
              flush=True)

    return show
