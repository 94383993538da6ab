"""Reading rows with psycopg: a query that must return a row says which one when it did not."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from psycopg import Cursor

Row = TypeVar("Row")


def one(cursor: Cursor[Row], what: str) -> Row:
    """The next row of ``cursor``, which must have one; ``what`` names it in the error when it has none.

    ``fetchone()`` returns None when a query found nothing. For a ``count(*)``,
    a ``RETURNING`` or a row this code has just written that means the database
    is not the one the code expects, and a RuntimeError naming the row says so
    where a ``TypeError: 'NoneType' object is not subscriptable`` would not.
    """
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError(f"expected a row for {what}, but the query returned none")
    return row


def columns(cursor: Cursor) -> list[str]:
    """The column names of the result ``cursor`` holds (a statement that returns no rows has none)."""
    if cursor.description is None:
        raise RuntimeError("the statement returned no result set, so it has no columns")
    return [column.name for column in cursor.description]
