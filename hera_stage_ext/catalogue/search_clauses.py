"""The HERA Librarian's JSON search language: its clauses, and how each compiles to one SQL
predicate (SQLAlchemy). ``search_compile`` walks a search and puts the predicates together.

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
                  num-bad-instances i (instances whose last fixity check found them bad or
                  missing: ``{"num-bad-instances-greater-than": 0}``),
                  and through the file's observation: start-time-jd f, stop-time-jd f,
                  start-lst-hr f, session-id i.
                  Special: ``obs-matches`` (an observation sub-search), ``obsid-is-null`` (payload
                  ignored), ``not-older-than`` / ``not-newer-than`` (days: create_time strictly
                  after / before ``now - days``, as in v1); aliases ``name-like`` =
                  ``name-matches``, ``source-is`` = ``source-is-exactly``.
    instances     every file clause (applied to the instance's file), plus store-name s,
                  deletion-policy s and fixity s (``unchecked``, ``ok``, ``bad``, ``missing``:
                  what the copy's last fixity check found).
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

Performance: ``name-matches`` is compiled to ``name >= prefix AND name < next(prefix) AND name
LIKE pattern``, where prefix is the literal text before the first wildcard, so that the name index
answers it (SQLite's LIKE cannot use an index with a bound pattern); names compare byte-wise on
both databases (SQLite BINARY, PostgreSQL collation "C"). Counts are correlated scalar
subqueries on indexed foreign keys; observation attributes of files are sub-selects on the
observation table, in the form ``search_compile.choose_obs_mode`` picked (see
``_file_observation_in``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Float,
    Select,
    and_,
    any_,
    bindparam,
    func,
    literal,
    not_,
    select,
)
from sqlalchemy.orm import aliased
from sqlalchemy.types import NULLTYPE, TypeEngine

from ..errors import SearchError
from .file_events import stored_type_alias
from .models import Event, File, Instance, Observation, Session, Store
from .naming import datetime_to_jd
from .search_parse import MAX_CLAUSES, check_kind


@dataclass
class Ctx:
    """What compiling one search needs and keeps track of: the reference time, the database,
    the clauses counted so far, and where in the search the clause being compiled stands."""

    now: dt.datetime
    postgresql: bool
    clauses: int = 0
    # How a file's observation clauses in the top-level conjunction are compiled (see
    # ``_file_observation_in``): None (plain IN), "drive" or "scan".
    obs_mode: str | None = None
    top: bool = True  # compiling a clause of the top-level conjunction
    # Walking the search only to check it and read its shape and values (``search_compile.
    # search_shape``): no SQL is built.
    collect_only: bool = False
    # The shape of the search walked so far (its clauses and combinators, no values) and each
    # leaf clause's checked value, in walking order: what a cached statement is keyed by and
    # filled with (``search_statements``).
    shape: list[Any] = field(default_factory=list)
    leaves: list[Any] = field(default_factory=list)
    # Each bound value of the SQL built so far: its parameter's name, the leaf it came from and
    # how it is computed from that leaf's value (and this Ctx: ``now``, the cursor's values).
    binds: list[Bind] = field(default_factory=list)
    cursor_values: list[Any] = field(default_factory=list)

    @property
    def now_jd(self) -> float:
        return datetime_to_jd(self.now)

    def count_clause(self) -> None:
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise SearchError(f"search has more than {MAX_CLAUSES} clauses")

    def bind(self, value: Any, recipe: Recipe = None, type_: TypeEngine[Any] | None = None
             ) -> BindParameter[Any]:
        """A named parameter for ``value``, a value that depends on the search: the current
        leaf's value through ``recipe`` (default: the value itself). Untyped, it takes the type
        of the column it is compared with, as a plain Python value would."""
        name = f"sp{len(self.binds)}"
        self.binds.append(Bind(name, len(self.leaves) - 1, recipe))
        return bindparam(name, value, type_=NULLTYPE if type_ is None else type_)

    def reset(self) -> None:
        """Ready to compile the same search again (e.g. after choosing ``obs_mode``)."""
        self.clauses = 0
        self.binds = []
        self.leaves = []
        self.shape = []


#: How a bound value is computed from its leaf clause's checked value and the Ctx (None: it is
#: that value).
Recipe = Callable[["Ctx", Any], Any] | None


@dataclass(frozen=True)
class Bind:
    name: str
    leaf: int
    recipe: Recipe


# --------------------------------------------------------------------------------------------
# Attributes: each knows how to apply a comparison to its value as a two-valued predicate.

Tester = Callable[[Ctx, Callable[[Any], ColumnElement[bool]]], ColumnElement[bool]]


@dataclass(frozen=True)
class _Attr:
    type: str  # "s" | "i" | "f"
    test: Tester
    indexed_prefix: bool = False  # compile -matches prefixes to an index range


def _column(get: Callable[[Ctx], Any], *, nullable: bool = False) -> Tester:
    def test(ctx: Ctx, compare: Callable[[Any], ColumnElement[bool]]) -> ColumnElement[bool]:
        value = get(ctx)
        if nullable:
            return and_(value.is_not(None), compare(value))
        return compare(value)

    return test


def _through_observation(attr: _Attr) -> Tester:
    """A file's (or instance's file's) view of one attribute of its observation."""

    def test(ctx: Ctx, compare: Callable[[Any], ColumnElement[bool]]) -> ColumnElement[bool]:
        return _file_observation_in(ctx, select(Observation.obsid).where(attr.test(ctx, compare)))

    return test


def _file_observation_in(ctx: Ctx, observations: Select) -> ColumnElement[bool]:
    """``file.obsid IS NOT NULL AND file.obsid IN (observations)``, in the form that leads the
    database to the right plan for ``ORDER BY ... LIMIT`` (chosen by ``choose_obs_mode``):

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


def _per_row(aggregate: Any, child: Any, link: Any, parent: Any, join: Any = None) -> Any:
    """A scalar subquery: ``aggregate`` over the ``child`` rows that ``link`` ties to the
    current row of ``parent`` (through ``join``, a (table, on) pair, when given)."""
    query = select(aggregate).select_from(child)
    if join is not None:
        query = query.join(*join)
    return query.where(link).correlate(parent).scalar_subquery()


def _num_instances(ctx: Ctx) -> Any:
    inst = aliased(Instance)
    return _per_row(func.count(), inst, inst.file_id == File.id, File)


def _num_bad_instances(ctx: Ctx) -> Any:
    inst = aliased(Instance)
    return _per_row(func.count(), inst,
                    and_(inst.file_id == File.id,
                         inst.fixity.in_([literal("bad"), literal("missing")])), File)


def _obs_num_files(ctx: Ctx) -> Any:
    f = aliased(File)
    return _per_row(func.count(), f, f.obsid == Observation.obsid, Observation)


def _obs_total_size(ctx: Ctx) -> Any:
    f = aliased(File)
    return func.coalesce(
        _per_row(func.sum(f.size), f, f.obsid == Observation.obsid, Observation), 0)


def _session_num_obs(ctx: Ctx) -> Any:
    o = aliased(Observation)
    return _per_row(func.count(), o, o.session_id == Session.id, Session)


def _session_num_files(ctx: Ctx) -> Any:
    o, f = aliased(Observation), aliased(File)
    return _per_row(func.count(), f, o.session_id == Session.id, Session,
                    join=(o, f.obsid == o.obsid))


def _now_jd(ctx: Ctx, value: Any) -> float:
    return ctx.now_jd


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
    "num-bad-instances": _Attr("i", _column(_num_bad_instances)),
    **{
        name: _Attr(_OBS_ATTRS[name].type, _through_observation(_OBS_ATTRS[name]))
        for name in ("start-time-jd", "stop-time-jd", "start-lst-hr", "session-id")
    },
}

_INSTANCE_ATTRS: dict[str, _Attr] = {
    "store-name": _Attr("s", _column(lambda ctx: Store.name)),
    "deletion-policy": _Attr("s", _column(lambda ctx: Instance.deletion_policy)),
    "fixity": _Attr("s", _column(lambda ctx: Instance.fixity)),
}

_SESSION_ATTRS: dict[str, _Attr] = {
    "session-id": _Attr("i", _column(lambda ctx: Session.id)),
    "start-time-jd": _Attr("f", _column(lambda ctx: Session.start_time_jd)),
    "stop-time-jd": _Attr("f", _column(lambda ctx: Session.stop_time_jd)),
    "duration": _Attr("f", _column(lambda ctx: Session.stop_time_jd - Session.start_time_jd)),
    "num-obs": _Attr("i", _column(_session_num_obs)),
    "num-files": _Attr("i", _column(_session_num_files)),
    "age": _Attr("f", _column(lambda ctx: ctx.bind(ctx.now_jd, _now_jd, Float())
                              - Session.stop_time_jd)),
}


# --------------------------------------------------------------------------------------------
# Clauses


@dataclass(frozen=True)
class _Clause:
    # "ignored" | "str" | "int" | "num" | "int-range" | "num-range" | "observations"
    payload: str
    build: Callable[[Ctx, Any], ColumnElement[bool]]
    # What of the payload's value, besides the clause itself, decides the clause's SQL (the
    # rest only fills its parameters): None when nothing does.
    shape: Callable[[Any], Any] | None = None


def _bind(ctx: Ctx, attr: _Attr, value: Any, recipe: Recipe = None) -> Any:
    if attr.type == "i":
        return ctx.bind(value, recipe, BigInteger())
    if attr.type == "f":
        return ctx.bind(value, recipe, Float())
    return ctx.bind(value, recipe)


def _low(ctx: Ctx, value: tuple[Any, Any]) -> Any:
    return value[0]


def _high(ctx: Ctx, value: tuple[Any, Any]) -> Any:
    return value[1]


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


def _like_shape(pattern: str) -> tuple[bool, bool]:
    """What of a ``-matches`` pattern decides its SQL (``_like``) on an indexed column: whether it
    has a literal prefix, and whether that prefix has an upper bound."""
    prefix = _literal_prefix(pattern)
    return bool(prefix), bool(prefix) and _prefix_upper(prefix) is None


def _prefix_of(ctx: Ctx, pattern: str) -> str:
    return _literal_prefix(pattern)


def _upper_of(ctx: Ctx, pattern: str) -> str | None:
    return _prefix_upper(_literal_prefix(pattern))


def _like(ctx: Ctx, value: Any, pattern: str, indexed_prefix: bool) -> ColumnElement[bool]:
    # No escape character on either database (PostgreSQL's default escape is a backslash).
    bound = ctx.bind(pattern)
    like = value.like(bound, escape="") if ctx.postgresql else value.like(bound)
    prefix = _literal_prefix(pattern) if indexed_prefix else ""
    if not prefix:
        return like
    bounds = [value >= ctx.bind(prefix, _prefix_of)]
    upper = _prefix_upper(prefix)
    if upper is not None:
        bounds.append(value < ctx.bind(upper, _upper_of))
    return and_(*bounds, like)


def _attribute_clauses(name: str, attr: _Attr) -> dict[str, _Clause]:
    def is_exactly(ctx: Ctx, v: Any) -> ColumnElement[bool]:
        return attr.test(ctx, lambda col: col == _bind(ctx, attr, v))

    def in_range(ctx: Ctx, v: tuple[Any, Any]) -> ColumnElement[bool]:
        low, high = v
        return attr.test(ctx, lambda col: and_(col >= _bind(ctx, attr, low, _low),
                                               col <= _bind(ctx, attr, high, _high)))

    clauses: dict[str, _Clause] = {}
    scalar = {"s": "str", "i": "int", "f": "num"}[attr.type]
    if attr.type in ("s", "i"):
        clauses[f"{name}-is-exactly"] = _Clause(scalar, is_exactly)
        clauses[f"{name}-is-not"] = _Clause(scalar, lambda ctx, v: not_(is_exactly(ctx, v)))
    if attr.type == "s":
        clauses[f"{name}-matches"] = _Clause(
            "str",
            lambda ctx, v: attr.test(ctx, lambda col: _like(ctx, col, v, attr.indexed_prefix)),
            _like_shape if attr.indexed_prefix else None,
        )
    else:
        range_kind = "int-range" if attr.type == "i" else "num-range"
        clauses[f"{name}-greater-than"] = _Clause(
            scalar, lambda ctx, v: attr.test(ctx, lambda col: col > _bind(ctx, attr, v))
        )
        clauses[f"{name}-less-than"] = _Clause(
            scalar, lambda ctx, v: attr.test(ctx, lambda col: col < _bind(ctx, attr, v))
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


def _cutoff_of(ctx: Ctx, days: float) -> dt.datetime:
    return _cutoff(ctx.now, days)


def _stored_type_alias_of(ctx: Ctx, event_type: str) -> str:
    return stored_type_alias(event_type)


def _no_file_has_event(ctx: Ctx, event_type: str) -> ColumnElement[bool]:
    e, f, o = aliased(Event), aliased(File), aliased(Observation)
    has_event = (
        select(e.id)
        .join(f, e.file_id == f.id)
        .join(o, f.obsid == o.obsid)
        .where(o.session_id == Session.id,  # either stored type that shows it (file_events)
               e.type.in_([ctx.bind(event_type),
                           ctx.bind(stored_type_alias(event_type), _stored_type_alias_of)]))
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
            "num", lambda ctx, days: File.create_time > ctx.bind(_cutoff(ctx.now, days), _cutoff_of)
        ),
        "not-newer-than": _Clause(
            "num", lambda ctx, days: File.create_time < ctx.bind(_cutoff(ctx.now, days), _cutoff_of)
        ),
        "name-like": _FILE_CLAUSES["name-matches"],
        "source-is": _FILE_CLAUSES["source-is-exactly"],
    }
)

CLAUSES: dict[str, dict[str, _Clause]] = {
    "files": _FILE_CLAUSES,
    "instances": {**_FILE_CLAUSES, **_attributes_clauses(_INSTANCE_ATTRS)},
    "observations": _attributes_clauses(_OBS_ATTRS),
    "sessions": {
        **_attributes_clauses(_SESSION_ATTRS),
        "no-file-has-event": _Clause("str", _no_file_has_event),
    },
}

GENERIC = ("and", "or", "none-of", "always-true", "always-false")


def clause_names(kind: str) -> list[str]:
    """Every clause name a search of ``kind`` accepts, sorted (for completion and docs)."""
    check_kind(kind)
    return sorted([*GENERIC, *CLAUSES[kind]])
