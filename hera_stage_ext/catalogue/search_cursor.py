"""Sorting search results and keyset pagination: the sorts each kind allows (``SORTS``), the
``ORDER BY`` of one (NULLs last in ascending order, first in descending order, so descending is
the exact reverse), the predicate for the rows strictly after a cursor (``rows_after``), and the
cursor itself: the sort values of a page's last row, tied to its search (``search_digest``) and
sort, as opaque URL-safe text (``encode_cursor``), checked strictly when it comes back
(``decode_cursor``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, DateTime, Float, String, and_, false, or_
from sqlalchemy.types import TypeEngine

from ..errors import SearchError
from .models import File, Instance, Observation, Session, Store
from .search_clauses import Ctx
from .search_parse import INT_MAX, INT_MIN, describe


@dataclass(frozen=True)
class SortKey:
    type: str  # "str" | "int" | "float" | "datetime"
    column: Callable[[], Any]
    value: Callable[[Any], Any]  # row -> value
    nullable: bool = False


def _key(column: Callable[[], Any], type_: str, attr: str, nullable: bool = False) -> SortKey:
    return SortKey(type_, column, lambda row: getattr(row, attr), nullable)


#: Allowed ``sort`` values per kind (prefix with "-" for descending); the first is the default
#: and the unique key that breaks ties.
SORTS: dict[str, dict[str, SortKey]] = {
    "files": {
        "name": _key(lambda: File.name, "str", "name"),
        "obsid": _key(lambda: File.obsid, "int", "obsid", nullable=True),
        "size": _key(lambda: File.size, "int", "size"),
        "create_time": _key(lambda: File.create_time, "datetime", "create_time"),
        "type": _key(lambda: File.type, "str", "type"),
    },
    "instances": {
        "id": _key(lambda: Instance.id, "int", "id"),
        "name": SortKey("str", lambda: File.name, lambda row: row.file.name),
        "store_name": SortKey("str", lambda: Store.name, lambda row: row.store.name),
        "create_time": _key(lambda: Instance.create_time, "datetime", "create_time"),
    },
    "observations": {
        "obsid": _key(lambda: Observation.obsid, "int", "obsid"),
        "start_time_jd": _key(lambda: Observation.start_time_jd, "float", "start_time_jd"),
        "stop_time_jd": _key(lambda: Observation.stop_time_jd, "float", "stop_time_jd"),
        "start_lst_hr": _key(lambda: Observation.start_lst_hr, "float", "start_lst_hr"),
        "session_id": _key(lambda: Observation.session_id, "int", "session_id", nullable=True),
    },
    "sessions": {
        "id": _key(lambda: Session.id, "int", "id"),
        "start_time_jd": _key(lambda: Session.start_time_jd, "float", "start_time_jd"),
        "stop_time_jd": _key(lambda: Session.stop_time_jd, "float", "stop_time_jd"),
    },
}


def resolve_sort(kind: str, sort: Any) -> tuple[str, bool, list[SortKey]]:
    """(canonical sort text, descending, keys: the sort column then the unique key)."""
    choices = SORTS[kind]
    unique = next(iter(choices))
    if sort is None or sort == "":
        name, descending = unique, False
    else:
        if not isinstance(sort, str):
            raise SearchError(f"sort must be a string, got {describe(sort)}")
        descending = sort.startswith("-")
        name = sort[1:] if descending else sort
        name = name.replace("-", "_")
        if name not in choices:
            raise SearchError(
                f"unknown sort {sort!r} for {kind}; expected one of "
                f"{', '.join(choices)} (prefix with '-' for descending)"
            )
    keys = [choices[name]] if name == unique else [choices[name], choices[unique]]
    return ("-" if descending else "") + name, descending, keys


def _sort_column(ctx: Ctx, key: SortKey) -> Any:
    column = key.column()
    # Strings sort byte-wise on both databases (file.name already has collation "C").
    if ctx.postgresql and key.type == "str" and column is not File.name:
        column = column.collate("C")
    return column


def order_by(ctx: Ctx, keys: list[SortKey], descending: bool) -> list[Any]:
    # NULLs last in ascending order, first in descending order: descending is the exact reverse.
    order = []
    for key in keys:
        column = _sort_column(ctx, key)
        clause = column.desc() if descending else column.asc()
        if key.nullable:
            clause = clause.nulls_first() if descending else clause.nulls_last()
        order.append(clause)
    return order


def rows_after(ctx: Ctx, keys: list[SortKey], values: list[Any], descending: bool,
               position: int = 0) -> Any:
    """Rows strictly after ``values`` in the order of ``order_by`` (``values[0]`` is the
    cursor's value at ``position``, ``ctx.cursor_values``' numbering)."""
    key, value = keys[0], values[0]
    column = _sort_column(ctx, key)
    if value is None:  # only for nullable keys
        beyond = column.is_not(None) if descending else false()
        same = column.is_(None)
    else:
        bind = ctx.bind(value, _CURSOR_VALUE[position], _SORT_TYPES[key.type]())
        beyond = column < bind if descending else column > bind
        if key.nullable:
            beyond = and_(column.is_not(None), beyond)
            if not descending:
                beyond = or_(beyond, column.is_(None))
            same = and_(column.is_not(None), column == bind)
        else:
            same = column == bind
    if len(keys) == 1:
        return beyond
    return or_(beyond, and_(same, rows_after(ctx, keys[1:], values[1:], descending,
                                              position + 1)))


_SORT_TYPES: dict[str, type[TypeEngine[Any]]] = {
    "int": BigInteger, "float": Float, "datetime": DateTime, "str": String}


def _cursor_value(position: int) -> Callable[[Ctx, Any], Any]:
    def value(ctx: Ctx, _leaf: Any) -> Any:
        return ctx.cursor_values[position]

    return value


#: The cursor's value at each position of a sort's keys (a sort has at most two).
_CURSOR_VALUE = [_cursor_value(0), _cursor_value(1)]


def search_digest(kind: str, search: Any) -> str:
    try:
        text = json.dumps(
            [kind, search], sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
        )
    except (RecursionError, ValueError):
        text = repr([kind, search])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def encode_cursor(sort: str, digest: str, keys: list[SortKey], row: Any) -> str:
    values = []
    for key in keys:
        value = key.value(row)
        if key.type == "datetime":
            value = value.isoformat()
        values.append(value)
    data = json.dumps({"v": 1, "s": sort, "h": digest, "k": values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode("utf-8")).decode("ascii").rstrip("=")


def _bad_cursor(why: str) -> SearchError:
    return SearchError(f"invalid cursor: {why}; start again without a cursor")


def decode_cursor(cursor: Any, sort: str, digest: str, keys: list[SortKey]) -> list[Any]:
    if not isinstance(cursor, str) or not cursor or len(cursor) > 4096:
        raise _bad_cursor("not a cursor returned by a search")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _bad_cursor("not a cursor returned by a search") from None
    if not isinstance(data, dict) or data.get("v") != 1 or set(data) != {"v", "s", "h", "k"}:
        raise _bad_cursor("not a cursor returned by a search")
    if data["h"] != digest:
        raise _bad_cursor("it belongs to another search")
    if data["s"] != sort:
        raise _bad_cursor(f"it belongs to the sort {data['s']!r}, not {sort!r}")
    values = data["k"]
    if not isinstance(values, list) or len(values) != len(keys):
        raise _bad_cursor("wrong number of sort values")
    decoded = []
    for key, value in zip(keys, values):
        if value is None:
            if not key.nullable:
                raise _bad_cursor("missing sort value")
        elif key.type == "str":
            if not isinstance(value, str) or "\x00" in value or not _encodable(value):
                raise _bad_cursor("bad sort value")
        elif key.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _bad_cursor("bad sort value")
            if not INT_MIN <= value <= INT_MAX:
                raise _bad_cursor("bad sort value")
        elif key.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _bad_cursor("bad sort value")
            value = float(value)
            if not math.isfinite(value):
                raise _bad_cursor("bad sort value")
        elif key.type == "datetime":
            try:
                value = dt.datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise _bad_cursor("bad sort value") from None
            if value.tzinfo is not None:
                raise _bad_cursor("bad sort value")
        decoded.append(value)
    return decoded


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
