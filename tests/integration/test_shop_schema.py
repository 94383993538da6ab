"""The shop's schema on the stack's PostgreSQL: ``consumer_events.result`` takes only what the consumer writes."""

from __future__ import annotations

import re

import psycopg
import pytest

from effectively_once import stack as stack_mod
from effectively_once.payments.shop import SHOP_SCHEMA, migrate_shop
from effectively_once.protocol import RESULTS

CONSTRAINT = "consumer_events_result_check"
# The schema as it was before the constraint: the same file without its DO block.
SCHEMA_BEFORE = re.sub(r"DO \$\$.*?END \$\$;", "", SHOP_SCHEMA, flags=re.DOTALL)


def _record(conn: psycopg.Connection, result: str) -> None:
    conn.execute("INSERT INTO consumer_events (msg_id, topic, partition, \"offset\", result, layers, consumer_pid)"
                 " VALUES ('m', 't', 0, 0, %s, 'none', 1)", (result,))


def _constraint(conn: psycopg.Connection) -> list[tuple[bool]]:
    """``[(validated,)]`` for the result constraint, ``[]`` without one."""
    return conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = %s"
                        " AND conrelid = 'consumer_events'::regclass", (CONSTRAINT,)).fetchall()


@pytest.fixture
def shop_dsn(stack):
    name = f"shop_schema_{stack_mod.new_run_id()}"
    dsn = stack.create_database(name)
    yield dsn
    stack.drop_database(name)


def test_an_unknown_result_is_refused(shop_dsn):
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        migrate_shop(conn)
        for result in RESULTS:
            _record(conn, result)
        with pytest.raises(psycopg.errors.CheckViolation, match=CONSTRAINT):
            _record(conn, "done")
        migrate_shop(conn)  # again, as every consumer does when it starts: nothing changes
        assert _constraint(conn) == [(True,)]
        counts = conn.execute("SELECT result, count(*) FROM consumer_events GROUP BY result").fetchall()
    assert sorted(counts) == sorted((result, 1) for result in RESULTS)


def test_a_shop_made_before_the_constraint_gets_it_and_keeps_its_rows(shop_dsn):
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_BEFORE)
        assert _constraint(conn) == []
        _record(conn, "charged")
        _record(conn, "charged_twice")  # a result no version of the consumer writes today
        migrate_shop(conn)
        # Every older row stays; the constraint checks every new one, though it could not validate the old.
        assert _constraint(conn) == [(False,)]
        assert conn.execute("SELECT count(*) FROM consumer_events").fetchone() == (2,)
        with pytest.raises(psycopg.errors.CheckViolation, match=CONSTRAINT):
            _record(conn, "charged_twice")
        conn.execute("DELETE FROM consumer_events WHERE result = 'charged_twice'")
        conn.execute(f"ALTER TABLE consumer_events DROP CONSTRAINT {CONSTRAINT}")
        migrate_shop(conn)
        assert _constraint(conn) == [(True,)], "with every older row known, the constraint is validated"
