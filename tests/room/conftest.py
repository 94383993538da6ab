"""The room lane (`make test-room`): thirty learners on one secured stack, and the doors of a learner removed.

Each module brings its own secured stack up (``tests/room/room_helpers.py``),
so this lane needs no stack from ``tools/lanes.py``. It is heavy (minutes on
two cores), so `make test` leaves it out; `make test-all` runs it.
"""
