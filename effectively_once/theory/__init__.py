"""Pure, seeded, fast models with no I/O.

- :mod:`effectively_once.theory.generals`: the Two Generals' Problem: runs and views, the
  impossibility proof as a list of runs, a bounded exhaustive check of every decision rule, and a
  consumer's dedup log, with what a crash between its effect and its log entry does.
- :mod:`effectively_once.theory.channel`: a lossy producer -> broker -> consumer channel under
  at-most-once, at-least-once, idempotent-producer and effectively-once semantics.
"""
