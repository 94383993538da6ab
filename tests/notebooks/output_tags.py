"""The course's own tag for a cell whose output changes from run to run, taught to nbval.

A notebook's cells carry ``output-varies`` (pids, ports, timings, widgets): the
learner's notebook names no test tool. nbval knows the same meaning under its
own tag, ``nbval-ignore-output``; the inner pytest of the notebooks lane loads
this module (``-p tests.notebooks.output_tags``) so that nbval reads both.
nbval registers its own alias ``raises-exception`` in the same table.
"""

from __future__ import annotations

from nbval import plugin

OUTPUT_VARIES = "output-varies"
NBVAL_IGNORE_OUTPUT = "nbval-ignore-output"

plugin.metadata_tags[OUTPUT_VARIES] = plugin.metadata_tags[NBVAL_IGNORE_OUTPUT]
