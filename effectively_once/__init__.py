"""Exactly-Once in Production: the helper package beneath the course notebooks.

The notebooks import from here; the logic lives here so that a notebook cell
only calls a function and shows what it returns.
"""

__version__ = "0.1.0"
