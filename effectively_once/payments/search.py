"""Stripe's Search query language, the subset the course uses, turned into SQL.

``GET /v1/payment_intents/search?query=...`` and ``GET /v1/charges/search``
take Stripe's query language (https://docs.stripe.com/search#search-query-language):

    metadata['msg_id']:'m-1'
    status:'succeeded' AND amount>1000
    -currency:'eur'

A clause is ``field``, an operator, and a value. ``:`` is an exact match;
``>``, ``<``, ``>=``, ``<=`` compare numeric fields; a leading ``-`` negates
the clause. Strings are quoted, with single or double quotes; numbers may
be bare. ``metadata['key']`` (or ``metadata["key"]``) names one metadata
key. Up to 10 clauses are joined by ``AND`` or by ``OR``, never both in one
query, as Stripe's documentation requires. The substring operator ``~`` and
``null`` values are Stripe's too, and refused here by name.

The fields are those Stripe lists for each resource, as far as the
provider's objects have them (``SEARCH_FIELDS``). An unknown field, or a
query that does not parse, is a ``SearchError``, which the provider answers
with 400 naming ``query``.

What Search is *not*: consistent. Stripe: "Don't use search for
read-after-write flows ... Under normal operating conditions, data is
searchable in under 1 minute. Propagation of new or updated data could be
delayed during an outage" (https://docs.stripe.com/search#data-freshness).
The provider models that by searching the past: every write of an object
records an event holding a snapshot of it, and a search reads the newest
snapshot of each object among the events at least ``search_delay_ms`` old.
An object younger than that is not found; one changed since is found as it
was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_CLAUSES = 10
MAX_QUERY_CHARS = 1000

FieldKind = Literal["string", "numeric", "metadata"]
# Per resource: the search fields Stripe documents that the provider's objects carry
# (https://docs.stripe.com/search#query-fields-for-payment-intents, #query-fields-for-charges).
SEARCH_FIELDS: dict[str, dict[str, FieldKind]] = {
    "payment_intent": {"amount": "numeric", "created": "numeric", "currency": "string", "customer": "string",
                       "metadata": "metadata", "status": "string"},
    "charge": {"amount": "numeric", "created": "numeric", "currency": "string", "customer": "string",
               "metadata": "metadata", "status": "string"},
}

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<connector>AND|OR)(?=\s|$)
    | (?P<neg>-)?(?P<field>[a-z_]+)(?:\[(?P<key>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\])?
      (?P<op>>=|<=|:|>|<|~)
      (?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]+)
    )""", re.VERBOSE)


class SearchError(ValueError):
    """A query the provider cannot run; ``str(exc)`` says what is wrong, for a 400 naming ``query``."""


@dataclass(frozen=True)
class Clause:
    """One ``field op value`` of a query; ``key`` is the metadata key for ``metadata['key']``."""

    field: str
    op: str
    value: str | float
    negated: bool = False
    key: str | None = None


@dataclass(frozen=True)
class Query:
    """A parsed query: its clauses and the one connector that joins them (``AND`` or ``OR``)."""

    resource: str
    clauses: tuple[Clause, ...]
    connector: Literal["AND", "OR"] = "AND"


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def parse(query: str, resource: str) -> Query:
    """Parse ``query`` for ``resource`` (``payment_intent`` or ``charge``); ``SearchError`` says what is wrong."""
    fields = SEARCH_FIELDS[resource]
    if not query.strip():
        raise SearchError("The search query is empty: write a clause such as metadata['msg_id']:'m-1'.")
    if len(query) > MAX_QUERY_CHARS:
        raise SearchError(f"The search query is longer than {MAX_QUERY_CHARS} characters.")
    clauses: list[Clause] = []
    connectors: set[str] = set()
    position, expect_clause = 0, True
    while position < len(query):
        if not query[position:].strip():
            break
        match = _TOKEN.match(query, position)
        if match is None or (match.group("connector") is not None) == expect_clause:
            what = "a clause such as status:'succeeded'" if expect_clause else "AND or OR"
            raise SearchError(f"The search query does not parse at character {position + 1} "
                              f"({query[position:position + 20].strip()!r}): expected {what}.")
        position = match.end()
        if match.group("connector"):
            connectors.add(match.group("connector"))
            expect_clause = True
            continue
        expect_clause = False
        clauses.append(_clause(match, fields, resource))
    if expect_clause:
        raise SearchError("The search query ends with AND or OR: a clause must follow.")
    if len(connectors) > 1:
        raise SearchError("The search query mixes AND and OR; Stripe's query language allows one of them per query.")
    if len(clauses) > MAX_CLAUSES:
        raise SearchError(f"The search query has {len(clauses)} clauses; at most {MAX_CLAUSES} are allowed.")
    connector: Literal["AND", "OR"] = "OR" if connectors == {"OR"} else "AND"
    return Query(resource, tuple(clauses), connector)


def _clause(match: re.Match, fields: dict[str, FieldKind], resource: str) -> Clause:
    field, op, raw = match.group("field"), match.group("op"), match.group("value")
    kind = fields.get(field)
    if kind is None:
        raise SearchError(f"Field '{field}' is an unsupported search field for resource '{resource}'; "
                          f"the fields are {', '.join(sorted(fields))}.")
    if op == "~":
        raise SearchError("The substring operator ~ is not supported by this provider; use ':' for an exact match.")
    key = match.group("key")
    if (kind == "metadata") != (key is not None):
        raise SearchError("Name one metadata key: metadata['key']:'value'." if kind == "metadata"
                          else f"Field '{field}' takes no [key].")
    quoted = raw[0] in "'\""
    if not quoted and raw == "null":
        raise SearchError("null values are not supported by this provider.")
    if kind == "numeric":
        text = _unquote(raw) if quoted else raw
        try:
            number = float(text)
        except ValueError:
            raise SearchError(f"Field '{field}' is numeric: compare it with a number, not {raw}.") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise SearchError(f"Field '{field}' is numeric: compare it with a finite number.")
        return Clause(field, op, number, bool(match.group("neg")))
    if op != ":":
        raise SearchError(f"Field '{field}' is a string: only ':' (an exact match) applies to it.")
    if not quoted:
        raise SearchError(f"Quote the value of '{field}': {field}:'{raw}'.")
    return Clause(field, op, _unquote(raw), bool(match.group("neg")),
                  key=_unquote(key) if key is not None else None)


_SQL_OPS = {":": "=", ">": ">", "<": "<", ">=": ">=", "<=": "<="}


def to_sql(query: Query) -> tuple[str, list[str | float]]:
    """The ``WHERE`` condition over a ``snapshot`` jsonb column that ``query`` stands for, and its parameters.

    Field names come from ``SEARCH_FIELDS``, never from the query's text, and
    every value travels as a parameter.
    """
    parts: list[str] = []
    params: list[str | float] = []
    for clause in query.clauses:
        if clause.key is not None:
            condition = "snapshot->'metadata'->>%s = %s"
            params += [clause.key, clause.value]
        elif isinstance(clause.value, float):
            condition = f"(snapshot->>'{clause.field}')::numeric {_SQL_OPS[clause.op]} %s"
            params.append(clause.value)
        else:
            condition = f"snapshot->>'{clause.field}' = %s"
            params.append(clause.value)
        # IS NOT TRUE, not NOT: a field that is null matches the negation, as it is "not that value".
        parts.append(f"({condition}) IS NOT TRUE" if clause.negated else f"({condition}) IS TRUE")
    return f" {query.connector} ".join(parts), params
