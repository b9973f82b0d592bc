"""The job store: what one run of a job needs from wherever jobs are kept, behind one seam.

A worker claims a job, claims its items in batches, records their results in batches (both
in one call per hand-over: ``exchange``), renews its lease (and learns of a cancel), finishes,
fails or releases the job, and writes the job's log; a site's recorded job's worker says which
folder it took (``note_taken``). ``JobStore`` names exactly those operations; the run engine
(``run.JobRun``) and the worker loop (``worker.Worker``) call nothing else. Two implementations, one engine:

- ``DbJobStore`` (here): the catalogue database itself, for single-user servers, the site
  service's own worker and tests (the engine's functions in ``engine`` and ``items``).
- ``http_store.HttpJobStore``: a user's worker in site mode, which holds no database URL and
  reaches the site service's worker API (``api/worker.py``) with the user's token; the service
  decides whose jobs it may claim, from the token.

Kinds that read the catalogue while they run (transfer, upload, recall into a buffer) need
``store.db``: they run only in workers over the database (the site's own worker). A user's
stage job with files on a cold store waits for the site's recall job (``waiting``: how many of
its items are not recalled yet).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import func, select, update

from ..catalogue.db import Database, driver_rows
from ..catalogue.inlist import bound_values, one_of_sql
from ..catalogue.models import Store
from ..states import ACTIVE_JOB_STATES, ItemState
from . import engine, items, lifecycle
from .contract import JobKind
from .items import ClaimedItem
from .joblog import JobLog
from .models import JobRow, JobItem, item_state_is

if TYPE_CHECKING:
    from .contract import KindRun

#: Those of a run's stores the catalogue marks unavailable (every heartbeat asks, about once a
#: second: on the database driver, not through an ORM query built, compiled and read each time).
_UNAVAILABLE_SQL = "SELECT name FROM store WHERE {condition} AND NOT available"


@dataclass
class Beat:
    """A heartbeat's answer: ``state`` is "ok", "cancel" (cancel requested) or "lost" (another
    worker holds the job now); ``unavailable``: those of the asked stores that are
    unavailable (None when they could not be read this time)."""

    state: str
    unavailable: frozenset[str] | None = None


class JobStore(Protocol):
    @property
    def db(self) -> Database | None:
        """The catalogue database when the store is the database (kinds that read the
        catalogue while they run need it); None for a store reached over HTTP."""

    def reconcile(self) -> list[int]: ...
    def claim_job(self, worker_id: str, lease_seconds: float,
                  skip: Collection[int] = ()) -> tuple[int, bool] | None: ...
    def more_jobs(self) -> bool: ...
    def load_job(self, job_id: int) -> JobRow: ...
    def is_active(self, job_id: int) -> bool: ...
    def store_roots(self, job_id: int) -> dict[str, str]: ...
    def claim_items(self, job_id: int, worker_id: str, n: int,
                    max_bytes: int | None = None) -> list[ClaimedItem]: ...
    def requeue(self, job_id: int, item_ids: Sequence[int]) -> None: ...
    def record(self, job_id: int, results: list[tuple[ClaimedItem, str, str]], *,
               last: bool = False) -> None: ...
    def exchange(self, job_id: int, worker_id: str, results: list[tuple[ClaimedItem, str, str]],
                 n: int, max_bytes: int | None = None) -> list[ClaimedItem]: ...
    def heartbeat(self, job_id: int, worker_id: str, lease_seconds: float,
                  stores: Collection[str], moving: int = 0) -> Beat: ...
    def unfinished_paths(self, job_id: int) -> list[str]: ...
    def note_taken(self, job_id: int, worker_id: str, pin: list[int], made: bool) -> None: ...
    def waiting(self, job_id: int) -> int: ...
    def finish(self, job: JobRow, kind: JobKind, run: KindRun) -> str: ...
    def finish_cancelled(self, job: JobRow, kind: JobKind) -> str: ...
    def fail(self, job: JobRow, worker_id: str, error: str) -> str: ...
    def release(self, job_id: int, worker_id: str, error: str | None = None) -> None: ...
    def log(self, job: JobRow) -> JobLog: ...
    def close_log(self, job: JobRow, log: JobLog) -> None: ...
    def close(self) -> None: ...


class DbJobStore:
    """The job store over the catalogue database. With ``owner`` it claims only that user's
    jobs; with ``kinds``, only jobs of those kinds (the site worker: not users' stage jobs)."""

    def __init__(self, db: Database, owner: str | None = None,
                 kinds: Collection[str] | None = None) -> None:
        self.db = db
        self.owner = owner
        self.kinds = tuple(kinds) if kinds else None

    def reconcile(self) -> list[int]:
        return engine.reconcile(self.db)

    def claim_job(self, worker_id: str, lease_seconds: float,
                  skip: Collection[int] = ()) -> tuple[int, bool] | None:
        return engine.claim_job(self.db, worker_id, lease_seconds, self.owner, skip=skip,
                                kinds=self.kinds)

    def more_jobs(self) -> bool:
        """Whether another job may wait after the last ``claim_job``: here always (a claim
        that finds none costs little in-process)."""
        return True

    def load_job(self, job_id: int) -> JobRow:
        return engine.load_job(self.db, job_id)

    def is_active(self, job_id: int) -> bool:
        with self.db.read() as s:
            return s.scalar(select(JobRow.state).where(JobRow.id == job_id)) in ACTIVE_JOB_STATES

    def store_roots(self, job_id: int) -> dict[str, str]:
        """The roots of the job's stores, and of the buffers its cold stores recall into
        (the items of those files are staged from there)."""
        with self.db.read() as s:
            names = set(s.scalars(select(JobItem.store).where(
                JobItem.job_id == job_id).distinct()))
            for kind, options in s.execute(select(Store.kind, Store.options).where(
                    Store.name.in_(names))).all():
                buffer = (options or {}).get("buffer") if kind == "cold" else None
                if isinstance(buffer, str):
                    names.add(buffer)
            return dict(s.execute(select(Store.name, Store.path).where(
                Store.name.in_(sorted(names)))).all())

    def claim_items(self, job_id: int, worker_id: str, n: int,
                    max_bytes: int | None = None) -> list[ClaimedItem]:
        return items.claim_items(self.db, job_id, n, max_bytes)

    def requeue(self, job_id: int, item_ids: Sequence[int]) -> None:
        items.requeue_items(self.db, item_ids)

    def record(self, job_id: int, results: list[tuple[ClaimedItem, str, str]], *,
               last: bool = False) -> None:
        """(``last``: the run asks ``unfinished_paths`` next; a hint for a store over HTTP.)"""
        items.record_results(self.db, job_id, results)

    def exchange(self, job_id: int, worker_id: str, results: list[tuple[ClaimedItem, str, str]],
                 n: int, max_bytes: int | None = None) -> list[ClaimedItem]:
        """``record`` and ``claim_items`` at once, in one transaction (a stream's hand-over)."""
        return items.exchange(self.db, job_id, items.ids_of(results), n, max_bytes)[1]

    def heartbeat(self, job_id: int, worker_id: str, lease_seconds: float,
                  stores: Collection[str], moving: int = 0) -> Beat:
        """Renew the lease and publish ``moving``: the bytes the run has moved and not yet
        committed (the job's ``bytes_moving``)."""
        with self.db.write() as s:
            now = engine.lease_clock(s)
            row = s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.worker_id == worker_id)
                .values(heartbeat_at=now, lease_expires=now + dt.timedelta(seconds=lease_seconds),
                        bytes_moving=moving)
                .returning(JobRow.cancel_requested)).first()
        if row is None:
            return Beat("lost")
        if row[0]:
            return Beat("cancel")
        try:
            unavailable = self.unavailable(stores)
        except Exception:  # keep the last answer on a hiccup
            unavailable = None
        return Beat("ok", unavailable)

    def unavailable(self, stores: Collection[str]) -> frozenset[str]:
        """Those of ``stores`` the catalogue marks unavailable."""
        with self.db.read() as s:
            connection = s.connection()
            backend = connection.dialect.name
            return frozenset(row[0] for row in driver_rows(connection, _UNAVAILABLE_SQL.format(
                condition=one_of_sql(backend, "name")), (bound_values(backend, stores),)))

    def unfinished_paths(self, job_id: int) -> list[str]:
        return items.unfinished_paths(self.db, job_id)

    def note_taken(self, job_id: int, worker_id: str, pin: list[int], made: bool) -> None:
        """A recorded job's folder, as this worker took it (``lifecycle.note_taken``)."""
        lifecycle.note_taken(self.db, job_id, worker_id, pin, made)

    def waiting(self, job_id: int) -> int:
        """How many of the job's items wait for their recall from a cold store."""
        with self.db.read() as s:
            return int(s.scalar(select(func.count()).select_from(JobItem).where(
                JobItem.job_id == job_id, item_state_is(ItemState.WAITING))) or 0)

    def finish(self, job: JobRow, kind: JobKind, run: KindRun) -> str:
        return engine.finish_job(self.db, job.id, kind, run)

    def finish_cancelled(self, job: JobRow, kind: JobKind) -> str:
        return engine.finish_cancelled(self.db, job.id, kind)

    def fail(self, job: JobRow, worker_id: str, error: str) -> str:
        return engine.fail_job(self.db, job.id, worker_id, error)

    def release(self, job_id: int, worker_id: str, error: str | None = None) -> None:
        engine.release_job(self.db, job_id, worker_id, error)

    def log(self, job: JobRow) -> JobLog:
        return JobLog(job.log_path)

    def close_log(self, job: JobRow, log: JobLog) -> None:
        log.flush()

    def close(self) -> None:
        self.db.dispose()


def as_store(db_or_store: Database | JobStore) -> JobStore:
    """A store for a database (the engine's callers may still hand it the database)."""
    return DbJobStore(db_or_store) if isinstance(db_or_store, Database) else db_or_store

