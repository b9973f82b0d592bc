"""The HERA Librarian's JSON search language, compiled to SQL (SQLAlchemy), with keyset pagination.

A search is a JSON object whose keys are *clauses*, ANDed; a list of objects is also accepted (the
objects are ANDed). Every clause is compiled to one SQL predicate: nothing is ever filtered in
Python, and no list of ids is ever built in Python.

Generic clauses
    ``and``, ``or``, ``none-of``  an object of clauses, or (our extension) a list of objects, so a
                                  clause can be repeated: ``{"or": [{"name-matches": "%.uv"},
                                  {"name-matches": "%.uvc"}]}``. ``none-of`` = NOT (a OR b ...).
                                  Empty: ``and`` is true, ``or`` is false, ``none-of`` is true.
    ``always-true``, ``always-false``  the payload is ignored.

Attribute clauses, generated per attribute X
    string   ``X-is-exactly``, ``X-is-not``, ``X-matches`` (SQL LIKE, case-sensitive on both
             databases: ``%`` any run, ``_`` one character; there is no escape character, so a
             backslash is an ordinary character)
    integer  ``X-is-exactly``, ``X-is-not``, ``X-greater-than``, ``X-less-than`` (strict),
             ``X-in-range`` ([a, b], inclusive, swapped if reversed), ``X-not-in-range``
    float    as integer, without ``-is-exactly`` / ``-is-not``

Attributes per kind of search (s = string, i = integer, f = float)
    files         name s, type s, source s, size i, obsid i, num-instances i (count of instances),
                  and through the file's observation: start-time-jd f, stop-time-jd f,
                  start-lst-hr f, session-id i.
                  Special: ``obs-matches`` (an observation sub-search), ``obsid-is-null`` (payload
                  ignored), ``not-older-than`` / ``not-newer-than`` (days: create_time strictly
                  after / before ``now - days``, as in v1); aliases ``name-like`` =
                  ``name-matches``, ``source-is`` = ``source-is-exactly``.
    instances     every file clause (applied to the instance's file), plus store-name s and
                  deletion-policy s.
    observations  obsid i, start-time-jd f, stop-time-jd f, start-lst-hr f, session-id i,
                  duration f (days, stop - start), num-files i, total-size i (sum of the file
                  sizes, 0 without files).
    sessions      session-id i, start-time-jd f, stop-time-jd f, duration f, num-obs i,
                  num-files i, age f (days since the session stopped: the JD of ``now`` minus
                  stop_time_jd), ``no-file-has-event`` (an event type: true when no file of the
                  session's observations has an event of that type).

NULL semantics (a file's obsid, a file's observation and session, an observation's session may
be missing)
    * A positive comparison (``-is-exactly``, ``-matches``, ``-greater-than``, ``-less-than``,
      ``-in-range``, ``obs-matches``) never matches a missing value.
    * ``-is-not`` and ``-not-in-range`` are the exact negations of ``-is-exactly`` and
      ``-in-range``: a file without an obsid matches ``obsid-is-not 5`` and
      ``obsid-not-in-range``, and a file without an observation matches
      ``start-time-jd-not-in-range``. (v1 documented "never matches", but its SQL was three-valued
      and so inconsistent under ``none-of``.)
    * ``none-of`` is the exact logical NOT. For that every compiled predicate is two-valued (never
      SQL NULL): positives on nullable values are ``col IS NOT NULL AND col = v``, and values
      reached through the observation are ``file.obsid IS NOT NULL AND file.obsid IN (SELECT ...)``.

Limits: a search text of at most ``MAX_SEARCH_BYTES`` bytes, objects nested at most ``MAX_DEPTH``
deep, at most ``MAX_CLAUSES`` clauses (each key counts, and each object of a list), strings of at
most ``MAX_STRING_LENGTH`` characters, integers within signed 64 bits, finite numbers. A key
repeated within one JSON object is an error (v1 silently kept the last one): use a list of
objects.

Performance: ``name-matches`` is compiled to ``name >= prefix AND name < next(prefix) AND name
LIKE pattern``, where prefix is the literal text before the first wildcard, so that the name index
answers it (SQLite's LIKE cannot use an index with a bound pattern); names compare byte-wise on
both databases (SQLite BINARY, PostgreSQL collation "C"). Counts are correlated scalar
subqueries on indexed foreign keys; observation attributes of files are sub-selects on the
observation table. For those, one cheap count on the observation table (``_choose_obs_mode``)
decides whether the database should find the files from the few matching observations (a night:
its files are contiguous in name order, so walking the name index would be slow) or walk the
sort order and test each file (most observations match); see ``_file_observation_in``.

Pagination is keyset (cursor) based, never OFFSET: see ``run_search``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import difflib
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Float,
    Select,
    String,
    and_,
    any_,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import aliased, contains_eager

from ..errors import SearchError
from .models import Event, File, Instance, Observation, Session, Store, utcnow
from .naming import datetime_to_jd

__all__ = [
    "KINDS",
    "MAX_CLAUSES",
    "MAX_DEPTH",
    "MAX_LIMIT",
    "MAX_SEARCH_BYTES",
    "MAX_STRING_LENGTH",
    "SORTS",
    "SearchPage",
    "clause_names",
    "parse_search",
    "run_search",
    "search_select",
    "validate_search",
]

#: The kinds of things one can search for.
KINDS = ("files", "instances", "observations", "sessions")
#: Deepest nesting of objects (the top-level object is depth 1).
MAX_DEPTH = 16
#: Most clauses in one search (every key counts, and every object of a list).
MAX_CLAUSES = 256
#: Longest search text, in UTF-8 bytes.
MAX_SEARCH_BYTES = 64 * 1024
#: Longest string payload, in characters (file names are at most 256).
MAX_STRING_LENGTH = 1024
#: Largest page.
MAX_LIMIT = 10_000

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class SearchPage(NamedTuple):
    """One page of results: ORM rows, the cursor of the next page (None on the last page) and
    the number of matching rows (None unless ``count=True`` was asked)."""

    rows: list
    next_cursor: str | None
    total: int | None


# --------------------------------------------------------------------------------------------
# Parsing


def _reject_constant(name: str) -> Any:
    raise SearchError(f"invalid JSON: {name} is not a number JSON allows")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SearchError(
                f"clause {key!r} appears twice in one object; to repeat a clause use a list of "
                f'objects, e.g. {{"or": [{{{json.dumps(key)}: ...}}, {{{json.dumps(key)}: ...}}]}}'
            )
        result[key] = value
    return result


def parse_search(value: str | bytes | dict | list) -> dict | list:
    """A search as a JSON object (or list of objects), from JSON text or an already parsed value.

    Raises ``SearchError`` for text over ``MAX_SEARCH_BYTES``, invalid JSON (naming the line and
    column), a key repeated in one object, NaN/Infinity, or a top level that is not an object or
    a list of objects. No comment stripping: ``#`` is an ordinary character.
    """
    if isinstance(value, (bytes, bytearray)):
        if len(value) > MAX_SEARCH_BYTES:
            raise SearchError(f"search text is larger than {MAX_SEARCH_BYTES} bytes")
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SearchError(f"search text is not valid UTF-8 (byte {exc.start})") from None
    if isinstance(value, str):
        if len(value) > MAX_SEARCH_BYTES or (
            len(value.encode("utf-8", "surrogatepass")) > MAX_SEARCH_BYTES
        ):
            raise SearchError(f"search text is larger than {MAX_SEARCH_BYTES} bytes")
        try:
            parsed = json.loads(
                value, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
            )
        except json.JSONDecodeError as exc:
            raise SearchError(
                f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                line=exc.lineno,
                column=exc.colno,
            ) from None
        except RecursionError:
            raise SearchError(f"search is nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:  # e.g. an integer literal with too many digits
            raise SearchError(f"invalid JSON: {exc}") from None
    elif isinstance(value, (dict, list)):
        parsed = value
    else:
        raise SearchError(
            f"a search must be JSON text, an object or a list of objects, got {_describe(value)}"
        )
    if isinstance(parsed, list):
        for i, item in enumerate(parsed):
            if not isinstance(item, dict):
                raise SearchError(
                    f"a search list must hold objects of clauses; item {i} is {_describe(item)}"
                )
    elif not isinstance(parsed, dict):
        raise SearchError(
            f"a search must be a JSON object of clauses (or a list of objects), "
            f"got {_describe(parsed)}"
        )
    return parsed


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the integer {value}" if abs(value) < 10**30 else "a very large integer"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------------
# Compilation context and payload checks


@dataclass
class _Ctx:
    now: dt.datetime
    postgresql: bool
    clauses: int = 0
    # How a file's observation clauses in the top-level conjunction are compiled (see
    # ``_file_observation_in``): None (plain IN), "drive" or "scan".
    obs_mode: str | None = None
    top: bool = True  # compiling a clause of the top-level conjunction

    @property
    def now_jd(self) -> float:
        return datetime_to_jd(self.now)

    def count_clause(self) -> None:
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise SearchError(f"search has more than {MAX_CLAUSES} clauses")


def _where(path: str) -> str:
    return f" (at {path})" if "/" in path else ""


def _fail(name: str, path: str, expected: str, payload: Any) -> SearchError:
    return SearchError(
        f"clause {name!r}{_where(path)} expects {expected}, got {_describe(payload)}",
        clause=name,
        path=path,
    )


def _check_str(name: str, path: str, payload: Any) -> str:
    if not isinstance(payload, str):
        raise _fail(name, path, "a string", payload)
    if len(payload) > MAX_STRING_LENGTH:
        raise SearchError(
            f"clause {name!r}{_where(path)}: string longer than {MAX_STRING_LENGTH} characters"
        )
    if "\x00" in payload:
        raise SearchError(f"clause {name!r}{_where(path)}: string contains a NUL character")
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError:
        raise SearchError(
            f"clause {name!r}{_where(path)}: string contains an unpaired surrogate"
        ) from None
    return payload


def _check_int(name: str, path: str, payload: Any, what: str = "an integer") -> int:
    if isinstance(payload, bool) or not isinstance(payload, int):
        if isinstance(payload, float):
            raise SearchError(
                f"clause {name!r}{_where(path)} expects {what}, got the number {payload!r} "
                "(write integers without a decimal point or exponent)",
                clause=name,
                path=path,
            )
        raise _fail(name, path, what, payload)
    if not _INT_MIN <= payload <= _INT_MAX:
        raise SearchError(
            f"clause {name!r}{_where(path)}: the integer is outside the signed 64-bit range",
            clause=name,
            path=path,
        )
    return payload


def _check_num(name: str, path: str, payload: Any, what: str = "a number") -> float:
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        raise _fail(name, path, what, payload)
    try:
        value = float(payload)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise SearchError(f"clause {name!r}{_where(path)} expects a finite number")
    return value


def _check_range(name: str, path: str, payload: Any, integer: bool) -> tuple[Any, Any]:
    expected = "a list of two integers" if integer else "a list of two numbers"
    if not isinstance(payload, list) or len(payload) != 2:
        raise _fail(name, path, f"{expected} [low, high]", payload)
    check = _check_int if integer else _check_num
    low, high = (check(name, path, item, expected) for item in payload)
    return (low, high) if low <= high else (high, low)


# --------------------------------------------------------------------------------------------
# Attributes: each knows how to apply a comparison to its value as a two-valued predicate.

Tester = Callable[[_Ctx, Callable[[Any], ColumnElement[bool]]], ColumnElement[bool]]


@dataclass(frozen=True)
class _Attr:
    type: str  # "s" | "i" | "f"
    test: Tester
    indexed_prefix: bool = False  # compile -matches prefixes to an index range


def _column(get: Callable[[_Ctx], Any], *, nullable: bool = False) -> Tester:
    def test(ctx: _Ctx, compare: Callable[[Any], ColumnElement[bool]]) -> ColumnElement[bool]:
        value = get(ctx)
        if nullable:
            return and_(value.is_not(None), compare(value))
        return compare(value)

    return test


def _through_observation(attr: _Attr) -> Tester:
    """A file's (or instance's file's) view of one attribute of its observation."""

    def test(ctx: _Ctx, compare: Callable[[Any], ColumnElement[bool]]) -> ColumnElement[bool]:
        return _file_observation_in(ctx, select(Observation.obsid).where(attr.test(ctx, compare)))

    return test


def _file_observation_in(ctx: _Ctx, observations: Select) -> ColumnElement[bool]:
    """``file.obsid IS NOT NULL AND file.obsid IN (observations)``, in the form that leads the
    database to the right plan for ``ORDER BY ... LIMIT`` (chosen by ``_choose_obs_mode``):

    * "drive" (few observations match): find the files of the matching observations through the
      obsid index, then sort. PostgreSQL would rather walk the name index and filter, which is
      slow when the matches are clustered in name order (a session's files are: HERA names
      start with the JD); ``= ANY(ARRAY(...))`` hides the selectivity and makes it drive.
    * "scan" (many match): walk the sort index and test each row. SQLite would drive from the
      IN list whatever its size; ``obsid + 0`` keeps it off the obsid index.
    """
    observations = observations.correlate(None)
    mode = ctx.obs_mode if ctx.top else None
    if mode == "drive" and ctx.postgresql:
        test = File.obsid == any_(func.array(observations.scalar_subquery()))
    elif mode == "scan" and not ctx.postgresql:
        test = (File.obsid + 0).in_(observations)
    else:
        test = File.obsid.in_(observations)
    return and_(File.obsid.is_not(None), test)


def _num_instances(ctx: _Ctx) -> Any:
    inst = aliased(Instance)
    return (
        select(func.count())
        .select_from(inst)
        .where(inst.file_id == File.id)
        .correlate(File)
        .scalar_subquery()
    )


def _obs_num_files(ctx: _Ctx) -> Any:
    f = aliased(File)
    return (
        select(func.count())
        .select_from(f)
        .where(f.obsid == Observation.obsid)
        .correlate(Observation)
        .scalar_subquery()
    )


def _obs_total_size(ctx: _Ctx) -> Any:
    f = aliased(File)
    total = (
        select(func.sum(f.size))
        .where(f.obsid == Observation.obsid)
        .correlate(Observation)
        .scalar_subquery()
    )
    return func.coalesce(total, 0)


def _session_num_obs(ctx: _Ctx) -> Any:
    o = aliased(Observation)
    return (
        select(func.count())
        .select_from(o)
        .where(o.session_id == Session.id)
        .correlate(Session)
        .scalar_subquery()
    )


def _session_num_files(ctx: _Ctx) -> Any:
    o, f = aliased(Observation), aliased(File)
    return (
        select(func.count())
        .select_from(f)
        .join(o, f.obsid == o.obsid)
        .where(o.session_id == Session.id)
        .correlate(Session)
        .scalar_subquery()
    )


_OBS_ATTRS: dict[str, _Attr] = {
    "obsid": _Attr("i", _column(lambda ctx: Observation.obsid)),
    "start-time-jd": _Attr("f", _column(lambda ctx: Observation.start_time_jd)),
    "stop-time-jd": _Attr("f", _column(lambda ctx: Observation.stop_time_jd)),
    "start-lst-hr": _Attr("f", _column(lambda ctx: Observation.start_lst_hr)),
    "session-id": _Attr("i", _column(lambda ctx: Observation.session_id, nullable=True)),
    "duration": _Attr(
        "f", _column(lambda ctx: Observation.stop_time_jd - Observation.start_time_jd)
    ),
    "num-files": _Attr("i", _column(_obs_num_files)),
    "total-size": _Attr("i", _column(_obs_total_size)),
}

_FILE_ATTRS: dict[str, _Attr] = {
    "name": _Attr("s", _column(lambda ctx: File.name), indexed_prefix=True),
    "type": _Attr("s", _column(lambda ctx: File.type)),
    "source": _Attr("s", _column(lambda ctx: File.source)),
    "size": _Attr("i", _column(lambda ctx: File.size)),
    "obsid": _Attr("i", _column(lambda ctx: File.obsid, nullable=True)),
    "num-instances": _Attr("i", _column(_num_instances)),
    **{
        name: _Attr(_OBS_ATTRS[name].type, _through_observation(_OBS_ATTRS[name]))
        for name in ("start-time-jd", "stop-time-jd", "start-lst-hr", "session-id")
    },
}

_INSTANCE_ATTRS: dict[str, _Attr] = {
    "store-name": _Attr("s", _column(lambda ctx: Store.name)),
    "deletion-policy": _Attr("s", _column(lambda ctx: Instance.deletion_policy)),
}

_SESSION_ATTRS: dict[str, _Attr] = {
    "session-id": _Attr("i", _column(lambda ctx: Session.id)),
    "start-time-jd": _Attr("f", _column(lambda ctx: Session.start_time_jd)),
    "stop-time-jd": _Attr("f", _column(lambda ctx: Session.stop_time_jd)),
    "duration": _Attr("f", _column(lambda ctx: Session.stop_time_jd - Session.start_time_jd)),
    "num-obs": _Attr("i", _column(_session_num_obs)),
    "num-files": _Attr("i", _column(_session_num_files)),
    "age": _Attr("f", _column(lambda ctx: literal(ctx.now_jd, Float) - Session.stop_time_jd)),
}


# --------------------------------------------------------------------------------------------
# Clauses


@dataclass(frozen=True)
class _Clause:
    # "ignored" | "str" | "int" | "num" | "int-range" | "num-range" | "observations"
    payload: str
    build: Callable[[_Ctx, Any], ColumnElement[bool]]


def _bind(attr: _Attr, value: Any) -> Any:
    if attr.type == "i":
        return literal(value, BigInteger)
    if attr.type == "f":
        return literal(value, Float)
    return value


def _literal_prefix(pattern: str) -> str:
    for i, char in enumerate(pattern):
        if char in "%_":
            return pattern[:i]
    return pattern


def _prefix_upper(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` (code point order,
    which is UTF-8 byte order), or None if there is none."""
    for i in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[i])
        if code < 0x10FFFF:
            code = 0xE000 if code == 0xD7FF else code + 1
            return prefix[:i] + chr(code)
    return None


def _like(ctx: _Ctx, value: Any, pattern: str, indexed_prefix: bool) -> ColumnElement[bool]:
    # No escape character on either database (PostgreSQL's default escape is a backslash).
    like = value.like(pattern, escape="") if ctx.postgresql else value.like(pattern)
    prefix = _literal_prefix(pattern) if indexed_prefix else ""
    if not prefix:
        return like
    bounds = [value >= prefix]
    upper = _prefix_upper(prefix)
    if upper is not None:
        bounds.append(value < upper)
    return and_(*bounds, like)


def _attribute_clauses(name: str, attr: _Attr) -> dict[str, _Clause]:
    def is_exactly(ctx: _Ctx, v: Any) -> ColumnElement[bool]:
        return attr.test(ctx, lambda col: col == _bind(attr, v))

    def in_range(ctx: _Ctx, v: tuple[Any, Any]) -> ColumnElement[bool]:
        low, high = v
        return attr.test(ctx, lambda col: and_(col >= _bind(attr, low), col <= _bind(attr, high)))

    clauses: dict[str, _Clause] = {}
    scalar = {"s": "str", "i": "int", "f": "num"}[attr.type]
    if attr.type in ("s", "i"):
        clauses[f"{name}-is-exactly"] = _Clause(scalar, is_exactly)
        clauses[f"{name}-is-not"] = _Clause(scalar, lambda ctx, v: not_(is_exactly(ctx, v)))
    if attr.type == "s":
        clauses[f"{name}-matches"] = _Clause(
            "str",
            lambda ctx, v: attr.test(ctx, lambda col: _like(ctx, col, v, attr.indexed_prefix)),
        )
    else:
        range_kind = "int-range" if attr.type == "i" else "num-range"
        clauses[f"{name}-greater-than"] = _Clause(
            scalar, lambda ctx, v: attr.test(ctx, lambda col: col > _bind(attr, v))
        )
        clauses[f"{name}-less-than"] = _Clause(
            scalar, lambda ctx, v: attr.test(ctx, lambda col: col < _bind(attr, v))
        )
        clauses[f"{name}-in-range"] = _Clause(range_kind, in_range)
        clauses[f"{name}-not-in-range"] = _Clause(range_kind, lambda ctx, v: not_(in_range(ctx, v)))
    return clauses


def _attributes_clauses(attrs: dict[str, _Attr]) -> dict[str, _Clause]:
    clauses: dict[str, _Clause] = {}
    for name, attr in attrs.items():
        clauses.update(_attribute_clauses(name, attr))
    return clauses


def _cutoff(now: dt.datetime, days: float) -> dt.datetime:
    try:
        return now - dt.timedelta(days=days)
    except OverflowError:
        return dt.datetime.min if days > 0 else dt.datetime.max


def _no_file_has_event(ctx: _Ctx, event_type: str) -> ColumnElement[bool]:
    e, f, o = aliased(Event), aliased(File), aliased(Observation)
    has_event = (
        select(e.id)
        .join(f, e.file_id == f.id)
        .join(o, f.obsid == o.obsid)
        .where(o.session_id == Session.id, e.type == event_type)
        .correlate(Session)
        .exists()
    )
    return not_(has_event)


_FILE_CLAUSES: dict[str, _Clause] = _attributes_clauses(_FILE_ATTRS)
_FILE_CLAUSES.update(
    {
        "obs-matches": _Clause(
            "observations",
            lambda ctx, pred: _file_observation_in(ctx, select(Observation.obsid).where(pred)),
        ),
        "obsid-is-null": _Clause("ignored", lambda ctx, v: File.obsid.is_(None)),
        "not-older-than": _Clause(
            "num", lambda ctx, days: File.create_time > _cutoff(ctx.now, days)
        ),
        "not-newer-than": _Clause(
            "num", lambda ctx, days: File.create_time < _cutoff(ctx.now, days)
        ),
        "name-like": _FILE_CLAUSES["name-matches"],
        "source-is": _FILE_CLAUSES["source-is-exactly"],
    }
)

_CLAUSES: dict[str, dict[str, _Clause]] = {
    "files": _FILE_CLAUSES,
    "instances": {**_FILE_CLAUSES, **_attributes_clauses(_INSTANCE_ATTRS)},
    "observations": _attributes_clauses(_OBS_ATTRS),
    "sessions": {
        **_attributes_clauses(_SESSION_ATTRS),
        "no-file-has-event": _Clause("str", _no_file_has_event),
    },
}

_GENERIC = ("and", "or", "none-of", "always-true", "always-false")


def clause_names(kind: str) -> list[str]:
    """Every clause name a search of ``kind`` accepts, sorted (for completion and docs)."""
    _check_kind(kind)
    return sorted([*_GENERIC, *_CLAUSES[kind]])


def _check_kind(kind: Any) -> None:
    if kind not in KINDS:
        raise SearchError(
            f"unknown search kind {kind!r}; expected one of {', '.join(KINDS)}", kind=str(kind)
        )


def _compile(ctx: _Ctx, kind: str, search: dict | list, depth: int, path: str) -> Any:
    """A dict (clauses ANDed) or a list of dicts (ANDed), as one predicate."""
    if isinstance(search, list):
        parts = []
        for i, item in enumerate(search):
            ctx.count_clause()
            parts.append(and_(true(), *_object_clauses(ctx, kind, item, depth, _join(path, i))))
        return and_(true(), *parts)
    return and_(true(), *_object_clauses(ctx, kind, search, depth, path))


def _object_clauses(ctx: _Ctx, kind: str, obj: Any, depth: int, path: str) -> list[Any]:
    if not isinstance(obj, dict):
        raise SearchError(
            f"expected an object of clauses at {path or 'the top level'}, got {_describe(obj)}",
            path=path,
        )
    if depth > MAX_DEPTH:
        raise SearchError(f"search is nested deeper than {MAX_DEPTH} levels (at {path})", path=path)
    parts = []
    for name, payload in obj.items():
        ctx.count_clause()
        parts.append(_compile_clause(ctx, kind, name, payload, depth, _join(path, name)))
    return parts


def _join(path: str, part: Any) -> str:
    return f"{path}/{part}" if path else str(part)


def _compile_clause(ctx: _Ctx, kind: str, name: Any, payload: Any, depth: int, path: str) -> Any:
    if not isinstance(name, str):
        raise SearchError(f"clause names must be strings, got {_describe(name)}")
    if name in ("and", "or", "none-of"):
        outer_top = ctx.top
        ctx.top = outer_top and name == "and"
        try:
            items = _combinator_items(ctx, kind, name, payload, depth, path)
        finally:
            ctx.top = outer_top
        if name == "and":
            return and_(true(), *items)
        if name == "or":
            return or_(false(), *items)
        return not_(or_(false(), *items))
    return _leaf_clause(ctx, kind, name, payload, depth, path)


def _combinator_items(
    ctx: _Ctx, kind: str, name: str, payload: Any, depth: int, path: str
) -> list[Any]:
    if isinstance(payload, dict):
        items = _object_clauses(ctx, kind, payload, depth + 1, path)
    elif isinstance(payload, list):
        items = []
        for i, item in enumerate(payload):
            ctx.count_clause()
            if not isinstance(item, dict):
                raise SearchError(
                    f"clause {name!r}{_where(path)} expects a list of objects of clauses, "
                    f"but item {i} is {_describe(item)}",
                    clause=name,
                    path=_join(path, i),
                )
            items.append(and_(true(), *_object_clauses(ctx, kind, item, depth + 1, _join(path, i))))
    else:
        raise _fail(name, path, "an object of clauses or a list of objects", payload)
    return items


def _leaf_clause(ctx: _Ctx, kind: str, name: str, payload: Any, depth: int, path: str) -> Any:
    if name == "always-true":
        return true()
    if name == "always-false":
        return false()
    clause = _CLAUSES[kind].get(name)
    if clause is None:
        close = difflib.get_close_matches(name, [*_GENERIC, *_CLAUSES[kind]], n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise SearchError(
            f"unknown clause {name!r}{_where(path)} in a search for {kind}{hint}",
            clause=name,
            path=path,
        )
    kind_of_payload = clause.payload
    if kind_of_payload == "ignored":
        value = None
    elif kind_of_payload == "str":
        value = _check_str(name, path, payload)
    elif kind_of_payload == "int":
        value = _check_int(name, path, payload)
    elif kind_of_payload == "num":
        value = _check_num(name, path, payload)
    elif kind_of_payload == "int-range":
        value = _check_range(name, path, payload, integer=True)
    elif kind_of_payload == "num-range":
        value = _check_range(name, path, payload, integer=False)
    elif kind_of_payload == "observations":
        if not isinstance(payload, (dict, list)):
            raise _fail(name, path, "an observation search (an object of clauses)", payload)
        outer_top, ctx.top = ctx.top, False
        try:
            value = _compile(ctx, "observations", payload, depth + 1, path)
        finally:
            ctx.top = outer_top
    else:  # pragma: no cover - table error
        raise AssertionError(kind_of_payload)
    return clause.build(ctx, value)


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


def _choose_obs_mode(session: OrmSession, ctx: _Ctx, search: dict | list) -> str | None:
    """One cheap count on the observation table picks how file searches use observations."""
    probe = _observation_probe(search)
    if not probe:
        return None
    predicate = _compile(_Ctx(now=ctx.now, postgresql=ctx.postgresql), "observations", probe, 1, "")
    matching = (
        select(literal(1))
        .select_from(Observation)
        .where(predicate)
        .limit(DRIVE_MAX_OBSERVATIONS + 1)
        .subquery()
    )
    found = session.scalar(select(func.count()).select_from(matching))
    return "drive" if found <= DRIVE_MAX_OBSERVATIONS else "scan"


def _naive_utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return utcnow()
    if not isinstance(now, dt.datetime):
        raise TypeError("now must be a datetime")
    if now.tzinfo is not None:
        now = now.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return now


def _predicate(ctx: _Ctx, kind: str, search: Any) -> Any:
    _check_kind(kind)
    return _compile(ctx, kind, parse_search(search), 1, "")


def validate_search(kind: str, search: Any) -> None:
    """Raise ``SearchError`` unless ``search`` (JSON text or parsed) is a valid search of
    ``kind``: unknown kind or clause, wrong payload type, too deep, too many clauses."""
    _predicate(_Ctx(now=utcnow(), postgresql=False), kind, search)


# --------------------------------------------------------------------------------------------
# Running: statements, sorting, keyset pagination


#: The file columns of a ``plain`` files search, named as File's attributes (``meta``, not the
#: column's name ``metadata``): what ``serialize.file_json`` and the cursor read.
FILE_COLUMNS = (File.id, File.name, File.type, File.size, File.is_directory, File.checksums,
                File.create_time, File.obsid, File.source, File.meta)


def _from(kind: str, *, entity: bool, plain: bool = False) -> Select:
    if kind == "files":
        if plain:
            return select(*FILE_COLUMNS)
        return select(File) if entity else select(func.count()).select_from(File)
    if kind == "instances":
        stmt = select(Instance) if entity else select(func.count()).select_from(Instance)
        stmt = stmt.join(File, Instance.file_id == File.id).join(
            Store, Instance.store_id == Store.id
        )
        if entity:
            stmt = stmt.options(contains_eager(Instance.file), contains_eager(Instance.store))
        return stmt
    if kind == "observations":
        return select(Observation) if entity else select(func.count()).select_from(Observation)
    return select(Session) if entity else select(func.count()).select_from(Session)


def _is_postgresql(session: OrmSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def search_select(
    session: OrmSession, kind: str, search: Any, *, now: dt.datetime | None = None
) -> Select:
    """The unordered, unlimited ``SELECT`` of the ORM rows matching ``search`` (for callers that
    process every match in batches, e.g. staging). Instances come with their file and store."""
    ctx = _Ctx(now=_naive_utc(now), postgresql=_is_postgresql(session))
    predicate = _predicate(ctx, kind, search)
    return _from(kind, entity=True).where(predicate)


@dataclass(frozen=True)
class _SortKey:
    type: str  # "str" | "int" | "float" | "datetime"
    column: Callable[[], Any]
    value: Callable[[Any], Any]  # row -> value
    nullable: bool = False


def _key(column: Callable[[], Any], type_: str, attr: str, nullable: bool = False) -> _SortKey:
    return _SortKey(type_, column, lambda row: getattr(row, attr), nullable)


#: Allowed ``sort`` values per kind (prefix with "-" for descending); the first is the default
#: and the unique key that breaks ties.
SORTS: dict[str, dict[str, _SortKey]] = {
    "files": {
        "name": _key(lambda: File.name, "str", "name"),
        "obsid": _key(lambda: File.obsid, "int", "obsid", nullable=True),
        "size": _key(lambda: File.size, "int", "size"),
        "create_time": _key(lambda: File.create_time, "datetime", "create_time"),
        "type": _key(lambda: File.type, "str", "type"),
    },
    "instances": {
        "id": _key(lambda: Instance.id, "int", "id"),
        "name": _SortKey("str", lambda: File.name, lambda row: row.file.name),
        "store_name": _SortKey("str", lambda: Store.name, lambda row: row.store.name),
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


def _resolve_sort(kind: str, sort: Any) -> tuple[str, bool, list[_SortKey]]:
    """(canonical sort text, descending, keys: the sort column then the unique key)."""
    choices = SORTS[kind]
    unique = next(iter(choices))
    if sort is None or sort == "":
        name, descending = unique, False
    else:
        if not isinstance(sort, str):
            raise SearchError(f"sort must be a string, got {_describe(sort)}")
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


def _sort_column(ctx: _Ctx, key: _SortKey) -> Any:
    column = key.column()
    # Strings sort byte-wise on both databases (file.name already has collation "C").
    if ctx.postgresql and key.type == "str" and column is not File.name:
        column = column.collate("C")
    return column


def _order_by(ctx: _Ctx, keys: list[_SortKey], descending: bool) -> list[Any]:
    # NULLs last in ascending order, first in descending order: descending is the exact reverse.
    order = []
    for key in keys:
        column = _sort_column(ctx, key)
        clause = column.desc() if descending else column.asc()
        if key.nullable:
            clause = clause.nulls_first() if descending else clause.nulls_last()
        order.append(clause)
    return order


def _after(ctx: _Ctx, keys: list[_SortKey], values: list[Any], descending: bool) -> Any:
    """Rows strictly after ``values`` in the order of ``_order_by``."""
    key, value = keys[0], values[0]
    column = _sort_column(ctx, key)
    bind = _sort_bind(key, value)
    if value is None:  # only for nullable keys
        beyond = column.is_not(None) if descending else false()
        same = column.is_(None)
    else:
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
    return or_(beyond, and_(same, _after(ctx, keys[1:], values[1:], descending)))


def _sort_bind(key: _SortKey, value: Any) -> Any:
    if key.type == "int":
        return literal(value, BigInteger)
    if key.type == "float":
        return literal(value, Float)
    if key.type == "datetime":
        return literal(value, DateTime())
    return literal(value, String())


def _search_digest(kind: str, search: Any) -> str:
    try:
        text = json.dumps(
            [kind, search], sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
        )
    except (RecursionError, ValueError):
        text = repr([kind, search])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _encode_cursor(sort: str, digest: str, keys: list[_SortKey], row: Any) -> str:
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


def _decode_cursor(cursor: Any, sort: str, digest: str, keys: list[_SortKey]) -> list[Any]:
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
            if not _INT_MIN <= value <= _INT_MAX:
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


def run_search(
    session: OrmSession,
    kind: str,
    search: Any,
    *,
    limit: int = 100,
    cursor: str | None = None,
    count: bool = False,
    sort: str | None = None,
    now: dt.datetime | None = None,
    plain: bool = False,
) -> SearchPage:
    """One page of the rows of ``kind`` matching ``search`` (JSON text or parsed).

    ``rows`` are ORM objects (File, Instance with its file and store loaded, Observation,
    Session); with ``plain`` (files only), rows of ``FILE_COLUMNS`` instead, which read the same
    attributes at a fraction of the cost (no objects, no identity map). In the order of
    ``sort``: for files name|obsid|size|create_time|type, for instances
    id|name|store_name|create_time, for observations obsid|start_time_jd|stop_time_jd|
    start_lst_hr|session_id, for sessions id|start_time_jd|stop_time_jd; a leading "-" sorts
    descending (the exact reverse, ties included). Default: files by name, instances by id,
    observations by obsid, sessions by id; ties are broken by that unique key. NULLs (a file's
    obsid, an observation's session) come last in ascending order, first in descending order,
    on both databases.

    ``next_cursor`` (None on the last page) fetches the next page when passed back as
    ``cursor`` with the same kind, search and sort; pagination is keyset, so pages stay
    consistent and fast however deep. ``count=True`` fills ``total`` with the number of
    matching rows (a separate COUNT query). ``now`` (naive UTC, default the current time) is
    the reference of not-older-than, not-newer-than and age.
    """
    _check_kind(kind)
    if plain and kind != "files":
        raise ValueError("plain rows are for files searches")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise SearchError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    parsed = parse_search(search)
    ctx = _Ctx(now=_naive_utc(now), postgresql=_is_postgresql(session))
    predicate = _compile(ctx, kind, parsed, 1, "")  # validates
    sort_text, descending, keys = _resolve_sort(kind, sort)
    digest = _search_digest(kind, parsed)
    cursor_values = None if cursor is None else _decode_cursor(cursor, sort_text, digest, keys)
    if kind in ("files", "instances"):
        ctx.obs_mode = _choose_obs_mode(session, ctx, parsed)
        if ctx.obs_mode is not None:
            ctx.clauses = 0
            predicate = _compile(ctx, kind, parsed, 1, "")

    stmt = _from(kind, entity=True, plain=plain).where(predicate)
    if cursor_values is not None:
        stmt = stmt.where(_after(ctx, keys, cursor_values, descending))
    stmt = stmt.order_by(*_order_by(ctx, keys, descending)).limit(limit + 1)
    rows = list(session.execute(stmt) if plain else session.scalars(stmt))

    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(sort_text, digest, keys, rows[-1])
    total = None
    if count:
        total = session.scalar(_from(kind, entity=False).where(predicate))
    return SearchPage(rows, next_cursor, total)
