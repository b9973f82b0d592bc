"""``one_of``: ``column IN (values)`` for any number of values, bound as ONE parameter.

The one way the package asks for the rows of a list of keys: the names of an ingest batch, of an
announce or a status poll, the ids of a batch of job items. Bound one parameter per value,
SQLAlchemy spends more Python per value than the query costs the database, and SQLite caps the
bound variables of a statement (32,766); bound as one array (PostgreSQL's ``= ANY(array)``, which
the planner sizes from the array it is given) or as one JSON array that SQLite unpacks
(``json_each``, built in since 3.38), the cost is one parameter whatever the count, with no cap.
Both databases still look each value up in the column's index.

``one_of`` is the condition for SQLAlchemy statements; ``one_of_sql`` and ``bound_values`` are the
same condition for SQL handed to the database driver directly (``tables``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import BigInteger, Text, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

from .db import Database


def one_of(db: Database, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """``column IN values`` on ``db``, for a text or integer column."""
    values = list(values)
    if db.backend == "postgresql":
        element = BigInteger() if values and isinstance(values[0], int) else Text()
        return column == any_(bindparam(None, values, type_=ARRAY(element)))
    unpacked = func.json_each(json.dumps(values)).table_valued("value")
    return column.in_(select(unpacked.c.value))


def one_of_sql(backend: str, column: str) -> str:
    """The SQL text of ``column IN`` one bound list (``bound_values``), for the driver's
    paramstyle (psycopg's ``%s``, sqlite3's ``?``)."""
    if backend == "postgresql":
        return f"{column} = ANY(%s)"
    return f"{column} IN (SELECT value FROM json_each(?))"


def bound_values(backend: str, values: Iterable[Any]) -> Any:
    """The parameter of ``one_of_sql`` for ``values``."""
    return list(values) if backend == "postgresql" else json.dumps(list(values))
