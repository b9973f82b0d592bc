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
results are counted from the rows each ``UPDATE`` wrote (``RETURNING`` their sizes), so a report
from a worker over HTTP can be limited to the job's running items in the same statement."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Text, case, cast, or_, select, update
from sqlalchemy.engine import Connection

from ..catalogue.db import Database
from ..states import ARRIVED_ITEM_STATES, ItemState
from .models import JOB_ITEM_TABLE, JOB_TABLE, JobItem

_ITEMS = JOB_ITEM_TABLE

#: Most values in one SQL ``IN (...)`` list.
IN_CHUNK = 5_000
#: Most id runs (``BETWEEN`` terms) in one statement.
RUN_CHUNK = 200


@dataclass
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


def id_runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """``ids`` as runs of consecutive values: [(first, last), ...], ascending."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
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


def claim_items(db: Database, job_id: int, worker_id: str, n: int,
                 max_bytes: int | None = None) -> list[ClaimedItem]:
    """Take up to ``n`` queued items (and, past the first, no more than ``max_bytes``)."""
    return exchange(db, job_id, worker_id, [], n, max_bytes)[1]


def exchange(db: Database, job_id: int, worker_id: str, results: Sequence[IdResult], n: int,
             max_bytes: int | None = None, *, running_only: bool = False
             ) -> tuple[int, list[ClaimedItem]]:
    """Record ``results`` (``record_results``) and take up to ``n`` queued items (``claim_items``)
    in one transaction; ``n`` 0 only records. Returns how many results were recorded and the
    items taken. With ``running_only`` (a report from a worker over HTTP), only results for
    items of the job still running are recorded: one sent twice counts once."""
    if not results and n <= 0:
        return 0, []
    with db.write() as s:
        connection = s.connection()
        recorded = _record_in(connection, job_id, results, running_only) if results else 0
        claimed = _claim_in(connection, job_id, worker_id, n, max_bytes) if n > 0 else []
    return recorded, claimed


def _claim_in(connection: Connection, job_id: int, worker_id: str, n: int,
              max_bytes: int | None) -> list[ClaimedItem]:
    t = _ITEMS
    # Core statements on the table (no ORM row handling): this runs once per batch of
    # small files, its cost per item counts.
    # The checksums as their JSON text, decoded below in one call for the whole batch: the
    # column type's decoding per row was a quarter of a claim's cost.
    rows = connection.execute(
        select(t.c.id, t.c.name, t.c.source_path, t.c.dest_path, t.c.size,
               t.c.is_directory, cast(t.c.checksums, Text), t.c.attempts, t.c.store)
        .where(t.c.job_id == job_id, t.c.state == ItemState.QUEUED)
        .order_by(t.c.id).limit(n).with_for_update(skip_locked=True)).all()
    if max_bytes is not None:
        total, keep = 0, 0
        for row in rows:
            total += row[4]
            if keep and total > max_bytes:
                break
            keep += 1
        rows = rows[:keep]
    if not rows:
        return []
    # Exactly the rows selected (and locked) above: runs of their own ids.
    for term in id_terms(row[0] for row in rows):
        connection.execute(update(t).where(term).values(
            state=ItemState.RUNNING, worker_id=worker_id, attempts=t.c.attempts + 1))
    checksums = json.loads("[" + ",".join(row[6] or "{}" for row in rows) + "]")
    return [ClaimedItem(row[0], row[1], row[2], row[3], row[4], row[5], sums or {},
                        row[7] + 1, row[8]) for row, sums in zip(rows, checksums)]


def requeue_items(db: Database, item_ids: Sequence[int]) -> None:
    if item_ids:
        with db.write() as s:
            connection = s.connection()
            for term in id_terms(item_ids):
                connection.execute(update(_ITEMS).where(term, _ITEMS.c.state == ItemState.RUNNING)
                                   .values(state=ItemState.QUEUED, worker_id=None))


def record_results(db: Database, job_id: int, results: list[Result]) -> None:
    """Write a batch of item results and bump the job's counters in one transaction."""
    if results:
        with db.write() as s:
            _record_in(s.connection(), job_id, ids_of(results))


def ids_of(results: Iterable[Result]) -> list[IdResult]:
    """``results`` by item id."""
    return [(item.id, state, error) for item, state, error in results]


def _record_in(connection: Connection, job_id: int, results: Sequence[IdResult],
               running_only: bool = False) -> int:
    """Write ``results`` and bump the job's counters by the rows actually written (their sizes
    from the database, returned by the ``UPDATE`` itself: exact when two reports of the same
    items race). Returns how many were written."""
    t = _ITEMS
    where = [t.c.job_id == job_id]
    if running_only:
        where.append(t.c.state == ItemState.RUNNING)
    # Error-free results in one statement per state and id run (most of a batch), the others
    # one by one.
    plain: dict[str, list[int]] = {}
    with_error = []
    for item_id, state, error in results:
        if error:
            with_error.append((item_id, state, error))
        else:
            plain.setdefault(state, []).append(item_id)
    files: dict[str, int] = dict.fromkeys(RESULT_STATES, 0)
    done_bytes = 0
    for state, ids in plain.items():
        for term in id_terms(ids):
            sizes = connection.execute(update(t).where(term, *where).values(
                state=state, error="", worker_id=None).returning(t.c.size)).scalars().all()
            files[state] = files.get(state, 0) + len(sizes)
            if state in ARRIVED_ITEM_STATES:
                done_bytes += sum(sizes)
    for item_id, state, error in with_error:
        size = connection.execute(update(t).where(t.c.id == item_id, *where).values(
            state=state, error=error, worker_id=None).returning(t.c.size)).scalar()
        if size is not None:
            files[state] = files.get(state, 0) + 1
            if state in ARRIVED_ITEM_STATES:
                done_bytes += size
    jobs = JOB_TABLE
    connection.execute(update(jobs).where(jobs.c.id == job_id).values(
        files_done=jobs.c.files_done + files[ItemState.DONE] + files[ItemState.SKIPPED],
        bytes_done=jobs.c.bytes_done + done_bytes,
        # Those bytes were (mostly) counted as moving at the last heartbeat: no longer, so
        # done + moving never counts them twice until the next one.
        bytes_moving=case((jobs.c.bytes_moving > done_bytes, jobs.c.bytes_moving - done_bytes),
                          else_=0),
        files_skipped=jobs.c.files_skipped + files[ItemState.SKIPPED],
        files_failed=jobs.c.files_failed + files[ItemState.FAILED],
    ))
    return sum(files.values())


def unfinished_paths(db: Database, job_id: int) -> list[str]:
    with db.read() as s:
        return list(s.scalars(select(JobItem.dest_path).where(
            JobItem.job_id == job_id, JobItem.state.in_((ItemState.QUEUED, ItemState.RUNNING)))))


# ----- a worker's claim over HTTP (site mode) ---------------------------------------------------
# (Imported here, with the functions that use them: this section was added at the end of the
# module while another change edited its top.)
from json.encoder import encode_basestring_ascii  # noqa: E402
from typing import Any  # noqa: E402

from sqlalchemy import bindparam  # noqa: E402

from ..catalogue.db import driver_rows  # noqa: E402

#: The claim's SELECT in each driver's own SQL: (SQL, its parameters' order or None, defaults).
_CLAIM_SQL: dict[tuple[str, str], tuple[str, Sequence[str] | None, dict[str, Any]]] = {}


def _claim_sql(connection: Connection) -> tuple[str, Sequence[str] | None, dict[str, Any]]:
    dialect = connection.dialect
    known = _CLAIM_SQL.get((dialect.name, dialect.driver))
    if known is None:
        t = _ITEMS
        compiled = (
            select(t.c.id, t.c.name, t.c.source_path, t.c.dest_path, t.c.size,
                   t.c.is_directory, cast(t.c.checksums, Text), t.c.attempts, t.c.store)
            .where(t.c.job_id == bindparam("job_id", 0), t.c.state == ItemState.QUEUED.value)
            .order_by(t.c.id).limit(bindparam("n", 0)).with_for_update(skip_locked=True)
        ).compile(dialect=dialect)
        found = (compiled.string, compiled.positiontup, dict(compiled.construct_params()))
        _CLAIM_SQL[(dialect.name, dialect.driver)] = found
        return found
    return known


def exchange_json(db: Database, job_id: int, worker_id: str, results: Sequence[IdResult],
                  n: int, max_bytes: int | None = None) -> tuple[int, str]:
    """``exchange(..., running_only=True)`` for a worker over HTTP, the items taken given as
    the JSON text of the worker API's answer: ``[[id, name, source_path, dest_path, size,
    is_directory, checksums, attempts, store], ...]``, ``ClaimedItem``'s fields in order.
    Built straight from the driver's rows (no ``Row``, ``ClaimedItem`` or list per item, no
    decoding and encoding again of the checksums, spliced in as the JSON text the database
    holds): the answer's Python per item 0.7 us, against 2.2 through ``ClaimedItem`` and
    ``json.dumps``."""
    if not results and n <= 0:
        return 0, "[]"
    with db.write() as s:
        connection = s.connection()
        recorded = _record_in(connection, job_id, results, True) if results else 0
        rows = _claim_rows_in(connection, job_id, worker_id, n, max_bytes) if n > 0 else []
    text = encode_basestring_ascii
    return recorded, "[" + ",".join([
        f"[{r[0]:d},{text(r[1])},{text(r[2])},{text(r[3])},{r[4]:d},"
        f"{'true' if r[5] else 'false'},{r[6] if r[6] and r[6] != 'null' else '{}'},"
        f"{r[7] + 1:d},{text(r[8])}]" for r in rows]) + "]"


def _claim_rows_in(connection: Connection, job_id: int, worker_id: str, n: int,
                   max_bytes: int | None) -> list[Any]:
    """``_claim_in``'s claim, its rows as the driver's tuples (the checksums as JSON text, the
    attempts before this claim's). (``_claim_in`` could be this and its ``ClaimedItem``s: left
    as it was while another change works on this module.)"""
    sql, order, defaults = _claim_sql(connection)
    values = {**defaults, "job_id": job_id, "n": n}
    rows = driver_rows(connection, sql,
                       values if order is None else tuple(values[name] for name in order))
    if max_bytes is not None:
        total, keep = 0, 0
        for row in rows:
            total += row[4]
            if keep and total > max_bytes:
                break
            keep += 1
        rows = rows[:keep]
    t = _ITEMS
    for term in id_terms(row[0] for row in rows):
        connection.execute(update(t).where(term).values(
            state=ItemState.RUNNING, worker_id=worker_id, attempts=t.c.attempts + 1))
    return rows
