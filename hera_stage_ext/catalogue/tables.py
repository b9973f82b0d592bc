"""Bulk reads and writes of the catalogue's tables inside one write transaction, through the driver.

``Catalogue`` writes every file, instance, event and remote instance row; where a caller hands it
hundreds or thousands at once (an ingest batch, a transfer's batch of received files) it goes
through ``Tables``: SQL written for the database driver, on the connection (and so in the
transaction) of a ``Database.write()`` session. Registering files through SQLAlchemy spent most
of its time in Python per row and per value (compiling, bind processors, a JSON and a datetime
conversion per column), and on PostgreSQL in two dozen round trips a batch. Here a value shared
by a batch (the time, a store's name) is converted once, new files get their ids first
(``new_file_ids``: the ids the database would have given them) so that their instances and events
are written with ids, and rows go to the database as:

- SQLite: multi-row ``INSERT ... VALUES`` of up to 1,000 rows (a third less work a row than
  ``executemany`` of a one-row statement);
- PostgreSQL: one ``INSERT ... SELECT FROM jsonb_array_elements(rows)`` a table, the rows bound
  as ONE JSON text (``json.dumps`` of the batch, in C: binding arrays cost more Python per
  value), every statement of a batch sent at once in psycopg's pipeline mode: one round trip for
  the lookups, one for the ids, one for the writes, whatever the count. (``COPY`` was measured
  too: no less CPU in all, server's and ours, two round trips a table instead of none, and the
  lookups of the next batches ran slower in wall time, which its ring buffer would explain: it
  writes the new rows through 16 MB of the server's cache rather than leaving them there.) Statements are never
  prepared server-side (``prepare=False``): a generic plan made while the tables were nearly
  empty (a sequential scan) would be kept as they grow.

Sessions and observations are upserts (``_ON_CONFLICT``): two registrations of one night at once
(``Catalogue.register_batches``'s next batch is checked while the one before is written) each
write what they found missing or widened, and neither refuses nor undoes the other.

Instances and events have no foreign keys (migration 0013: a check a row, a fifth of the
PostgreSQL server's work in registering); file and store rows are never deleted (a trigger refuses
it), and ``write`` takes an instance's or event's file and store ids only when this transaction
allocated or looked them up, or after one query a statement finds them (``NotFound`` if not).

Lookups by many keys use ``inlist`` (one bound list). Values are stored as SQLAlchemy stores them
(``models``): JSON as ``json.dumps`` text (JSONB on PostgreSQL), SQLite's datetimes in
SQLAlchemy's text form; every column is given (the models' defaults are Python-side).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
from _json import make_encoder
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session as DbSession

from ..errors import NotFound
from .inlist import bound_values, one_of_sql
from .models import Event

#: Rows per multi-row ``INSERT ... VALUES`` on SQLite: a third less work a row than
#: ``executemany`` of a one-row statement, and well under SQLite's 32,766 bound variables a
#: statement (10 a file row). Fewer, larger statements also write less of SQLite's statement
#: journal (pages a statement changes, kept to undo it; to a temporary file past 64 KiB): 250
#: rows a statement wrote 35% more than 1,000. The sqlite3 module keeps each size compiled.
_SQLITE_ROWS_PER_INSERT = 1_000

#: PostgreSQL: a table's rows from this many on go in with ``COPY`` (``Tables._copy``), fewer in
#: one ``INSERT`` sent with the other statements of the write (``_insert``). ``COPY`` costs the
#: server about a quarter less a registered file (no JSON to parse twice, its multi-row heap
#: inserts) but two round trips of its own: worth it for a batch, not for an event or two.
_PG_COPY_ROWS = 50

# Per table: (column, PostgreSQL type, cast of the value when not to that type). JSON travels as
# text; an instance's or event's file is given by id, or by name (``write``).
_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "session": (("id", "int8", ""), ("start_time_jd", "float8", ""),
                ("stop_time_jd", "float8", "")),
    "observation": (("obsid", "int8", ""), ("start_time_jd", "float8", ""),
                    ("stop_time_jd", "float8", ""), ("start_lst_hr", "float8", ""),
                    ("session_id", "int8", "")),
    "file": (("id", "int8", ""), ("name", "text", ""), ("type", "text", ""), ("size", "int8", ""),
             ("is_directory", "bool", ""), ("checksums", "text", "::jsonb"),
             ("create_time", "timestamp", ""), ("obsid", "int8", ""), ("source", "text", ""),
             ("metadata", "text", "::jsonb")),
    "instance": (("file_id", "text", ""), ("store_id", "int8", ""), ("path", "text", ""),
                 ("available", "bool", ""), ("deletion_policy", "text", ""),
                 ("create_time", "timestamp", ""), ("fixity", "text", ""),
                 ("verified_at", "timestamp", ""), ("fixity_detail", "text", "")),
    "event": (("file_id", "text", ""), ("type", "text", ""), ("time", "timestamp", ""),
              ("payload", "text", "::jsonb")),
    "remote_instance": (("file_id", "text", ""), ("site", "text", ""),
                        ("time", "timestamp", ""), ("transfer", "text", "")),
}

#: Per table written as an upsert: its ``ON CONFLICT`` clause. Registrations running at once
#: (``Catalogue.register_batches``, or two processes) may each find a night's session or an
#: observation missing, or a session narrower than the other makes it: the later one's write
#: neither fails nor undoes the other's (``min``/``max`` of two values: SQLite's scalar
#: functions, PostgreSQL's LEAST and GREATEST, both spelled by ``_RANGE``).
_RANGE = {"sqlite": ("min", "max"), "postgresql": ("LEAST", "GREATEST")}
_ON_CONFLICT = {
    "session": (" ON CONFLICT (id) DO UPDATE SET"
                " start_time_jd = {0}(session.start_time_jd, excluded.start_time_jd),"
                " stop_time_jd = {1}(session.stop_time_jd, excluded.stop_time_jd)"),
    "observation": " ON CONFLICT (obsid) DO NOTHING",
}


def _element(index: int, kind: str, cast: str) -> str:
    """SQL of column ``index`` of a row given as a JSON array ``e`` (PostgreSQL)."""
    return f"(e->>{index}){cast or '::' + kind}"


#: ``json.dumps``'s C encoder (``json.encoder.c_make_encoder``) with its default settings, made
#: once: ``json.dumps`` makes one each call, about half of its cost for a small payload (a
#: received file's event: 0.9 of 1.8 us). No check for circular values (``json.dumps`` raises
#: ValueError on one, this RecursionError): a check's state shared between calls would outlive
#: one that raised.
_ENCODE = make_encoder(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii,
                       None, ": ", ", ", False, False, True)


def dumps(value: Any) -> str:
    """JSON text of a column value, as SQLAlchemy's JSON type writes it (``json.dumps``)."""
    return "".join(_ENCODE(value, 0))


#: JSON text of a string, as ``dumps`` writes it (for payloads put together from parts).
json_string = json.encoder.encode_basestring_ascii


@dataclass
class Found:
    """What ``Tables.find`` found of a registration batch."""

    store: tuple[int, str] | None = None  # id, name
    files: dict[str, tuple[int, int, dict[str, str]]] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)  # path on the store -> file id
    observations: set[int] = field(default_factory=set)
    sessions: dict[int, tuple[float, float]] = field(default_factory=dict)  # id -> start, stop


class Tables:
    """The catalogue's tables, on the connection of the write session ``s`` (its transaction
    begun: on SQLite that is ``BEGIN IMMEDIATE``)."""

    def __init__(self, s: DbSession) -> None:
        connection = s.connection()
        self.backend = connection.dialect.name
        self.pg = self.backend == "postgresql"
        self._raw: Any = connection.connection.driver_connection
        # File ids by name, of the files this transaction inserted or looked up (SQLite's
        # instances and events take the id; PostgreSQL's find it by name).
        self._ids: dict[str, int] = {}
        # Ids known to exist (allocated, or read, in this transaction): ``write`` checks others.
        self._file_ids: set[int] = set()
        self._store_ids: set[int] = set()
        # A timestamp as a row of ``write`` gives it: SQLite stores SQLAlchemy's text form (its
        # DATETIME type's own conversion); PostgreSQL casts ISO text.
        self._time: Callable[[dt.datetime], Any] = (lambda t: t.isoformat(" "))
        if not self.pg:
            processor = Event.__table__.c.time.type.dialect_impl(
                connection.dialect).bind_processor(connection.dialect)
            assert processor is not None
            self._time = processor

    def time(self, when: dt.datetime) -> Any:
        """``when`` (naive UTC) as a timestamp column takes it."""
        if not self.pg and type(when) is dt.datetime and when.tzinfo is None:
            # SQLAlchemy's text form of it, in C (a third of the processor's cost: a received
            # file's creation time is converted a file).
            return when.isoformat(" ", "microseconds")
        return self._time(when)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """PostgreSQL: the statements run in here are sent together (pipeline mode); each
        result is waited for when it is fetched, or at the end."""
        if self.pg:
            with self._raw.pipeline():
                yield
        else:
            yield

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (``?`` marks parameters); its cursor."""
        if self.pg:
            cursor = self._raw.cursor()
            cursor.execute(sql.replace("?", "%b"), params, prepare=False)
            return cursor
        return self._raw.execute(sql, params)

    def _where_in(self, sql: str, column: str, values: Iterable[Any],
                  params: Sequence[Any] = ()) -> Any:
        """``_run`` of ``sql`` (ending in WHERE or AND) with ``column IN values`` appended;
        None for no values."""
        values = list(values)
        if not values:
            return None
        condition = one_of_sql(self.backend, column).replace("%s", "?")
        return self._run(f"{sql} {condition}", [*params, bound_values(self.backend, values)])

    # ----- reads --------------------------------------------------------------------------
    def find(self, store: str | None, names: Iterable[str], paths: Iterable[str],
             obsids: Iterable[int], session_ids: Iterable[int]) -> Found:
        """The store, the files of ``names``, which of ``paths`` the store holds (and the
        file there), which ``obsids`` and sessions exist: five queries, sent together."""
        found = Found()
        with self._batch():
            stores = files = held = observations = sessions = None
            if store is not None:
                stores = self._run("SELECT id, name FROM store WHERE name = ?", [store])
                held = self._held(store, paths)
            files = self._where_in("SELECT id, name, size, checksums FROM file WHERE", "name",
                                   names)
            observations = self._where_in("SELECT obsid FROM observation WHERE", "obsid",
                                          obsids)
            sessions = self._where_in(
                "SELECT id, start_time_jd, stop_time_jd FROM session WHERE", "id", session_ids)
            if stores is not None:
                row = stores.fetchone()
                found.store = None if row is None else (row[0], row[1])
                if row is not None:
                    self._store_ids.add(row[0])
            if held is not None:
                found.held = dict(held.fetchall())
            if files is not None:
                for id_, name, size, checksums in files.fetchall():
                    if isinstance(checksums, str):  # SQLite gives JSON's text
                        checksums = json.loads(checksums)
                    found.files[name] = (id_, size, checksums)
                    self._ids[name] = id_
                    self._file_ids.add(id_)
            if observations is not None:
                found.observations = {row[0] for row in observations.fetchall()}
            if sessions is not None:
                found.sessions = {id_: (start, stop) for id_, start, stop in sessions.fetchall()}
        return found

    def files_without_remote(self, site: str, names: Iterable[str]) -> list[int]:
        """Of the files of ``names``, the ids of those not yet recorded as held by ``site``
        (known to exist, for ``write``)."""
        names = list(names)
        if not names:
            return []
        if self.pg:  # one probe of the (file, site) index a file, whatever the statistics
            cursor = self._run(
                "SELECT id FROM (SELECT f.id, EXISTS (SELECT 1 FROM remote_instance r "
                "WHERE r.file_id = f.id AND r.site = ?) AS held FROM file f "
                "WHERE f.name = ANY(?) OFFSET 0) AS h WHERE NOT held", [site, names])
        else:
            cursor = self._where_in(
                "SELECT f.id FROM file f WHERE NOT EXISTS (SELECT 1 FROM remote_instance r "
                "WHERE r.file_id = f.id AND r.site = ?) AND", "f.name", names, [site])
        ids = [row[0] for row in cursor.fetchall()]
        self._file_ids.update(ids)
        return ids

    def _held(self, store: str, paths: Iterable[str]) -> Any:
        """The cursor of (path, file id) of ``paths`` that ``store`` holds; None for none."""
        paths = list(paths)
        if not paths or not self.pg:
            return self._where_in(
                "SELECT i.path, i.file_id FROM instance i JOIN store s ON s.id = i.store_id"
                " WHERE s.name = ? AND", "i.path", paths, [store])
        # One probe of the (store, path) index a path. Given the list, PostgreSQL's planner
        # took the store's index and filtered every instance of the store by path whenever
        # its statistics were older than the last few batches: a scan a batch.
        return self._run(
            "SELECT path, file_id FROM (SELECT p.path, (SELECT i.file_id FROM instance i "
            "WHERE i.store_id = s.id AND i.path = p.path) AS file_id FROM store s, "
            "unnest(?::text[]) AS p(path) WHERE s.name = ? OFFSET 0) AS h "  # 0: probe once
            "WHERE file_id IS NOT NULL",
            [paths, store])

    # ----- writes -------------------------------------------------------------------------
    def new_file_ids(self, count: int) -> list[int]:
        """Ids for ``count`` new files, ascending: the ids the database would have given them
        (SQLite: the next after the largest, this transaction holding the write lock;
        PostgreSQL: the next of the id's sequence), so that their instances and events go in
        with ids: no lookup by name a row."""
        if count <= 0:
            return []
        if self.pg:
            # The sequence looked up once (OFFSET 0 keeps the subquery from being pulled up
            # into a lookup a row: 3% of the server's work in registering).
            cursor = self._run(
                "SELECT nextval(q.seq) FROM (SELECT pg_get_serial_sequence('file', 'id')"
                "::regclass AS seq OFFSET 0) AS q, generate_series(1, ?::int4) ORDER BY 1",
                [count])
            ids = [row[0] for row in cursor.fetchall()]
        else:
            (last,) = self._raw.execute("SELECT max(id) FROM file").fetchone()
            ids = list(range((last or 0) + 1, (last or 0) + 1 + count))
        self._file_ids.update(ids)
        return ids

    def write(self, *, sessions: Sequence[tuple[Any, ...]] = (),
              observations: Sequence[tuple[Any, ...]] = (),
              files: Sequence[tuple[Any, ...]] = (),
              instances: Sequence[tuple[Any, ...]] = (),
              events: Sequence[tuple[Any, ...]] = (),
              remote_instances: Sequence[tuple[Any, ...]] = ()) -> None:
        """Insert rows, one statement a table, in this order (all sent together on
        PostgreSQL). Rows are tuples in the order of ``_COLUMNS`` (a file's id from
        ``new_file_ids``), times as ``time`` gives them, JSON as text. A session already stored
        is widened to its row's range (never narrowed: two registrations of one night, each
        having read the session before the other wrote it, leave it spanning both); an
        observation already stored is left as it is (another registration wrote it since this
        one looked). An instance, event or remote instance gives its file by id or by name (a
        file of this very transaction, perhaps); the name of a file that does not exist is an
        error, and so is an id of a file or store that does not exist (``NotFound``)."""
        self._check_exist("file", [row[0] for rows in (instances, events) for row in rows
                                   if isinstance(row[0], int)], self._file_ids)
        self._check_exist("store", [row[1] for row in instances], self._store_ids)
        writes = (("session", sessions, _ON_CONFLICT["session"].format(*_RANGE[self.backend])),
                  ("observation", observations, _ON_CONFLICT["observation"]),
                  ("file", files, ""), ("instance", instances, ""), ("event", events, ""),
                  ("remote_instance", remote_instances, ""))
        if not self.pg:
            for table, rows, on_conflict in writes:
                self._insert(table, rows, on_conflict)
            return
        # In order: the statements before a COPY sent together, then the COPY.
        pending: list[tuple[str, Sequence[tuple[Any, ...]], str]] = []
        for table, rows, on_conflict in writes:
            if on_conflict or len(rows) < _PG_COPY_ROWS:
                pending.append((table, rows, on_conflict))
                continue
            self._insert_together(pending)
            pending = []
            self._copy(table, rows)
        self._insert_together(pending)

    def _insert_together(self, writes: Sequence[tuple[str, Sequence[tuple[Any, ...]], str]]
                         ) -> None:
        """``_insert`` each of ``writes`` (table, rows, on_conflict), sent together."""
        if any(rows for _table, rows, _c in writes):
            with self._batch():
                for table, rows, on_conflict in writes:
                    self._insert(table, rows, on_conflict)

    def _copy(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """PostgreSQL: ``COPY`` ``rows`` into ``table`` (text format: psycopg formats each row
        in C, the server parses each value once; its bulk path for the heap). An instance's
        or event's file given by name is looked up first (one query)."""
        columns = _COLUMNS[table]
        if columns[0][0] == "file_id":
            rows = self._by_file_id(rows)
        names = ", ".join(c for c, _t, _x in columns)
        with self._raw.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _by_file_id(self, rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
        """``rows`` whose first value is a file's id or name with every name made its id
        (one query); a name of no file: NotFound."""
        if all(isinstance(row[0], int) for row in rows):
            return rows
        ids = self.file_ids(row[0] for row in rows if isinstance(row[0], str))
        missing = sorted({row[0] for row in rows if isinstance(row[0], str) and row[0] not in ids})
        if missing:
            raise NotFound(f"no file named {missing[0]!r}")
        return [row if isinstance(row[0], int) else (ids[row[0]], *row[1:]) for row in rows]

    def _check_exist(self, table: str, ids: Iterable[int], known: set[int]) -> None:
        """Raise NotFound unless every one of ``ids`` is a row of ``table`` (a file or store:
        never deleted, so one found stays); ``known``: ids already known to exist, extended."""
        unknown = set(ids) - known
        if not unknown:
            return
        cursor = self._where_in(f"SELECT id FROM {table} WHERE", "id", unknown)
        known.update(row[0] for row in cursor.fetchall())
        missing = sorted(unknown - known)
        if missing:
            raise NotFound(f"no {table} with id {missing[0]}")

    def file_ids(self, names: Iterable[str]) -> dict[str, int]:
        """Ids of the files of ``names`` that exist, by name (and of other files this
        transaction has seen)."""
        names = [n for n in set(names) if n not in self._ids]
        cursor = self._where_in("SELECT name, id FROM file WHERE", "name", names)
        if cursor is not None:
            self._ids.update(cursor.fetchall())
            self._file_ids.update(self._ids.values())
        return self._ids

    def _insert(self, table: str, rows: Sequence[tuple[Any, ...]], on_conflict: str = ""
                ) -> None:
        """Insert ``rows`` into ``table``; ``on_conflict``: the statement's ``ON CONFLICT``
        clause, if any (the same SQL on both databases)."""
        if not rows:
            return
        columns = _COLUMNS[table]
        names = ", ".join(c for c, _t, _x in columns)
        by_name = columns[0][0] == "file_id"
        if not self.pg:
            if by_name:
                rows = self._by_file_id(rows)
            row_marks = "(" + ", ".join("?" * len(columns)) + ")"
            for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
                chunk = rows[start:start + _SQLITE_ROWS_PER_INSERT]
                self._raw.execute(
                    f"INSERT INTO {table} ({names}) VALUES {', '.join([row_marks] * len(chunk))}"
                    f"{on_conflict}", list(itertools.chain.from_iterable(chunk)))
            return
        values = [_element(i, kind, cast) for i, (_c, kind, cast) in enumerate(columns)]
        if by_name:  # the file's id, or its name (a file of this very batch, perhaps)
            values[0] = ("CASE jsonb_typeof(e->0) WHEN 'number' THEN (e->>0)::int8 "
                         "ELSE (SELECT f.id FROM file f WHERE f.name = e->>0) END")
        self._raw.cursor().execute(
            f"INSERT INTO {table} ({names}) SELECT {', '.join(values)} "
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(e, n) ORDER BY n"
            f"{on_conflict}",
            [json.dumps(rows)], prepare=False)
