"""Pure, seeded, fast models with no I/O.

- :mod:`effectively_once.theory.generals`: the Two Generals' Problem: runs and views, the
  impossibility proof as a list of runs, and a bounded exhaustive check of every decision rule.
- :mod:`effectively_once.theory.channel`: a lossy producer -> broker -> consumer channel under
  at-most-once, at-least-once, idempotent-producer and effectively-once semantics.
"""
