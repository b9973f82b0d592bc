"""Running a search: ``run_search``, one page of the rows of a kind matching a search (ORM
rows, or plain file columns), in a chosen order, with keyset pagination (a cursor, never
OFFSET); ``search_select``, every match unordered, for callers that go through them in batches.

The language itself: ``search_parse`` (reading a search, its limits), ``search_clauses`` (the
clauses and their SQL), ``search_compile`` (a search to one predicate, ``validate_search``);
sorts and cursors: ``search_cursor``; a files page's statement, compiled once per shape of
search: ``search_statements``; a top-level "or" read branch by branch on PostgreSQL:
``search_union``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from sqlalchemy import Connection, Select, func, select
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import contains_eager

from ..errors import SearchError
from .models import File, Instance, Observation, Session, Store, utcnow
from .search_clauses import Ctx
from .search_compile import choose_obs_mode, compile_search, search_predicate, search_shape
from .search_cursor import (
    decode_cursor,
    encode_cursor,
    order_by,
    resolve_sort,
    rows_after,
    search_digest,
)
from .search_parse import check_kind, parse_search
from .search_statements import limit_parameter, page_statement
from .search_union import indexed_branches, merged_page

#: Largest page by default: the default of ``c.StagingApp.max_search_limit``, the setting a
#: ``Catalogue`` passes as ``max_limit`` (and the REST API advertises and enforces).
MAX_LIMIT = 10_000


class SearchPage(NamedTuple):
    """One page of results: ORM rows, the cursor of the next page (None on the last page) and
    the number of matching rows (None unless ``count=True`` was asked). With ``for_text``:
    ``json_as_text`` when the rows' JSON columns (``checksums``, ``meta``) are their JSON
    text, and ``instances``, the instance rows of the page's files (``file_id`` then
    ``serialize.INSTANCE_COLUMNS``' values) when they were read with the page, else None."""

    rows: list
    next_cursor: str | None
    total: int | None
    instances: list | None = None
    json_as_text: bool = False


def _naive_utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return utcnow()
    if not isinstance(now, dt.datetime):
        raise TypeError("now must be a datetime")
    if now.tzinfo is not None:
        now = now.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return now


#: The file columns of a ``plain`` files search, named as File's attributes (``meta``, not the
#: column's name ``metadata``): what ``serialize.file_json`` and the cursor read, and what
#: ``search_rows.files_with_instances_text`` unpacks by position (id, name, then the values of
#: ``search_reply.PageWriter.file`` in its order).
FILE_COLUMNS = (File.id, File.name, File.type, File.size, File.is_directory, File.checksums,
                File.create_time, File.obsid, File.source, File.meta.label("meta"))


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


def _is_postgresql(session: OrmSession | Connection) -> bool:
    bind = session if isinstance(session, Connection) else session.get_bind()
    return bind.dialect.name == "postgresql"


def _connection(session: OrmSession | Connection) -> Connection:
    """The connection a session's reads go through (a plain connection: itself)."""
    return session if isinstance(session, Connection) else session.connection()


def search_select(
    session: OrmSession, kind: str, search: Any, *, now: dt.datetime | None = None
) -> Select:
    """The unordered, unlimited ``SELECT`` of the ORM rows matching ``search`` (for callers that
    process every match in batches, e.g. staging). Instances come with their file and store."""
    ctx = Ctx(now=_naive_utc(now), postgresql=_is_postgresql(session))
    predicate = search_predicate(ctx, kind, search)
    return _from(kind, entity=True).where(predicate)


def run_search(
    session: OrmSession | Connection,
    kind: str,
    search: Any,
    *,
    limit: int = 100,
    cursor: str | None = None,
    count: bool = False,
    sort: str | None = None,
    now: dt.datetime | None = None,
    plain: bool = False,
    max_limit: int = MAX_LIMIT,
    for_text: bool = False,
) -> SearchPage:
    """One page of the rows of ``kind`` matching ``search`` (JSON text or parsed).

    ``rows`` are ORM objects (File, Instance with its file and store loaded, Observation,
    Session); with ``plain`` (files only), rows of ``FILE_COLUMNS`` instead, which read the same
    attributes at a fraction of the cost (no objects, no identity map), and ``session`` may be
    a plain ``Connection``. In the order of
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

    ``for_text`` (plain rows): rows for the REST reply's text
    (``search_rows.files_with_instances_text``). Without a count, their JSON columns are their
    JSON text (``SearchPage.json_as_text``), and on PostgreSQL the instances of the page's
    files come in the same statement as the page (``SearchPage.instances``;
    ``search_rows.with_instances``), one round trip to the database instead of two.
    """
    check_kind(kind)
    if plain and kind != "files":
        raise ValueError("plain rows are for files searches")
    if not plain and isinstance(session, Connection):
        raise ValueError("ORM rows need an ORM session")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise SearchError(f"limit must be an integer from 1 to {max_limit}, got {limit!r}")
    parsed = parse_search(search)
    ctx = Ctx(now=_naive_utc(now), postgresql=_is_postgresql(session))
    shape = search_shape(ctx, kind, parsed)  # validates
    sort_text, descending, keys = resolve_sort(kind, sort)
    digest = search_digest(kind, parsed)
    cursor_values = None if cursor is None else decode_cursor(cursor, sort_text, digest, keys)
    if kind in ("files", "instances"):
        ctx.obs_mode = choose_obs_mode(session, ctx, parsed)
    if cursor_values is not None:
        ctx.cursor_values = cursor_values

    # PostgreSQL, plain file rows in name order: a top-level "or" of indexed branches is read
    # branch by branch (``search_union``).
    branches = (indexed_branches(shape) if plain and ctx.postgresql and len(keys) == 1
                else None)

    def build(page_limit: Any) -> Select:
        ctx.reset()
        predicate = compile_search(ctx, kind, parsed, 1, "")
        after = None if cursor_values is None else rows_after(ctx, keys, cursor_values,
                                                               descending)
        order = order_by(ctx, keys, descending)
        if branches is not None:
            merged = merged_page(FILE_COLUMNS, predicate, branches, after, order, File.name,
                                 descending, page_limit)
            if merged is not None:
                return merged
        stmt = _from(kind, entity=True, plain=plain).where(predicate)
        if after is not None:
            stmt = stmt.where(after)
        return stmt.order_by(*order).limit(page_limit)

    rows: list[Any]
    instances = None
    json_as_text = False
    if plain and not count:
        # The page's statement compiled once per shape of search (``search_statements``).
        connection = _connection(session)
        # A cursor's missing (NULL) sort value has SQL of its own (``rows_after``).
        key = (connection.dialect.name, kind, shape, ctx.obs_mode, sort_text,
               None if cursor_values is None else tuple(v is None for v in cursor_values))
        statement = page_statement(key, lambda: (build(limit_parameter(limit)), ctx),
                                   connection.dialect)
        if for_text and ctx.postgresql:
            rows, instances = statement.rows_with_instances(connection, ctx, limit)
        else:
            rows = statement.rows(connection, ctx, limit, json_as_text=for_text)
        json_as_text = for_text
    else:
        stmt = build(limit + 1)
        # Plain rows on the session's connection (same transaction): the ORM's statement
        # handling costs as much as the rows' own processing and adds nothing to plain columns.
        if plain:
            rows = list(_connection(session).execute(stmt).all())
        else:
            assert isinstance(session, OrmSession)  # checked above
            rows = list(session.scalars(stmt).all())

    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(sort_text, digest, keys, rows[-1])
    total = None
    if count:
        ctx.reset()
        predicate = compile_search(ctx, kind, parsed, 1, "")
        total = session.scalar(_from(kind, entity=False).where(predicate))
    return SearchPage(rows, next_cursor, total, instances, json_as_text)
