"""A job's items as a queue: claiming a batch of queued items for a stream (atomically:
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), putting those not
started back, recording a batch of results with the job's counters in one transaction, and the
paths of the items not through yet. Every kind's streams use these (``run._JobRun`` for stage
jobs, the transfer and upload kinds), under the names they had in ``engine``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, case, select, update

from ..catalogue.db import Database
from .models import Job, JobItem

_ITEMS = JobItem.__table__

#: Most values in one SQL ``IN (...)`` list.
IN_CHUNK = 5_000


@dataclass
class _Claimed:
    id: int
    name: str
    source_path: str
    dest_path: str
    size: int
    is_directory: bool
    checksums: dict[str, str]
    attempts: int
    store: str = ""


def _claim_items(db: Database, job_id: int, worker_id: str, n: int,
                 max_bytes: int | None = None) -> list[_Claimed]:
    """Take up to ``n`` queued items (and, past the first, no more than ``max_bytes``)."""
    t = _ITEMS
    with db.write() as s:
        # Core statements on the table (no ORM row handling): this runs once per batch of
        # small files, its cost per item counts.
        rows = s.connection().execute(
            select(t.c.id, t.c.name, t.c.source_path, t.c.dest_path, t.c.size,
                   t.c.is_directory, t.c.checksums, t.c.attempts, t.c.store)
            .where(t.c.job_id == job_id, t.c.state == "queued")
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
        s.connection().execute(
            update(t).where(t.c.id.in_([row[0] for row in rows]))
            .values(state="running", worker_id=worker_id, attempts=t.c.attempts + 1))
        return [_Claimed(*row[:7], row[7] + 1, row[8]) for row in rows]


def _requeue(db: Database, item_ids: Sequence[int]) -> None:
    if item_ids:
        with db.write() as s:
            s.execute(update(JobItem).where(JobItem.id.in_(list(item_ids)),
                                            JobItem.state == "running")
                      .values(state="queued", worker_id=None))


def _record(db: Database, job_id: int, results: list[tuple[_Claimed, str, str]]) -> None:
    """Write a batch of item results and bump the job's counters in one transaction."""
    if not results:
        return
    done = [(c, st) for c, st, _ in results if st in ("done", "skipped")]
    t = _ITEMS
    # Error-free results in one statement per state (most of a batch), failures one by one.
    plain: dict[str, list[int]] = {}
    failed = []
    for c, state, error in results:
        if error:
            failed.append({"item_id": c.id, "item_state": state, "item_error": error})
        else:
            plain.setdefault(state, []).append(c.id)
    with db.write() as s:
        connection = s.connection()
        for state, ids in plain.items():
            for start in range(0, len(ids), IN_CHUNK):
                connection.execute(update(t).where(t.c.id.in_(ids[start:start + IN_CHUNK]))
                                   .values(state=state, error="", worker_id=None))
        if failed:
            connection.execute(
                update(t).where(t.c.id == bindparam("item_id"))
                .values(state=bindparam("item_state"), error=bindparam("item_error"),
                        worker_id=None), failed)
        done_bytes = sum(c.size for c, _ in done)
        s.execute(update(Job).where(Job.id == job_id).values(
            files_done=Job.files_done + len(done),
            bytes_done=Job.bytes_done + done_bytes,
            # Those bytes were (mostly) counted as moving at the last heartbeat: no longer, so
            # done + moving never counts them twice until the next one.
            bytes_moving=case((Job.bytes_moving > done_bytes, Job.bytes_moving - done_bytes),
                              else_=0),
            files_skipped=Job.files_skipped + sum(1 for _, st in done if st == "skipped"),
            files_failed=Job.files_failed + sum(1 for _, st, _ in results if st == "failed"),
        ))


def _unfinished_paths(db: Database, job_id: int) -> list[str]:
    with db.read() as s:
        return list(s.scalars(select(JobItem.dest_path).where(
            JobItem.job_id == job_id, JobItem.state.in_(("queued", "running")))))
