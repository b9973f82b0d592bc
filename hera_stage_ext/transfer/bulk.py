"""``one_of``: ``column IN (values)`` for the thousands of names a transfer looks up at once.

A transfer's lookups name a batch of files (an announce, a status poll, a batch pull, the
records of a committed batch), and a status poll names every file still on its way, again and
again. Bound one parameter per value, SQLAlchemy spends more Python per value than the query
costs the database; bound as ONE JSON array that the database unpacks (SQLite's ``json_each``,
PostgreSQL's ``json_array_elements_text``), the cost is one parameter whatever the count, and
no limit on bound variables applies. Both databases still look each value up in the column's
index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, bindparam, func, select

from ..catalogue.db import Database


def one_of(db: Database, column: Any, values: Sequence[str]) -> Any:
    """``column IN values`` for a text column, ``values`` bound as one JSON array."""
    if db.backend == "postgresql":
        unpacked = func.json_array_elements_text(
            bindparam(None, list(values), type_=JSON)).table_valued("value")
    else:  # SQLite's JSON1 (built in since 3.38)
        unpacked = func.json_each(json.dumps(list(values))).table_valued("value")
    return column.in_(select(unpacked.c.value))
