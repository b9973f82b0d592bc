"""The receiver's ``transfer_item`` rows in bulk, through the database driver.

A batch of small files touches every one of its items' rows several times (recorded when
announced, marked receiving when its pull starts, committed when registered); through
SQLAlchemy each row cost 14-25 us of Python (compiling, a bind processor per value, a JSON and a
datetime conversion per column, an expanding ``IN`` of a thousand parameters). Here, as in
``catalogue.tables``, SQL is written for the driver and run on the connection (and so in the
transaction) of a ``Database.write()`` or ``read()`` session: new (and pushed) rows in one
multi-row ``INSERT`` (SQLite) or one ``INSERT ... SELECT`` of the rows as one JSON text
(PostgreSQL; a pushed row's checksums and spec go in it as JSON values, not as texts made
first), ``executemany`` of one statement for re-armed rows, one bound list (``inlist``)
for a batch's ids or names, one conversion of the time a batch shares. Values are stored as
SQLAlchemy stores them (JSON as ``json.dumps`` text, JSONB on PostgreSQL; SQLite's datetimes in
SQLAlchemy's text form), so the ORM reads these rows as its own.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy.orm import Session as DbSession

from ..catalogue.checksums import checksums_json
from ..catalogue.inlist import bound_values, one_of_sql
from ..states import ACTIVE_TRANSFER_ITEM_STATES, TransferItemState
from .models import TransferItem
from .protocol import spec_json


class ItemRow(NamedTuple):
    """What a batch pull needs of an item (the attributes of a ``TransferItem`` it reads)."""

    id: int
    peer: str
    name: str
    transfer: str
    path: str
    size: int
    checksums: dict[str, str]
    attempts: int
    spec: dict[str, Any]


#: Columns of a new row, in the order ``ItemRows.insert`` takes them.
NEW_COLUMNS = ("transfer", "peer", "name", "path", "size", "checksums", "spec", "state",
               "attempts", "resumed_from", "error", "created_at", "updated_at")
#: PostgreSQL's type of each of ``NEW_COLUMNS``, for rows given as a JSON array
#: (``ItemRows._insert_rows``).
_PG_TYPES = ("text", "text", "text", "text", "int8", "jsonb", "jsonb", "text", "int4", "int8",
             "text", "timestamp", "timestamp")
#: Rows per multi-row ``INSERT ... VALUES`` on SQLite (13 bound values a row: well under its
#: 32,766 a statement).
_SQLITE_ROWS_PER_INSERT = 1_000
_ACTIVE = "('" + "', '".join(ACTIVE_TRANSFER_ITEM_STATES) + "')"


def _iso(value: Any) -> str:
    """A row's timestamp in a JSON text of rows (what PostgreSQL's ``timestamp`` reads)."""
    if isinstance(value, dt.datetime):
        return value.isoformat(" ")
    raise TypeError(f"{type(value).__name__} is no column value")


class ItemRows:
    """``transfer_item`` on the connection of the session ``s`` (its transaction begun)."""

    def __init__(self, s: DbSession) -> None:
        connection = s.connection()
        self.pg = connection.dialect.name == "postgresql"
        self._raw: Any = connection.connection.driver_connection
        self._in = one_of_sql(connection.dialect.name, "{}").replace("%s", "?")
        self._backend = connection.dialect.name
        processor = TransferItem.__table__.c.updated_at.type.dialect_impl(
            connection.dialect).bind_processor(connection.dialect)
        self._time = processor or (lambda when: when)

    def time(self, when: dt.datetime) -> Any:
        """``when`` (naive UTC) as a timestamp column takes it."""
        return self._time(when)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.pg:
            cursor = self._raw.cursor()
            cursor.execute(self._sql(sql), params, prepare=False)
            return cursor
        return self._raw.execute(sql, params)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            (self._raw.cursor() if self.pg else self._raw).executemany(self._sql(sql), rows)

    def _insert_rows(self, rows: Sequence[tuple[Any, ...]], tail: str = "",
                     json_values: bool = False) -> None:
        """``INSERT`` of ``rows`` (tuples in the order of ``NEW_COLUMNS``), ``tail`` after its
        values (an ``ON CONFLICT`` clause). SQLite: multi-row ``VALUES`` of up to
        ``_SQLITE_ROWS_PER_INSERT`` rows (``catalogue.tables``' form: less work a row than
        ``executemany``); PostgreSQL: one ``INSERT ... SELECT`` of the rows bound as ONE JSON
        text (``tables``' form too: ``executemany`` cost the client 12-19 us a row), in their
        order (the ids ascend as they would row by row). ``json_values`` (PostgreSQL): the
        rows hold their JSON columns' values, not their text; they go into that one text as
        themselves (no text of each made in Python, then quoted again; the same ``jsonb``)."""
        if not rows:
            return
        columns = ", ".join(NEW_COLUMNS)
        if self.pg:
            values = ", ".join(f"(e->{i})" if json_values and kind == "jsonb"
                               else f"(e->>{i})::{kind}" for i, kind in enumerate(_PG_TYPES))
            self._raw.cursor().execute(
                f"INSERT INTO transfer_item ({columns}) SELECT {values} "
                "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(e, n) ORDER BY n"
                f"{tail}", [json.dumps(rows, default=_iso)], prepare=False)
            return
        marks = "(" + ", ".join("?" * len(NEW_COLUMNS)) + ")"
        head = f"INSERT INTO transfer_item ({columns}) VALUES "
        for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
            chunk = rows[start:start + _SQLITE_ROWS_PER_INSERT]
            self._raw.execute(f"{head}{', '.join([marks] * len(chunk))}{tail}",
                              list(itertools.chain.from_iterable(chunk)))

    def _where(self, column: str, values: Iterable[Any]) -> tuple[str, Any]:
        return self._in.format(column), bound_values(self._backend, values)

    def _cast(self) -> str:
        return "::jsonb" if self.pg else ""

    # ----- reads --------------------------------------------------------------------------
    def known(self, peer: str, names: Iterable[str]) -> dict[str, tuple[int, str, int, Any]]:
        """The items of ``peer`` named in ``names``: name -> (id, state, size, checksums)."""
        condition, values = self._where("name", names)
        rows = self._run("SELECT id, name, state, size, checksums FROM transfer_item "
                         f"WHERE peer = ? AND {condition}", [peer, values]).fetchall()
        return {name: (id_, state, size, self._loads(checksums))
                for id_, name, state, size, checksums in rows}

    def ids(self, peer: str, names: Iterable[str]) -> dict[str, int]:
        condition, values = self._where("name", names)
        return dict(self._run(f"SELECT name, id FROM transfer_item WHERE peer = ? AND "
                              f"{condition}", [peer, values]).fetchall())

    def _loads(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value  # SQLite: JSON's text

    # ----- writes -------------------------------------------------------------------------
    def insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """New items, each a tuple in the order of ``NEW_COLUMNS`` (JSON as ``json.dumps``
        text, times as ``time`` gives them)."""
        self._insert_rows(rows)

    def rearm(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Known items announced again: (transfer, path, size, checksums, spec, updated_at,
        queue it again from zero (bool), id) each."""
        cast = self._cast()
        self._many(
            f"UPDATE transfer_item SET transfer = ?, path = ?, size = ?, checksums = ?{cast}, "
            f"spec = ?{cast}, updated_at = ?, "
            "state = CASE WHEN ? THEN 'queued' ELSE state END, "
            "attempts = CASE WHEN ? THEN 0 ELSE attempts END, "
            "error = CASE WHEN ? THEN '' ELSE error END WHERE id = ?",
            [(*row[:6], row[6], row[6], row[6], row[7]) for row in rows])

    def start(self, item_ids: Sequence[int], now: dt.datetime,
              parsed: dict[int, tuple[str, str, dict[str, str], dict[str, Any]]] | None = None
              ) -> list[ItemRow]:
        """Mark the items of ``item_ids`` still active as receiving (one more attempt each,
        from zero); their rows, in id order. ``parsed``: item id -> (checksums and spec as JSON
        text, and as values) of what this process wrote itself; a row holding exactly that
        text takes the values instead of parsing its JSON again (each entry is used once)."""
        condition, values = self._where("id", item_ids)
        self._run(f"UPDATE transfer_item SET state = 'receiving', resumed_from = 0, "
                  f"attempts = attempts + 1, updated_at = ? WHERE {condition} "
                  f"AND state IN {_ACTIVE}", [self.time(now), values])
        rows = self._run(
            "SELECT id, peer, name, transfer, path, size, checksums, attempts, spec "
            f"FROM transfer_item WHERE {condition} AND state = 'receiving' ORDER BY id",
            [values]).fetchall()
        loads, parsed = self._loads, parsed if parsed is not None else {}
        out = []
        for id_, peer, name, transfer, path, size, checksums, attempts, spec in rows:
            known = parsed.pop(id_, None)
            if known is not None and known[0] == checksums and known[1] == spec:
                checksums, spec = known[2], known[3]
            else:
                checksums, spec = loads(checksums), loads(spec)
            out.append(ItemRow(id_, peer, name, transfer, path, size, checksums, attempts,
                               spec))
        return out

    def put_committed(self, items: Sequence[ItemRow], now: dt.datetime) -> None:
        """Record ``items`` (of one peer), received whole by a push, as committed: each
        inserted, or its known row (an earlier transfer of the name: its id and
        ``created_at`` kept) updated; the row written once, by one upsert each (no lookup
        first, and a row another announce inserted meanwhile is updated, not a clash)."""
        when, pg = self.time(now), self.pg
        self._insert_rows(
            [(item.transfer, item.peer, item.name, item.path, item.size,  # NEW_COLUMNS' order
              # PostgreSQL: the values themselves (``json_values``); SQLite: ``json.dumps``'
              # text of them.
              item.checksums if pg else checksums_json(item.checksums),
              item.spec if pg else spec_json(item.spec),
              TransferItemState.COMMITTED, item.attempts, 0, "", when, when)
             for item in items],
            " ON CONFLICT (peer, name) DO UPDATE SET transfer = excluded.transfer, "
            "path = excluded.path, size = excluded.size, checksums = excluded.checksums, "
            "spec = excluded.spec, state = excluded.state, attempts = excluded.attempts, "
            "resumed_from = 0, error = '', updated_at = excluded.updated_at", json_values=True)

    def set_state(self, item_ids: Sequence[int], state: str, error: str,
                  now: dt.datetime) -> None:
        """The state and error of every item of ``item_ids``, each ended (committed or
        failed): its receiver's lease given up (``receiver.py``)."""
        condition, values = self._where("id", item_ids)
        self._run(f"UPDATE transfer_item SET state = ?, error = ?, updated_at = ?, "
                  f"holder = NULL, lease_expires = NULL WHERE {condition}",
                  [state, error, self.time(now), values])
