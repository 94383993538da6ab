"""The shop's database (``charges``, ``consumer_events``, ``consumer_offsets``): its tables, created on first use.

The consumer, the webhook receiver and the lab each call ``migrate_shop``
when they connect, so whichever starts first creates the tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from effectively_once.schemas import load

if TYPE_CHECKING:
    import psycopg

SHOP_SCHEMA = load("shop.sql")
_MIGRATION_LOCK = 0x45_4F_53_48  # serialises concurrent migrations of one shop database


def migrate_shop(conn: psycopg.Connection) -> None:
    """Create the shop's tables if they are missing (safe to run again, and concurrently)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(SHOP_SCHEMA)
