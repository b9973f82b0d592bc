"""The results of a files search: a page of file rows (``search.FILE_COLUMNS``) with each file's
instances, as ``POST search`` returns them, as JSON-ready dicts (``serialize.file_json`` and
``serialize.instance_fields`` decide the shape) or as each file's JSON text (``search_reply``,
the same bytes as ``json.dumps`` of the dicts, for the REST reply).

The instances of the page's files come from one statement written out here and run as the
driver's SQL on the search's connection's cursor (``db.driver_rows``), with the values
converted by the same result processors SQLAlchemy applies to these column types: building,
caching and processing a SQLAlchemy statement for it cost twice the statement itself on SQLite,
and a fixed text lets PostgreSQL's driver prepare it once per connection (``= ANY`` of an
array, one text whatever the page size). Errors still come wrapped as SQLAlchemy's (``DBAPIError``), so a
search's time limit (``Database.read_limited``) applies to it as to the page itself. On
PostgreSQL the REST reply's page and its instances come from one statement
(``with_instances``): one round trip to the database instead of two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Boolean, Connection, DateTime, Dialect
from sqlalchemy.orm import Session as OrmSession

from .db import driver_rows
from .search_reply import PageWriter, name_text
from .serialize import INSTANCE_COLUMNS, file_json, instance_fields

#: The columns of an instance row: ``file_id`` then those of ``serialize.INSTANCE_COLUMNS``, in
#: that order, and where they come from.
INSTANCE_SELECT = (
    "instance.file_id, store.name, store.path, store.kind, store.available, "
    "instance.path, instance.available, instance.deletion_policy, instance.create_time, "
    "instance.fixity, instance.verified_at"
)
INSTANCE_FROM = "instance JOIN store ON instance.store_id = store.id"
#: The instances of a set of files, with their stores, each file's in instance id order. By
#: file first: the order ``ix_instance_file_id`` gives, so SQLite sorts nothing (ordered by
#: id alone it built a temporary B-tree, a tenth of the statement).
_INSTANCES_SQL = (
    f"SELECT {INSTANCE_SELECT} FROM {INSTANCE_FROM} "
    "WHERE instance.file_id {match} ORDER BY instance.file_id, instance.id"
)
#: PostgreSQL: the ids as one array literal's text (``{1,2,3}``), cast to the column's type.
#: psycopg dumping a list of ints (finding the element's dumper, the array's type and each
#: value) was a quarter of this statement's client CPU (60 of 240 us for a 100-file page).
_INSTANCES_PG = _INSTANCES_SQL.format(match="= ANY(CAST(%s AS integer[]))")


def with_instances(page_sql: str, page_columns: Sequence[str]) -> str:
    """PostgreSQL: a files page's statement (``page_sql``) made one that also returns the
    instances of the page's files, each file's in id order, so the page and its instances take
    one round trip. A row is a file's (``page_columns``: expressions of the page's columns by
    their names, then NULLs) or an instance's (NULLs, then ``file_id`` and
    ``INSTANCE_COLUMNS``' values); the files come in the page's order (a materialized CTE is
    read back in the order it was written, and each branch of a UNION ALL keeps its rows'
    order), the instances of the page's last row, one past the limit, too."""
    file_nulls = ", ".join(["NULL"] * len(page_columns))
    instance_nulls = ", ".join(["NULL"] * (1 + len(INSTANCE_COLUMNS)))
    files = ", ".join(f"page.{column}" for column in page_columns)
    return (f"WITH page AS MATERIALIZED ({page_sql}) "
            f"SELECT {files}, {instance_nulls} FROM page "
            f"UNION ALL (SELECT {file_nulls}, {INSTANCE_SELECT} FROM {INSTANCE_FROM} "
            # One index scan for the array (as _INSTANCES_PG), not one per file of an IN.
            "WHERE instance.file_id = ANY(ARRAY(SELECT page.id FROM page)) "
            "ORDER BY instance.file_id, instance.id)")


#: Per dialect name: (position in a row, SQLAlchemy's result processor) of the columns that
#: have one (SQLite's DATETIME text and BOOLEAN integers; none on PostgreSQL).
_PROCESSORS: dict[str, list[tuple[int, Callable[[Any], Any], Any]]] = {}


def _processors(dialect: Dialect) -> list[tuple[int, Callable[[Any], Any], Any]]:
    """(position, processor, column type) of the instance columns that have a processor."""
    found = _PROCESSORS.get(dialect.name)
    if found is None:
        found = []
        for position, column in enumerate(INSTANCE_COLUMNS, start=1):
            processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if processor is not None:
                found.append((position, processor, column.type))
        _PROCESSORS[dialect.name] = found
    return found


def _instance_rows(connection: Connection, file_ids: list[int]) -> Sequence[Sequence[Any]]:
    """The instance rows of ``file_ids`` as the driver gives them, each file's in id order:
    ``file_id`` then ``INSTANCE_COLUMNS``' values."""
    if connection.dialect.name == "postgresql":
        return driver_rows(connection, _INSTANCES_PG,
                           ("{" + ",".join([int.__repr__(i) for i in file_ids]) + "}",))
    match = f"IN ({', '.join('?' * len(file_ids))})"
    return driver_rows(connection, _INSTANCES_SQL.format(match=match), tuple(file_ids))


def _instances(session: OrmSession | Connection, file_ids: list[int]) -> list[list[Any]]:
    """``_instance_rows`` with their values converted as SQLAlchemy would."""
    connection = session if isinstance(session, Connection) else session.connection()
    processors = _processors(connection.dialect)
    found = []
    for row in _instance_rows(connection, file_ids):
        values: list[Any] = list(row)
        for position, processor, _type in processors:
            values[position] = processor(values[position])
        found.append(values)
    return found


def _page_writer(dialect: Dialect, json_as_text: bool = False
                 ) -> tuple[PageWriter, list[tuple[int, Callable[[Any], Any]]]]:
    """A writer for a page's text and the processors its instance rows still need: a boolean's
    is left out (the writer reads its truth, and SQLAlchemy's is ``bool``), a time's goes to the
    writer (which parses only what is not in SQLAlchemy's SQLite form), any other column's
    stays."""
    parse_time = None
    others = []
    for position, processor, type_ in _processors(dialect):
        if isinstance(type_, Boolean):
            continue
        if isinstance(type_, DateTime) and parse_time in (None, processor):
            parse_time = processor
            continue
        others.append((position, processor))
    return PageWriter(parse_time, json_as_text), others


def files_with_instances(session: OrmSession, files: Sequence[Any]) -> list[dict[str, Any]]:
    """The JSON of each file row of ``files`` with ``"instances"``: its instances in id
    order."""
    names = {f.id: f.name for f in files}
    held: dict[int, list[dict[str, Any]]] = {file_id: [] for file_id in names}
    for values in _instances(session, list(names)):
        file_id = values[0]
        if file_id in held:
            held[file_id].append(instance_fields(names[file_id], *values[1:]))
    results = []
    for f in files:
        result = file_json(f)
        result["instances"] = held[f.id]
        results.append(result)
    return results


def files_with_instances_text(connection: Connection, files: Sequence[Any],
                              instances: Sequence[Sequence[Any]] | None = None, *,
                              json_as_text: bool = False) -> list[str]:
    """``files_with_instances`` as each file's JSON text (``json.dumps`` of its dict, byte for
    byte), written by ``search_reply.PageWriter`` from the rows without the dicts;
    ``instances``: their instance rows when read already (``search.SearchPage.instances``),
    each file's in id order (others' are left out); ``json_as_text``: the files' JSON columns
    are their JSON text (``search.SearchPage.json_as_text``)."""
    # Rows unpacked by position (FILE_COLUMNS: id, name, then PageWriter.file's values in
    # order): reading a row's values by name costs 0.3 us each, most of a file's formatting.
    names = {row[0]: name_text(row[1]) for row in files}
    held: dict[int, list[str]] = {file_id: [] for file_id in names}
    writer, processors = _page_writer(connection.dialect, json_as_text)
    instance_text = writer.instance
    if instances is None:
        instances = _instance_rows(connection, list(names))
    for row in instances:
        file_id = row[0]
        if file_id in held:
            if processors:
                row = list(row)
                for position, processor in processors:
                    row[position] = processor(row[position])
            held[file_id].append(instance_text(names[file_id], row))
    file_text = writer.file
    return [file_text(names[file_id], *values, instances=held[file_id])
            for file_id, _name, *values in files]
