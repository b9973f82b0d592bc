"""Compiling a search of one kind (a parsed JSON object of clauses, or a list of objects) to one
SQL predicate: the combinators (``and``, ``or``, ``none-of``; objects and lists) are walked, each
leaf clause's payload is checked (``search_parse``) and built by its clause
(``search_clauses``), and the clauses are counted and the nesting limited on the way.
``validate_search`` does all that without running anything.

For a file search whose top-level conjunction has observation clauses, one cheap count on the
observation table (``choose_obs_mode``) decides whether the database should find the files from
the few matching observations (a night: its files are contiguous in name order, so walking the
name index would be slow) or walk the sort order and test each file (most observations match);
see ``search_clauses._file_observation_in``.
"""

from __future__ import annotations

import difflib
from typing import Any

from sqlalchemy import Connection, and_, false, func, literal, not_, or_, select, true
from sqlalchemy.orm import Session as OrmSession

from ..errors import SearchError
from .models import Observation, utcnow
from .search_clauses import CLAUSES, GENERIC, Ctx
from .search_parse import (
    MAX_DEPTH,
    at_path,
    check_int,
    check_kind,
    check_num,
    check_range,
    check_str,
    describe,
    parse_search,
    payload_error,
)


def compile_search(ctx: Ctx, kind: str, search: dict | list, depth: int, path: str) -> Any:
    """A dict (clauses ANDed) or a list of dicts (ANDed), as one predicate (None when
    ``ctx.collect_only``: the search is checked and its shape and values read, no SQL built)."""
    if isinstance(search, list):
        ctx.shape.append("[")
        parts = []
        for i, item in enumerate(search):
            ctx.count_clause()
            parts.append(_all(ctx, _object_clauses(ctx, kind, item, depth, _join(path, i))))
        ctx.shape.append("]")
        return _all(ctx, parts)
    return _all(ctx, _object_clauses(ctx, kind, search, depth, path))


def _all(ctx: Ctx, parts: list[Any]) -> Any:
    return None if ctx.collect_only else and_(true(), *parts)


def search_shape(ctx: Ctx, kind: str, search: dict | list) -> tuple[Any, ...]:
    """Check ``search`` (raising what ``compile_search`` raises) and read its shape: what
    decides its SQL, its values left out. ``ctx.leaves`` gets each leaf clause's value, in
    the order ``compile_search`` numbers them."""
    ctx.collect_only = True
    try:
        compile_search(ctx, kind, search, 1, "")
    finally:
        ctx.collect_only = False
    return tuple(ctx.shape)


def _object_clauses(ctx: Ctx, kind: str, obj: Any, depth: int, path: str) -> list[Any]:
    if not isinstance(obj, dict):
        raise SearchError(
            f"expected an object of clauses at {path or 'the top level'}, got {describe(obj)}",
            path=path,
        )
    if depth > MAX_DEPTH:
        raise SearchError(f"search is nested deeper than {MAX_DEPTH} levels (at {path})", path=path)
    parts = []
    ctx.shape.append("{")
    for name, payload in obj.items():
        ctx.count_clause()
        parts.append(_compile_clause(ctx, kind, name, payload, depth, _join(path, name)))
    ctx.shape.append("}")
    return parts


def _join(path: str, part: Any) -> str:
    return f"{path}/{part}" if path else str(part)


def _compile_clause(ctx: Ctx, kind: str, name: Any, payload: Any, depth: int, path: str) -> Any:
    if not isinstance(name, str):
        raise SearchError(f"clause names must be strings, got {describe(name)}")
    if name in ("and", "or", "none-of"):
        outer_top = ctx.top
        ctx.top = outer_top and name == "and"
        ctx.shape.append(name)
        try:
            items = _combinator_items(ctx, kind, name, payload, depth, path)
        finally:
            ctx.top = outer_top
        if ctx.collect_only:
            return None
        if name == "and":
            return and_(true(), *items)
        if name == "or":
            return or_(false(), *items)
        return not_(or_(false(), *items))
    return _leaf_clause(ctx, kind, name, payload, depth, path)


def _combinator_items(
    ctx: Ctx, kind: str, name: str, payload: Any, depth: int, path: str
) -> list[Any]:
    if isinstance(payload, dict):
        items = _object_clauses(ctx, kind, payload, depth + 1, path)
    elif isinstance(payload, list):
        items = []
        ctx.shape.append("[")
        for i, item in enumerate(payload):
            ctx.count_clause()
            if not isinstance(item, dict):
                raise SearchError(
                    f"clause {name!r}{at_path(path)} expects a list of objects of clauses, "
                    f"but item {i} is {describe(item)}",
                    clause=name,
                    path=_join(path, i),
                )
            items.append(_all(ctx, _object_clauses(ctx, kind, item, depth + 1, _join(path, i))))
        ctx.shape.append("]")
    else:
        raise payload_error(name, path, "an object of clauses or a list of objects", payload)
    return items


def _leaf_clause(ctx: Ctx, kind: str, name: str, payload: Any, depth: int, path: str) -> Any:
    if name in ("always-true", "always-false"):
        ctx.shape.append(name)
        if ctx.collect_only:
            return None
        return true() if name == "always-true" else false()
    clause = CLAUSES[kind].get(name)
    if clause is None:
        close = difflib.get_close_matches(name, [*GENERIC, *CLAUSES[kind]], n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise SearchError(
            f"unknown clause {name!r}{at_path(path)} in a search for {kind}{hint}",
            clause=name,
            path=path,
        )
    kind_of_payload = clause.payload
    value: Any  # what the clause's ``build`` reads, by the kind of its payload
    if kind_of_payload == "ignored":
        value = None
    elif kind_of_payload == "str":
        value = check_str(name, path, payload)
    elif kind_of_payload == "int":
        value = check_int(name, path, payload)
    elif kind_of_payload == "num":
        value = check_num(name, path, payload)
    elif kind_of_payload == "int-range":
        value = check_range(name, path, payload, integer=True)
    elif kind_of_payload == "num-range":
        value = check_range(name, path, payload, integer=False)
    elif kind_of_payload == "observations":
        if not isinstance(payload, (dict, list)):
            raise payload_error(name, path, "an observation search (an object of clauses)", payload)
        ctx.shape.append(name)
        outer_top, ctx.top = ctx.top, False
        try:
            value = compile_search(ctx, "observations", payload, depth + 1, path)
        finally:
            ctx.top = outer_top
        return None if ctx.collect_only else clause.build(ctx, value)
    else:  # pragma: no cover - table error
        raise AssertionError(kind_of_payload)
    ctx.shape.append((name, None if clause.shape is None else clause.shape(value)))
    ctx.leaves.append(value)
    return None if ctx.collect_only else clause.build(ctx, value)


#: A file search whose top-level observation clauses match at most this many observations
#: finds the files from those observations ("drive"); above it, it walks the sort order and tests
#: each file ("scan"). A night of HERA data is about 100 observations.
DRIVE_MAX_OBSERVATIONS = 200

_THROUGH_OBSERVATION_CLAUSES = frozenset(
    f"{attr}-{test}"
    for attr in ("start-time-jd", "stop-time-jd", "start-lst-hr", "session-id")
    for test in ("is-exactly", "greater-than", "less-than", "in-range")
)


def _observation_probe(search: dict | list) -> list[dict]:
    """The observation searches equivalent to the positive observation clauses of the top-level
    conjunction of a (valid) file search: what could drive the query."""
    found: list[dict] = []

    def walk(node: Any) -> None:
        for obj in node if isinstance(node, list) else [node]:
            for name, payload in obj.items():
                if name == "and":
                    walk(payload)
                elif name in _THROUGH_OBSERVATION_CLAUSES:
                    found.append({name: payload})
                elif name == "obs-matches":
                    found.append({"and": payload})

    walk(search)
    return found


def choose_obs_mode(session: OrmSession | Connection, ctx: Ctx, search: dict | list
                    ) -> str | None:
    """One cheap count on the observation table picks how file searches use observations."""
    probe = _observation_probe(search)
    if not probe:
        return None
    predicate = compile_search(Ctx(now=ctx.now, postgresql=ctx.postgresql), "observations", probe,
                               1, "")
    matching = (
        select(literal(1))
        .select_from(Observation)
        .where(predicate)
        .limit(DRIVE_MAX_OBSERVATIONS + 1)
        .subquery()
    )
    found = session.scalar(select(func.count()).select_from(matching)) or 0
    return "drive" if found <= DRIVE_MAX_OBSERVATIONS else "scan"


def search_predicate(ctx: Ctx, kind: str, search: Any) -> Any:
    check_kind(kind)
    return compile_search(ctx, kind, parse_search(search), 1, "")


def validate_search(kind: str, search: Any) -> None:
    """Raise ``SearchError`` unless ``search`` (JSON text or parsed) is a valid search of
    ``kind``: unknown kind or clause, wrong payload type, too deep, too many clauses."""
    search_predicate(Ctx(now=utcnow(), postgresql=False), kind, search)
