"""The page statement of a files search, compiled once per *shape* of search and run as the
driver's SQL.

Two searches have the same shape when they differ only in their values (``{"name-is-exactly":
"a"}`` and ``{"name-is-exactly": "b"}``; a ``-matches`` pattern's shape also says whether it has
a literal prefix, which decides its SQL): the same clauses and combinators, sort, kind of
cursor and observation plan (``search_compile.search_shape``). Building a search's SQLAlchemy
statement, computing its cache key and SQLAlchemy's execution and row processing cost more than
the database's own work for most searches; here the statement of a shape is built and compiled
on its first search, and every later search of that shape only computes its parameters from its
values (each bound value's recipe, ``search_clauses.Ctx.bind``) and runs the SQL text with the
values converted by the same processors SQLAlchemy applies (``db.driver_rows``: the driver's
cursor itself, its errors wrapped as SQLAlchemy's, so a search's time limit applies as before).
On PostgreSQL a page can come with its files' instances from one statement
(``search_rows.with_instances``): one round trip to the database instead of two.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from sqlalchemy import Connection, Dialect, Integer, Select, bindparam
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import sqltypes

from .db import driver_rows, loads_json_column
from .search_clauses import Ctx
from .search_reply import json_text
from .search_rows import with_instances

#: Most shapes kept (the least recently used goes first): a statement is a few kB.
MAX_STATEMENTS = 512

#: The name of the page size's parameter (the page's limit plus one).
LIMIT_PARAMETER = "sp_limit"


class FileRow(NamedTuple):
    """A file row of a files page: ``search.FILE_COLUMNS``' values, by their names."""

    id: int
    name: str
    type: str
    size: int
    is_directory: bool
    checksums: Any
    create_time: Any
    obsid: int | None
    source: str
    meta: Any


_FILE_COLUMNS = len(FileRow._fields)
Processor = Callable[[Any], Any]


class PageStatement:
    """One shape's compiled statement: its SQL text and how to fill its parameters."""

    def __init__(self, stmt: Select, ctx: Ctx, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        if "POSTCOMPILE" in self.sql:  # an expanding IN: its SQL depends on its values
            raise ValueError("a search statement must not have expanding parameters")
        values = compiled.construct_params()
        computed = {b.name: b for b in ctx.binds}
        # Per parameter: (name, constant value or None, leaf, recipe, bind processor).
        self._parameters: list[tuple[str, Any, int, Any, Processor | None]] = []
        self._computed = False
        for name in compiled.positiontup or list(values):
            processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            bind = computed.get(name)
            if bind is not None:
                self._parameters.append((name, None, bind.leaf, bind.recipe, processor))
            elif name == LIMIT_PARAMETER:
                self._parameters.append((name, None, -2, None, processor))
            else:
                value = values[name]
                self._parameters.append(
                    (name, value if processor is None else processor(value), -3, None, None))
        self.positional = compiled.positiontup is not None
        processors = [
            (position, column.type, processor) for position, column, processor in (
                (position, column,
                 column.type.dialect_impl(dialect).result_processor(dialect, None))
                for position, column in enumerate(stmt.selected_columns))
            if processor is not None]
        self.columns = [(position, _json_text_first(processor, type_, dialect))
                        for position, type_, processor in processors]
        # For ``rows(json_as_text=True)``: a JSON column's value left as its text.
        self._text_columns = [(position, _json_left_as_text(processor, type_, dialect))
                              for position, type_, processor in processors]
        # The page's columns as ``with_instances`` selects them: a JSONB column as its text
        # (``search_reply.PageWriter`` writes PostgreSQL's text of a simple object as it is).
        self._page_columns = [
            f"{column.name}::text" if isinstance(column.type.dialect_impl(dialect),
                                                 postgresql.JSONB) else column.name
            for column in stmt.selected_columns]
        self._with_instances: str | None = None  # made on first use (PostgreSQL only)

    def parameters(self, ctx: Ctx, limit: int) -> tuple[Any, ...] | dict[str, Any]:
        """The parameters of the search read into ``ctx`` (its leaves, ``now``, the cursor's
        values) for a page of ``limit`` rows."""
        leaves = ctx.leaves
        found = []
        for _name, value, leaf, recipe, processor in self._parameters:
            if leaf == -3:
                found.append(value)
                continue
            if leaf == -2:
                value = limit + 1
            else:
                value = leaves[leaf] if leaf >= 0 else None
                if recipe is not None:
                    value = recipe(ctx, value)
            found.append(value if processor is None else processor(value))
        if self.positional:
            return tuple(found)
        return {entry[0]: value for entry, value in zip(self._parameters, found)}

    def rows_with_instances(self, connection: Connection, ctx: Ctx, limit: int
                            ) -> tuple[list[FileRow], list[Any]]:
        """``rows`` and the instance rows of those files (``file_id`` then
        ``serialize.INSTANCE_COLUMNS``' values) from one statement; PostgreSQL only (psycopg
        converts every value as SQLAlchemy would), the JSON columns (``checksums``, ``meta``)
        as their JSON text."""
        sql = self._with_instances
        if sql is None:
            sql = self._with_instances = with_instances(self.sql, self._page_columns)
        files: list[FileRow] = []
        instances: list[Any] = []
        # A file's part of a row is never NULL where an instance's is (its id).
        for row in driver_rows(connection, sql, self.parameters(ctx, limit)):
            if row[0] is None:
                instances.append(row[_FILE_COLUMNS:])
            else:
                files.append(FileRow._make(row[:_FILE_COLUMNS]))
        return files, instances

    def rows(self, connection: Connection, ctx: Ctx, limit: int, json_as_text: bool = False
             ) -> list[FileRow]:
        """The page's rows (at most ``limit + 1``), values converted as SQLAlchemy would; with
        ``json_as_text`` a JSON column's value is its JSON text (what the driver gave when it
        is text, else ``json.dumps`` of the converted value)."""
        result = driver_rows(connection, self.sql, self.parameters(ctx, limit))
        columns = self._text_columns if json_as_text else self.columns
        if not columns:  # PostgreSQL: psycopg gives every value as SQLAlchemy would
            return list(map(FileRow._make, result))
        rows = []
        for row in result:
            values = list(row)
            for position, processor in columns:
                values[position] = processor(values[position])
            rows.append(FileRow(*values))
        return rows


def _json_text_first(processor: Processor, type_: Any, dialect: Dialect) -> Processor:
    """A JSON column's result processor (SQLite's: ``json.loads`` of the stored text) with its
    text decoded by ``db.loads_json_column`` (the same value, faster); other columns' as they
    are."""
    if not isinstance(type_.dialect_impl(dialect), sqltypes.JSON):
        return processor

    def process(value: Any) -> Any:
        return loads_json_column(value) if type(value) is str else processor(value)

    return process


def _json_left_as_text(processor: Processor, type_: Any, dialect: Dialect) -> Processor:
    """A JSON column's value as JSON text: the driver's text as it is, anything else (bytes)
    converted by ``processor`` and encoded as ``json.dumps`` would; other columns'
    ``processor``."""
    if not isinstance(type_.dialect_impl(dialect), sqltypes.JSON):
        return processor

    def process(value: Any) -> Any:
        return value if type(value) is str else json_text(processor(value))

    return process


_statements: OrderedDict[Hashable, PageStatement] = OrderedDict()
_lock = threading.Lock()


def page_statement(key: Hashable, build: Callable[[], tuple[Select, Ctx]],
                   dialect: Dialect) -> PageStatement:
    """The statement of shape ``key``, made from ``build()`` (the statement of a search of that
    shape, with a page limit of ``limit_parameter()``, and the Ctx it was compiled with) when it
    is not kept yet."""
    with _lock:
        found = _statements.get(key)
        if found is not None:
            _statements.move_to_end(key)
            return found
    stmt, ctx = build()
    made = PageStatement(stmt, ctx, dialect)
    with _lock:
        _statements[key] = made
        while len(_statements) > MAX_STATEMENTS:
            _statements.popitem(last=False)
    return made


def limit_parameter(limit: int) -> Any:
    """The page size as the statement's parameter (``LIMIT_PARAMETER``): ``limit + 1`` rows."""
    return bindparam(LIMIT_PARAMETER, limit + 1, type_=Integer())
