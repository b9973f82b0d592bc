"""A files page of a top-level ``or`` on PostgreSQL, read branch by branch.

``{"or": {"name-is-exactly": ..., "name-matches": "zen.2458450.%", "obsid-in-range": [...]}}``
as one ``WHERE a OR b OR c ORDER BY name LIMIT 101`` is a bitmap OR of the three indexes: every
matching row (2,001 for one exact name and two nights) is read from the table, checked against
the whole OR and sorted. Read branch by branch instead, each branch's first ``limit + 1`` rows
in name order (the name index stops after 101 rows of the night, the obsid index's night is
sorted alone), merged in name order and each file kept once (``DISTINCT ON (name)``: a file
two branches match comes twice), PostgreSQL reads 1,102 rows and sorts none of the merged ones:
the backend's CPU for that page 0.93-0.98 -> 0.63-0.65 ms, its wall time at load 8 2.2-3.1 ->
1.3-1.9 ms (benchmarks/README.md, session 13). The page is the same: the first ``n`` rows of a
union are among the union of each branch's first ``n``.

Only where every branch is led by an index (an exact name or obsid, an obsid range, a name
pattern with a literal prefix; a branch is a single clause or an object of clauses, ANDed): a
branch no index serves is a scan of its own, and two of them would cost twice the one scan of
the plain OR. Only in name order (files' default and ``-name``): the name is unique, so one
``DISTINCT ON`` column removes a file's second copy. SQLite keeps the plain OR (its multi-index
OR is what its planner does best, and its pages meet the target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select, union_all
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BooleanClauseList, Grouping

try:  # SQLAlchemy 2.1; 2.0 spells it distinct(column), which 2.1 deprecates
    from sqlalchemy.dialects.postgresql import distinct_on
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    distinct_on = None  # type: ignore[assignment]

#: Most branches read one by one (each is planned: a long list of names stays one bitmap OR).
MAX_BRANCHES = 8

#: File clauses that an index answers (``file_name_key``, ``ix_file_obsid``).
_INDEXED = frozenset({"name-is-exactly", "obsid-is-exactly", "obsid-in-range"})


def _indexed(leaf: Any) -> bool:
    if not isinstance(leaf, tuple) or len(leaf) != 2:
        return False
    name, shape = leaf
    # A name pattern's shape: (has a literal prefix, ...): the prefix is an index range.
    return name in _INDEXED or (name == "name-matches" and isinstance(shape, tuple)
                                and bool(shape) and shape[0] is True)


def indexed_branches(shape: Sequence[Any]) -> int | None:
    """The number of branches of a search of this shape (``search_compile.search_shape``) when it
    is a top-level ``or`` whose every branch has a clause an index answers and no combinator,
    else None."""
    shape = tuple(shape)
    if shape[:3] == ("{", "or", "{") and shape[-2:] == ("}", "}"):
        leaves = shape[3:-2]
        ok = all(_indexed(leaf) for leaf in leaves)
        return len(leaves) if ok and 2 <= len(leaves) <= MAX_BRANCHES else None
    if shape[:3] != ("{", "or", "[") or shape[-2:] != ("]", "}"):
        return None
    branches: list[list[Any]] = []
    current: list[Any] | None = None
    for part in shape[3:-2]:
        if part == "{" and current is None:
            current = []
        elif part == "}" and current is not None:
            branches.append(current)
            current = None
        elif current is not None and isinstance(part, tuple):
            current.append(part)
        else:  # a nested combinator, a constant clause, anything else: the plain OR
            return None
    if current is not None or not 2 <= len(branches) <= MAX_BRANCHES:
        return None
    if not all(branch and any(_indexed(leaf) for leaf in branch) for branch in branches):
        return None
    return len(branches)


def merged_page(columns: Sequence[Any], predicate: Any, branches: int, after: Any,
                order: list[Any], name_column: Any, descending: bool, page_limit: Any
                ) -> Select | None:
    """``SELECT columns WHERE predicate [AND after] ORDER BY order LIMIT page_limit`` as the
    merge of its ``branches`` OR branches (``predicate``'s), each limited alone; None when the
    predicate is not an OR of that many branches (what SQLAlchemy left of it)."""
    while isinstance(predicate, Grouping):
        predicate = predicate.element
    if not isinstance(predicate, BooleanClauseList) or predicate.operator is not operators.or_:
        return None
    clauses = list(predicate.clauses)
    if len(clauses) != branches:
        return None
    parts = []
    for clause in clauses:
        part = select(*columns).where(clause)
        if after is not None:
            part = part.where(after)
        parts.append(part.order_by(*order).limit(page_limit))
    merged = union_all(*parts).subquery("branches")
    name = merged.c[name_column.key]
    stmt = select(*merged.c)
    stmt = stmt.distinct(name) if distinct_on is None else stmt.ext(distinct_on(name))
    return stmt.order_by(name.desc() if descending else name.asc()).limit(page_limit)
