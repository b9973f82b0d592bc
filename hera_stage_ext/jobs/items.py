"""A job's items as a queue: claiming a batch of queued items for a stream (atomically:
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), putting those not
started back, recording a batch of results with the job's counters in one transaction, both at
once (``exchange``: a stream hands in what it moved and takes its next batch in one
transaction, one round trip for a worker over HTTP), and the paths of the items not through
yet. Every kind's streams use these (``run.JobRun`` for stage jobs, the transfer and upload
kinds), under the names they had in ``engine``.

Items of a batch are selected by runs of consecutive ids (``id BETWEEN a AND b``), not by a list
of every id: a claim of 1,024 small files is one run, and SQLAlchemy's per-value expansion of an
``IN`` list cost more Python per item than the database spent on the statement. A batch's
results are counted from the rows each ``UPDATE`` wrote (their number and bytes summed by the
database: ``_update_counted``), so a report from a worker over HTTP can be limited to the job's
running items in the same statement (which also lets it give its error-free results as id runs:
``RunResults``).

Each item row is written twice (claimed, recorded), so each write is kept small: a claim sets the
state and counts the attempt, a result sets the state and error; neither names the worker in the
row (the job's row names the one worker holding its running items), and a done or skipped result changes no indexed column (``models.
JOB_ITEM_INDEXES``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.engine import Connection

from ..catalogue.checksums import ALGORITHMS
from ..catalogue.db import Database, driver_mark, driver_rows, loads_json_texts
from ..states import ARRIVED_ITEM_STATES, ItemState
from .models import JOB_ITEM_TABLE, JobItem

_ITEMS = JOB_ITEM_TABLE

#: Most values in one SQL ``IN (...)`` list.
IN_CHUNK = 5_000
#: Most id runs (``BETWEEN`` terms) in one statement.
RUN_CHUNK = 200


@dataclass(slots=True)  # thousands a claim: no dict each
class ClaimedItem:
    id: int
    name: str
    source_path: str
    dest_path: str
    size: int
    is_directory: bool
    checksums: dict[str, str]
    attempts: int
    store: str = ""


#: One item's result for ``record_results``: the item, its state ("done", "skipped", "failed"), the
#: error (empty unless failed).
Result = tuple[ClaimedItem, str, str]
#: The same by the item's id (as a worker reports it over HTTP).
IdResult = tuple[int, str, str]
#: The states a result may give an item.
RESULT_STATES = (ItemState.DONE, ItemState.SKIPPED, ItemState.FAILED)
#: Error-free results by runs of consecutive item ids: state -> [(first id, last id), ...]
#: (a worker over HTTP sends most of a hand-over's results so: a few numbers, not a triple an
#: item). Only the running items of the job in those runs are recorded.
RunResults = Mapping[str, Sequence[tuple[int, int]]]


def id_runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """``ids`` as runs of consecutive values: [(first, last), ...], ascending."""
    return ascending_runs(sorted(set(ids)))


def ascending_runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """``id_runs`` of ``ids`` already ascending and distinct (a claim's rows, as selected)."""
    if not ids:
        return []
    if ids[-1] - ids[0] + 1 == len(ids):
        return [(ids[0], ids[-1])]  # one run (most claims): no loop per id
    runs: list[tuple[int, int]] = []
    first = last = ids[0]
    for i in ids[1:]:
        if i != last + 1:
            runs.append((first, last))
            first = i
        last = i
    runs.append((first, last))
    return runs


def id_terms(ids: Iterable[int]) -> list[ColumnElement[bool]]:
    """WHERE terms that together select exactly ``ids`` (one per ``RUN_CHUNK`` runs)."""
    column = _ITEMS.c.id
    runs = id_runs(ids)
    terms = []
    for start in range(0, len(runs), RUN_CHUNK):
        terms.append(or_(*(column == a if a == b else column.between(a, b)
                           for a, b in runs[start:start + RUN_CHUNK])))
    return terms


def claim_items(db: Database, job_id: int, n: int,
                 max_bytes: int | None = None) -> list[ClaimedItem]:
    """Take up to ``n`` queued items (and, past the first, no more than ``max_bytes``)."""
    return exchange(db, job_id, [], n, max_bytes)[1]


def exchange(db: Database, job_id: int, results: Sequence[IdResult], n: int,
             max_bytes: int | None = None, *, running_only: bool = False,
             runs: RunResults | None = None) -> tuple[int, list[ClaimedItem]]:
    """Record ``results`` (``record_results``) and take up to ``n`` queued items (``claim_items``)
    in one transaction; ``n`` 0 only records. Returns how many results were recorded and the
    items taken. With ``running_only`` (a report from a worker over HTTP), only results for
    items of the job still running are recorded: one sent twice counts once; ``runs`` then
    gives more error-free results by id runs (``RunResults``)."""
    recorded, rows = _exchange_rows(db, job_id, results, n, max_bytes, running_only, runs)
    # The checksums' JSON texts decoded in one call for the whole batch.
    checksums = loads_json_texts((row[6] for row in rows), "{}")
    return recorded, [ClaimedItem(row[0], row[1], row[2], row[3], row[4], bool(row[5]),
                                  sums or {}, row[7] + 1, row[8])
                      for row, sums in zip(rows, checksums)]


def _exchange_rows(db: Database, job_id: int, results: Sequence[IdResult], n: int,
                   max_bytes: int | None, running_only: bool,
                   runs: RunResults | None = None, as_json: bool = False,
                   narrow: bool = False) -> tuple[int, list[Any]]:
    """``exchange``'s transaction: how many results were recorded, and the items taken as the
    driver's rows (``_claim_rows_in``, ``as_json``)."""
    if not results and not runs and n <= 0:
        return 0, []
    with db.write() as s:
        connection = s.connection()
        recorded = (_record_in(connection, job_id, results, running_only, runs)
                    if results or runs else 0)
        rows = (_claim_rows_in(connection, job_id, n, max_bytes, as_json, narrow) if n > 0
                else [])
    return recorded, rows


def _claim_rows_in(connection: Connection, job_id: int, n: int,
                   max_bytes: int | None, as_json: bool = False,
                   narrow: bool = False) -> list[Any]:
    """Claim up to ``n`` queued items: their rows as the driver's tuples (``_CLAIM_SQL``'s
    columns: the checksums as their JSON text, the attempts before this claim's; with
    ``as_json``, ``claim_json_sql``'s: id, size, the item's JSON text, in the narrow form
    with ``narrow``).

    The driver's own SQL on the transaction's cursor (``driver_rows``): this runs once per
    batch of small files, and SQLAlchemy's work per statement (cache key, execution context)
    and per row (a ``Row``) cost more than the database's."""
    mark = driver_mark(connection)
    sqlite = connection.dialect.name == "sqlite"
    lock = "" if sqlite else " FOR UPDATE SKIP LOCKED"
    sql = claim_json_sql(sqlite, narrow) if as_json else _CLAIM_SQL
    rows = driver_rows(connection, sql.format(m=mark, lock=lock), (job_id, n))
    if max_bytes is not None:
        size_at = 1 if as_json else 4
        total, keep = 0, 0
        for row in rows:
            total += row[size_at]
            if keep and total > max_bytes:
                break
            keep += 1
        rows = rows[:keep]
    # Exactly the rows selected (and locked) above: runs of their own ids (ascending, as
    # selected: no sort or set of them).
    for where, ids in _runs_sql(ascending_runs([row[0] for row in rows]), mark):
        driver_rows(connection, f"{_update_rows(sqlite)} SET state = {mark}, "
                                f"attempts = attempts + 1 WHERE {where}", (_RUNNING, *ids),
                    fetch=False)
    return rows


def _update_rows(sqlite: bool) -> str:
    """The start of an ``UPDATE`` of many items (a claim's, a record's) on ``job_item``.

    On SQLite ``OR FAIL``: SQLite keeps a copy of every page an ``UPDATE`` of many rows inside
    a transaction changes (a statement journal), to undo just that statement when a constraint
    fails part way (``ABORT``, the default), and past 64 KiB that journal is a temporary file,
    written and thrown away (0.28 page writes an item of a copy job). With ``FAIL`` no journal
    is kept: these statements set a state and count an attempt, no constraint they could
    break, and any error still rolls the whole transaction back (``Database.write``), so the
    rows ``FAIL`` would leave changed before it are never committed."""
    return "UPDATE OR FAIL job_item" if sqlite else "UPDATE job_item"


# The state written in the SQL, not bound: the queued items' partial index (``models.
# JOB_ITEM_INDEXES``) answers it, also in the generic plan of a statement psycopg prepared.
_CLAIM_SQL = ("SELECT id, name, source_path, dest_path, size, is_directory, "
              "CAST(checksums AS TEXT), attempts, store FROM job_item "
              f"WHERE job_id = {{m}} AND state = '{ItemState.QUEUED}' "
              "ORDER BY id LIMIT {m}{lock}")



def claim_json_sql(sqlite: bool, narrow: bool = False) -> str:
    """``_CLAIM_SQL`` for a worker over HTTP: each row's id, size and the item as the worker
    API's JSON text (``[id, name, source_path, dest_path, size, is_directory, checksums,
    attempts, store]``, the attempts this claim's; with ``narrow``, the narrow form of
    ``narrow_items``), built by the database (SQLite's ``json_array``, PostgreSQL's ``json_build_array``): no
    Python string or number per column of each claimed row, no encoding of it in Python
    (``exchange_json``)."""
    if narrow:
        item = _NARROW_SQLITE if sqlite else _NARROW_POSTGRESQL
    elif sqlite:
        item = ("json_array(id, name, source_path, dest_path, size, "
                "json(CASE WHEN is_directory THEN 'true' ELSE 'false' END), "
                "json(COALESCE(NULLIF(CAST(checksums AS TEXT), 'null'), '{{}}')), "
                "attempts + 1, store)")
    else:
        item = ("CAST(json_build_array(id, name, source_path, dest_path, size, is_directory, "
                "COALESCE(NULLIF(checksums, 'null'::jsonb), '{{}}'::jsonb), attempts + 1, "
                "store) AS TEXT)")
    return _CLAIM_SQL.replace(
        "id, name, source_path, dest_path, size, is_directory, "
        "CAST(checksums AS TEXT), attempts, store", f"id, size, {item}", 1)


# The narrow form of a claimed item over HTTP (a worker that asks for it: ``narrow``), what a
# user's worker uses of it and no more: ``[id, source_path, dest_path, size, is_directory,
# checksum, attempts, store]``, where ``checksum`` is the item's ``NARROW_ALGORITHM`` checksum
# (the one a worker verifies with, ``catalogue.checksums.preferred_algorithm``) as a string
# where it has one as a string, else all its checksums as the wide form sends them; the
# algorithm is named once, by the job's answer and by each answer in this form, never
# assumed by the worker. ``is_directory`` is 0/1 on SQLite, false/true on PostgreSQL. No
# name (a worker stages by paths). About 165 bytes of JSON an item where the wide form is
# 255 (a stage job's usual item, two checksums), and less of the database's CPU (on SQLite
# 1.25-1.3 us a row against 1.45-1.6: no ``json()`` of the directory flag, one checksum
# taken out of the stored JSON instead of all of it parsed and written again). The source
# path goes whole: sending only its part before the destination path (40 bytes less) cost
# SQLite's ``substr``/``length`` 0.25 us a row, more than the bytes cost to send and read.
#: The algorithm of the narrow form's lone checksum (announced as the job's ``narrow_items``).
NARROW_ALGORITHM = ALGORITHMS[0]
# The one checksum taken alone only where it is a string (a stored ``{"xxh3-128": 5}`` goes
# whole, as the wide form sends it); ``json_extract``/``json_type``, not ``->>`` (SQLite 3.38).
_NARROW_SQLITE = (
    "json_array(id, source_path, dest_path, size, is_directory, "
    f"CASE WHEN json_type(checksums, '$.\"{NARROW_ALGORITHM}\"') = 'text' "
    f"THEN json_extract(checksums, '$.\"{NARROW_ALGORITHM}\"') "
    "ELSE json(COALESCE(NULLIF(CAST(checksums AS TEXT), 'null'), '{{}}')) END, "
    "attempts + 1, store)")
_NARROW_POSTGRESQL = (
    "CAST(json_build_array(id, source_path, dest_path, size, is_directory, "
    f"CASE WHEN jsonb_typeof(checksums -> '{NARROW_ALGORITHM}') = 'string' "
    f"THEN checksums -> '{NARROW_ALGORITHM}' "
    "ELSE COALESCE(NULLIF(checksums, 'null'::jsonb), '{{}}'::jsonb) END, attempts + 1, store) "
    "AS TEXT)")


def narrow_items(rows: Iterable[Sequence[Any]], algorithm: str) -> list[ClaimedItem]:
    """Claimed items from their narrow form over HTTP (``[id, source_path, dest_path, size,
    is_directory, checksum, attempts, store]``), a lone checksum being of ``algorithm`` (what
    the answer names); their names are not sent (empty here).
    Checksums that are neither a string nor an object (a malformed stored value) are none:
    the item fails its verification as any item without a known checksum does. One
    comprehension, no call a row: a claim brings thousands."""
    item = ClaimedItem
    return [item(item_id, "", source, dest, size, bool(is_directory),
                 {algorithm: sums} if type(sums) is str else sums if type(sums) is dict else {},
                 attempts, store)
            for item_id, source, dest, size, is_directory, sums, attempts, store in rows]


# States as plain strings: the driver is given no enum to adapt.
_RUNNING = str(ItemState.RUNNING)


def _runs_sql(runs: Sequence[tuple[int, int]], mark: str) -> list[tuple[str, list[int]]]:
    """The ids of ``runs`` ([(first, last), ...]) in the driver's SQL, as ``id_terms``:
    (condition, its parameters) per ``RUN_CHUNK`` runs."""
    out = []
    for start in range(0, len(runs), RUN_CHUNK):
        terms, params = [], []
        for a, b in runs[start:start + RUN_CHUNK]:
            if a == b:
                terms.append(f"id = {mark}")
                params.append(a)
            else:
                terms.append(f"id BETWEEN {mark} AND {mark}")
                params += (a, b)
        out.append(("(" + " OR ".join(terms) + ")", params))
    return out


def requeue_items(db: Database, item_ids: Sequence[int]) -> None:
    if item_ids:
        with db.write() as s:
            connection = s.connection()
            for term in id_terms(item_ids):
                connection.execute(update(_ITEMS).where(term, _ITEMS.c.state == ItemState.RUNNING)
                                   .values(state=ItemState.QUEUED))


def record_results(db: Database, job_id: int, results: list[Result]) -> None:
    """Write a batch of item results and bump the job's counters in one transaction."""
    if results:
        with db.write() as s:
            _record_in(s.connection(), job_id, ids_of(results))


def ids_of(results: Iterable[Result]) -> list[IdResult]:
    """``results`` by item id."""
    return [(item.id, state, error) for item, state, error in results]


def _record_in(connection: Connection, job_id: int, results: Sequence[IdResult],
               running_only: bool = False, runs: RunResults | None = None) -> int:
    """Write ``results`` (and, with ``running_only``, ``runs``) and bump the job's counters by
    the rows actually written (their sizes from the database, returned by the ``UPDATE``
    itself: exact when two reports of the same items race). Returns how many were written."""
    # Error-free results in one statement per state and id run (most of a batch), the others
    # one by one.
    plain: dict[str, list[int]] = {}
    with_error = []
    for item_id, state, error in results:
        if error:
            with_error.append((item_id, state, error))
        else:
            plain.setdefault(state, []).append(item_id)
    # A run may name items that are not running (or another job's): only running items of
    # this job are written wherever runs are given.
    running_only = running_only or bool(runs)
    by_runs = {state: id_runs(ids) for state, ids in plain.items()}
    for state, more in (runs or {}).items():
        by_runs[state] = by_runs.get(state, []) + list(more)
    files: dict[str, int] = dict.fromkeys(RESULT_STATES, 0)
    done_bytes = 0
    mark = driver_mark(connection)
    sqlite = connection.dialect.name == "sqlite"
    # On SQLite the job's id as a plain filter (``+``: no index on it), so that an id run is
    # read from the table's own b-tree in order, not through the job's index and a look-up of
    # each row by its id.
    where = (f"{'+' if sqlite else ''}job_id = {mark}"
             + (f" AND state = {mark}" if running_only else ""))
    scope: tuple[object, ...] = (job_id, _RUNNING) if running_only else (job_id,)
    for state, state_runs in by_runs.items():
        for terms, params in _runs_sql(state_runs, mark):
            count, nbytes = _update_counted(connection, sqlite, state, f"{terms} AND {where}",
                                            (*params, *scope))
            files[state] = files.get(state, 0) + count
            if state in ARRIVED_ITEM_STATES:
                done_bytes += nbytes
    for item_id, state, error in with_error:
        sizes = driver_rows(connection, f"UPDATE job_item SET state = {mark}, error = {mark} "
                            f"WHERE id = {mark} AND {where} RETURNING size",
                            (str(state), error, item_id, *scope))
        if sizes:
            files[state] = files.get(state, 0) + 1
            if state in ARRIVED_ITEM_STATES:
                done_bytes += sizes[0][0]
    # The job's counters (the driver's SQL, as the items': SQLAlchemy's statement cache key,
    # built again for each report, cost more than the statement). The bytes just done were
    # (mostly) counted as moving at the last heartbeat: no longer, so done + moving never
    # counts them twice until the next one.
    driver_rows(connection, _COUNTERS_SQL.format(m=mark), (
        files[ItemState.DONE] + files[ItemState.SKIPPED], done_bytes, done_bytes, done_bytes,
        files[ItemState.SKIPPED], files[ItemState.FAILED], job_id), fetch=False)
    return sum(files.values())


def _update_counted(connection: Connection, sqlite: bool, state: str, where: str,
                    params: Sequence[object]) -> tuple[int, int]:
    """Set the items ``where`` selects to ``state`` (no error); how many were written and
    their bytes, counted by the database (one row back, not a row an item: the Python per
    recorded item was a third of the statement's cost). SQLite: counted in the same write
    transaction just before (it holds the database's only write lock: nothing changes the
    rows between); PostgreSQL: the rows the ``UPDATE`` itself wrote (exact when two reports
    of the same items race: the second one's re-checked rows no longer qualify)."""
    mark = driver_mark(connection)
    if sqlite:
        row = driver_rows(connection, f"SELECT count(*), COALESCE(sum(size), 0) FROM job_item "
                          f"WHERE {where}", params)[0]
        if row[0]:
            driver_rows(connection, f"{_update_rows(True)} SET state = {mark}, error = '' "
                        f"WHERE {where}", (str(state), *params), fetch=False)
    else:
        row = driver_rows(connection, f"WITH written AS (UPDATE job_item SET state = {mark}, "
                          f"error = '' WHERE {where} RETURNING size) "
                          f"SELECT count(*), COALESCE(sum(size), 0) FROM written",
                          (str(state), *params))[0]
    return int(row[0]), int(row[1])


_COUNTERS_SQL = (
    "UPDATE job SET files_done = files_done + {m}, bytes_done = bytes_done + {m}, "
    "bytes_moving = CASE WHEN bytes_moving > {m} THEN bytes_moving - {m} ELSE 0 END, "
    "files_skipped = files_skipped + {m}, files_failed = files_failed + {m} WHERE id = {m}")


def unfinished_paths(db: Database, job_id: int) -> list[str]:
    with db.read() as s:
        return list(s.scalars(select(JobItem.dest_path).where(
            JobItem.job_id == job_id, JobItem.state.in_((ItemState.QUEUED, ItemState.RUNNING)))))


# ----- a worker's claim over HTTP (site mode) ---------------------------------------------------
def exchange_json(db: Database, job_id: int, results: Sequence[IdResult],
                  n: int, max_bytes: int | None = None,
                  runs: RunResults | None = None, narrow: bool = False) -> tuple[int, str]:
    """``exchange(..., running_only=True)`` for a worker over HTTP, the items taken given as
    the JSON text of the worker API's answer: ``[[id, name, source_path, dest_path, size,
    is_directory, checksums, attempts, store], ...]``, ``ClaimedItem``'s fields in order (with
    ``narrow``, each in the narrow form: ``narrow_items``). Each item's text is built by the database in
    the claim's ``SELECT`` (``claim_json_sql``) and only joined here: no ``Row``,
    ``ClaimedItem``, list or string per column of an item in Python (the answer's Python per
    item 0.7 us when it was formatted here from the driver's rows, 2.2 through
    ``ClaimedItem`` and ``json.dumps``)."""
    recorded, rows = _exchange_rows(db, job_id, results, n, max_bytes, True, runs, True, narrow)
    return recorded, "[" + ",".join([r[2] for r in rows]) + "]"
