"""What the idempotent producer costs on the broker at hand, as a ratio measured side by side.

The same seeded charge messages are produced with ``enable.idempotence`` on and
off (``acks=all`` in both), alternating the modes round after round; the script
prints every run, the median throughput of each mode, their ratio, and the
spread of the per-round ratios (the noise floor of this machine). Attaches to
the running stack, or starts a private one.

    .venv/bin/python benchmarks/idempotence.py [--messages 20000] [--rounds 9] [--json]
"""

from __future__ import annotations

import sys

from effectively_once import measure

DEFAULTS = ["--messages", "20000", "--rounds", "9"]

if __name__ == "__main__":
    args = sys.argv[1:]
    for flag, value in zip(DEFAULTS[::2], DEFAULTS[1::2], strict=True):
        if flag not in args:
            args += [flag, value]
    sys.exit(measure.main(args))
