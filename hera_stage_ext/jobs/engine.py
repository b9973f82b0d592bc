"""The job engine's public face: the life cycle of a job as the database holds it (create,
claim under a lease, release, finish, cancel, retry, forget) and its JSON; each kind's own part
is its ``contract.JobKind`` (the stage kind: ``stage_kind``).

Life cycle: ``create_stage_job`` resolves the files to instances and checks the destination
and space (``plan``), writes the job and its items and takes the directory
(STAGING-IN-PROGRESS), all before it returns; a worker (``worker.py``, or ``run.run_pending``
in-process) claims the job under a lease (``claim_job``) and runs it (``run``: streams,
commits, heartbeat) until ``finish_job`` writes the result markers and the final state.
A worker that dies stops renewing its lease; the next one puts the dead worker's running items
back in the queue, removes their temporary files and goes on; verified items are never copied
again. Every state change is a short transaction; the database is the truth. Logs: ``joblog``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.orm import Session

from ..catalogue.db import Database, driver_mark
from ..catalogue.models import utcnow
from ..catalogue.serialize import iso
from ..catalogue.tables import dumps
from ..errors import Conflict, InsufficientSpace, InvalidRequest, NotFound
from ..states import (ACTIVE_JOB_STATES, ARRIVED_ITEM_STATES, RETRIED_ITEM_STATES, ItemState,
                      JobState)
from .contract import JobKind
from .kinds import KindRegistry
from .joblog import JobLog, default_log_dir
from .models import JobRow, JobItem, item_state_is
from .plan import resolve_names, plan_stage

if TYPE_CHECKING:
    from .contract import KindRun

#: The holder a job is given while a cancel finishes it with no worker alive (never a worker).
CANCELLING_HOLDER = "cancel"


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def local_worker_dead(worker_id: str | None) -> bool:
    """True when ``worker_id`` names a process on this host that no longer exists: its jobs can
    be taken over at once instead of after the lease."""
    if not worker_id:
        return False
    host, _, rest = worker_id.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A killed worker whose parent (the server that launched it) has not reaped it yet.
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


# ----- JSON and reads --------------------------------------------------------------------------
def job_json(job: JobRow) -> dict[str, Any]:
    elapsed = None
    if job.started_at is not None:
        elapsed = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
    moving = moving_bytes(job)
    moved = job.bytes_done + moving
    rate = moved / elapsed if elapsed and elapsed > 0 else None
    eta = None
    if rate and job.state in ACTIVE_JOB_STATES:
        eta = max(job.bytes_total - moved, 0) / rate
    return {
        "id": job.id, "owner": job.owner, "kind": job.kind, "state": job.state,
        "destination": job.destination, "method": job.method, "search": job.search,
        "options": job.options, "files_total": job.files_total, "bytes_total": job.bytes_total,
        "files_done": job.files_done, "bytes_done": job.bytes_done, "bytes_moving": moving,
        "files_failed": job.files_failed, "files_skipped": job.files_skipped,
        "missing": job.missing, "error": job.error, "log_path": job.log_path,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "cancel_requested": job.cancel_requested,
        "worker_id": job.worker_id, "rate_bytes_per_s": rate, "eta_s": eta,
    }


def moving_bytes(job: JobRow) -> int:
    """The bytes its worker has moved and not committed yet, as shown: only while a worker holds
    the job (a dead worker's count is stale), and never past the bytes still to do."""
    if job.state != JobState.RUNNING or not job.worker_id:
        return 0
    return max(0, min(job.bytes_moving or 0, job.bytes_total - job.bytes_done))


def load_job(db: Database, job_id: int) -> JobRow:
    """A detached snapshot of a job row (a read session's rollback would expire it)."""
    with db.read() as s:
        job = s.get(JobRow, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        s.expunge(job)
        return job


def get_job(db: Database, job_id: int) -> dict[str, Any]:
    with db.read() as s:
        job = s.get(JobRow, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job_json(job)


def list_jobs(db: Database, owner: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The newest jobs first; only ``owner``'s when given."""
    query = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(JobRow.owner == owner)
    with db.read() as s:
        return [job_json(job) for job in s.scalars(query)]


def active_job_ids(db: Database) -> list[int]:
    """Jobs not finished yet (queued, or running under some worker)."""
    with db.read() as s:
        return list(s.scalars(select(JobRow.id).where(JobRow.state.in_(ACTIVE_JOB_STATES))
                              .order_by(JobRow.id)))


# ----- creation -------------------------------------------------------------------------------
def job_is_active(s: Session, job_id: int) -> bool:
    state = s.scalar(select(JobRow.state).where(JobRow.id == job_id))
    return state in ACTIVE_JOB_STATES


def create_stage_job(
    db: Database, owner: str, names_or_rows: Iterable[str | Mapping[str, Any]],
    destination: str, method: str = "copy",
    allowed_roots: Sequence[str | os.PathLike[str]] = (), *,
    base: str | os.PathLike[str] | None = None, search: Any = None, force: bool = False,
    read_only: bool = True, log_dir: str | os.PathLike[str] | None = None,
    contents: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
    admit: Callable[[Session, JobRow], None] | None = None,
) -> dict[str, Any]:
    """Launch a staging job; returns it (``missing`` lists names with no available instance).
    ``options``: more of the job's options (its expiry); ``admit(session, job)``: a check in
    the job's own transaction before the folder is taken (the staging quota).

    Every check (method, destination confinement, names, free space, a job already running in
    the directory) happens before anything is written. The destination is taken (its
    STAGING-IN-PROGRESS marker created exclusively) here, not when a worker starts, so that a
    poller such as the Librarian's ``--wait`` sees the job from the moment it is accepted.
    """
    plan = plan_stage(db, names_or_rows, destination, method, allowed_roots, base=base,
                      contents=contents)
    if not plan.items:
        raise NotFound(f"none of the {len(plan.missing)} file(s) has an available instance on "
                       f"an online store", missing=plan.missing)
    if plan.free_bytes is not None and plan.bytes_needed > plan.free_bytes and not force:
        raise InsufficientSpace(
            f"the destination has {plan.free_bytes} bytes free and the job needs "
            f"{plan.bytes_needed}", needed=plan.bytes_needed, free=plan.free_bytes)
    target = plan.target
    dest = target.key

    def take(s: Session, job: JobRow) -> None:
        if admit is not None:
            admit(s, job)
        busy = s.scalar(select(JobRow.id).where(JobRow.destination == dest, JobRow.id != job.id,
                                             JobRow.state.in_(ACTIVE_JOB_STATES)))
        if busy is not None:
            raise Conflict(f"job {busy} is already staging into {dest}", job_id=busy)
        target.acquire(job.id, owner, lambda other: job_is_active(s, other))
        job.options = {**job.options, **target.options()}  # the folder's pin, taken just now

    return create_job(
        db, owner, "stage", dest, method, plan.items, plan.missing, plan.bytes_total,
        search=search, options={"read_only": read_only, **(options or {}), **target.options()},
        log_dir=log_dir,
        take=take, release=target.release,
        summary=f"{method} {len(plan.items)} file(s), {plan.bytes_total} bytes into {dest}")


def create_job(
    db: Database, owner: str, kind: str, destination: str, method: str,
    items: Sequence[Mapping[str, Any]], missing: Sequence[str], bytes_total: int, *,
    search: Any = None, options: dict[str, Any] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    take: Callable[[Session, JobRow], None] | None = None,
    release: Callable[[int], None] | None = None, summary: str = "",
) -> dict[str, Any]:
    """Write a job of ``kind`` and its items (``resolve_names``'s rows) in one transaction, and start
    its log; every kind's creation ends here. ``take(session, job)`` runs inside that
    transaction (claim the job's target; raise to refuse, and nothing is written);
    ``release(job_id)`` undoes what ``take`` did outside the database if the commit fails."""
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir()
    taken = False
    job_id: int | None = None
    try:
        with db.write() as s:
            job = JobRow(owner=owner, kind=kind, state=JobState.QUEUED, destination=destination,
                      method=method, search=search, options=dict(options or {}),
                      files_total=len(items), bytes_total=bytes_total,
                      files_done=0, bytes_done=0, files_failed=0, files_skipped=0,
                      missing=list(missing), error="", log_path="", cancel_requested=False)
            s.add(job)
            s.flush()
            job_id = job.id
            job.log_path = str(log_dir / f"job-{job.id}.log")
            insert_items(s, job.id, items)
            if take is not None:
                take(s, job)
                taken = True
            out = job_json(job)
    except BaseException:
        if taken and release is not None and job_id is not None:
            release(job_id)
        raise
    log = JobLog(out["log_path"])
    log(f"job {job_id} created by {owner}: {summary}")
    for name in missing:
        log(f"MISSING {name}: no available instance on an online store")
    return out


#: A job's items as ``insert_items`` writes them, for the database driver: the columns it gives
#: (the rest take their defaults), and the JSON column's cast on PostgreSQL (it goes as text).
_ITEM_COLUMNS = ("job_id", "name", "store", "source_path", "dest_path", "size", "is_directory",
                 "checksums", "state", "attempts", "error")
_ITEM_JSON_CAST = {"checksums": "::jsonb"}


def insert_items(s: Session, job_id: int, items: Iterable[Mapping[str, Any]]) -> None:
    """Write ``items`` (``resolve_names``'s rows; ``state`` queued unless an item says
    otherwise) as items of job ``job_id`` in the transaction of ``s``: one ``executemany``
    on the driver, each row a tuple, its checksums JSON text as SQLAlchemy writes it
    (``tables.dumps``). SQLAlchemy's Core insert spent more Python per row than the database
    did (parameters built and processed per row and value: about 5 of a 10,000-file
    launch's 11 us a file, the largest part of A's server's CPU in a transfer)."""
    connection = s.connection()
    mark = driver_mark(connection)
    postgres = connection.dialect.name == "postgresql"
    values = ", ".join(mark + (_ITEM_JSON_CAST.get(column, "") if postgres else "")
                       for column in _ITEM_COLUMNS)
    connection.exec_driver_sql(
        f"INSERT INTO job_item ({', '.join(_ITEM_COLUMNS)}) VALUES ({values})",
        [(job_id, item["name"], item["store"], item["source_path"], item["dest_path"],
          item["size"], bool(item["is_directory"]), dumps(item["checksums"]),
          str(item.get("state", ItemState.QUEUED)), 0, "") for item in items])


# ----- claiming -------------------------------------------------------------------------------
def lease_clock(s: Session) -> dt.datetime:
    """Now, by the database's clock (naive UTC). Leases are stamped and compared with it, never
    with a worker's own clock: workers on several hosts agree on whose lease has run out even
    when their clocks do not."""
    if s.get_bind().dialect.name == "postgresql":
        return s.scalar(select(func.timezone("utc", func.now())))  # type: ignore[return-value]
    text = s.scalar(select(func.strftime("%Y-%m-%d %H:%M:%f", "now")))
    return dt.datetime.fromisoformat(str(text))


def reconcile(db: Database) -> list[int]:
    """Expire the leases of running jobs whose worker process on this host is gone, so they are
    taken over at once; returns the ids of jobs that are now claimable after a worker died."""
    with db.read() as s:
        now = lease_clock(s)
        rows = s.execute(select(JobRow.id, JobRow.worker_id, JobRow.lease_expires)
                         .where(JobRow.state == JobState.RUNNING,
                                JobRow.worker_id.is_not(None))).all()
    dead = [jid for jid, wid, lease in rows
            if (lease is not None and lease < now) or local_worker_dead(wid)]
    if dead:
        with db.write() as s:
            s.execute(update(JobRow).where(JobRow.id.in_(dead), JobRow.state == JobState.RUNNING)
                      .values(worker_id=None, lease_expires=None))
    return dead


def claim_job(db: Database, worker_id: str, lease_seconds: float,
              owner: str | None = None, skip: Collection[int] = (),
              kinds: Collection[str] | None = None) -> tuple[int, bool] | None:
    """Take the oldest job that is queued or whose worker is gone; returns (id, resumed).

    With ``owner``, only that user's jobs: a worker started by a user's server runs as that
    user, so it must never take another user's job (it would write their files as itself).
    Without, any job (a site's service workers). With ``kinds``, only jobs of those kinds (a
    site's own worker runs transfers and uploads, never a user's stage job). Never one of
    ``skip`` (jobs this worker holds back after they failed to run)."""
    with db.write() as s:
        now = lease_clock(s)
        query = _claimable(now, owner, skip, kinds)
        job = s.scalars(query.order_by(JobRow.id).limit(1).with_for_update(skip_locked=True)
                        ).first()
        if job is None:
            return None
        resumed = job.started_at is not None
        job.worker_id = worker_id
        job.bytes_moving = 0  # the last worker's count: its uncommitted bytes are redone
        job.heartbeat_at = now
        job.lease_expires = now + dt.timedelta(seconds=lease_seconds)
        if job.state == JobState.QUEUED:
            job.state = JobState.RUNNING
            job.started_at = job.started_at or now
        # Items a dead worker had in hand go back to the queue (their temp files are removed
        # before anything else runs); done and skipped items stay as they are. A job never
        # started has none (an item is only claimed under a worker holding the job, and that
        # claim of the job set ``started_at``): not read, a scan of all its items (20,000
        # rows, 10-40 ms, at the start of every job).
        if resumed:
            requeue_running(s, job.id)
        return job.id, resumed


def _claimable(now: dt.datetime, owner: str | None, skip: Collection[int],
               kinds: Collection[str] | None) -> Select[JobRow]:
    """The jobs ``claim_job`` may take at ``now``: active, held by no worker or by one whose
    lease ran out; with ``owner``, ``kinds`` and ``skip`` as there."""
    query = select(JobRow).where(JobRow.state.in_(ACTIVE_JOB_STATES),
                                 or_(JobRow.worker_id.is_(None), JobRow.lease_expires < now))
    if owner is not None:
        query = query.where(JobRow.owner == owner)
    if kinds is not None:
        query = query.where(JobRow.kind.in_(list(kinds)))
    if skip:
        query = query.where(JobRow.id.not_in(skip))
    return query


def more_claimable(db: Database, owner: str | None, skip: Collection[int] = (),
                   kinds: Collection[str] | None = None) -> bool:
    """Whether ``claim_job`` would take a job now (read only: no write transaction, no
    lock): what a worker over HTTP is told with each job it claims, so that it claims
    again at once only when another job waits (one call fewer at the start of every job,
    at the moment its run makes its first calls)."""
    with db.read() as s:
        query = _claimable(lease_clock(s), owner, skip, kinds)
        return s.scalar(select(query.with_only_columns(JobRow.id).limit(1).exists())) is True


def requeue_running(s: Session, job_id: int) -> None:
    """Put the job's items a worker had in hand (``running``) back in the queue."""
    s.execute(update(JobItem).where(JobItem.job_id == job_id, JobItem.state == ItemState.RUNNING)
              .values(state=ItemState.QUEUED))


def release_job(db: Database, job_id: int, worker_id: str, error: str | None = None) -> None:
    """Give a job this worker holds back to the queue (its items in hand too), for the next
    worker to resume; ``error`` says why, on the job, until it finishes."""
    with db.write() as s:
        requeue_running(s, job_id)
        values: dict[str, Any] = {"worker_id": None, "lease_expires": None, "bytes_moving": 0}
        if error is not None:
            values["error"] = error
        s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.worker_id == worker_id)
                  .values(**values))


# ----- finishing ------------------------------------------------------------------------------
def _recount(s: Session, job: JobRow) -> dict[str, int]:
    """Counters from the items themselves: authoritative whatever a crash lost. Returns how
    many of the job's items are in each state (from the same pass)."""
    # One pass over the job's items: the count and bytes of each state.
    counts, sizes = {}, {}
    for state, count, size in s.execute(
            select(JobItem.state, func.count(), func.coalesce(func.sum(JobItem.size), 0))
            .where(JobItem.job_id == job.id).group_by(JobItem.state)):
        counts[state] = count
        sizes[state] = size
    job.files_done = counts.get(ItemState.DONE, 0) + counts.get(ItemState.SKIPPED, 0)
    job.files_skipped = counts.get(ItemState.SKIPPED, 0)
    job.files_failed = counts.get(ItemState.FAILED, 0)
    # int(): PostgreSQL sums a BIGINT column as NUMERIC (a Decimal here).
    job.bytes_done = int(sum(sizes.get(state, 0) for state in ARRIVED_ITEM_STATES))
    return counts


def result_lines(db: Database, job: JobRow) -> list[str]:
    """One line per failed or missing file of a job whose items are all through."""
    with db.read() as s:
        return _result_lines_in(s, job)


def _result_lines_in(s: Session, job: JobRow) -> list[str]:
    """``result_lines`` read in the session ``s``."""
    failed = s.execute(select(JobItem.dest_path, JobItem.error).where(
        JobItem.job_id == job.id, item_state_is(ItemState.FAILED)).order_by(JobItem.id)).all()
    lines = [f"{path}: {error}" for path, error in failed]
    return lines + [f"{name}: no available instance on an online store" for name in job.missing]


def finish_job(db: Database, job_id: int, kind: JobKind, run: KindRun) -> str:
    """Write the result marker and the final state of a job (of ``kind``, run by ``run``)
    whose items are all through."""
    job = load_job(db, job_id)
    lines = result_lines(db, job)
    # The kind's results first (stage: markers), then the database: a crash in between
    # leaves a running job whose finalisation simply runs again.
    kind.finish(run, job, lines)
    return record_finish(db, job, lines)


def record_finish(db: Database, job: JobRow, lines: list[str] | None,
                  through: Callable[[], None] | None = None) -> str:
    """The final state of a finished job in the database, and its summary in its log.
    ``lines``: its result lines (``result_lines``); None: read in the same transaction once
    none of its items is left (so no result recorded meanwhile is missed).

    With ``through``: only if none of the job's items is still to do (queued, running or
    waiting for its recall; counted in the recount's own pass over the items, in the same
    transaction), else ``Conflict`` and nothing changes; ``through()`` is called then, before
    the job shows finished (a worker's last log lines, appended first)."""
    job_id = job.id
    with db.write() as s:
        row = s.get(JobRow, job_id)
        assert row is not None
        counts = _recount(s, row)
        if through is not None:
            if any(counts.get(left) for left in (ItemState.QUEUED, ItemState.RUNNING,
                                                 ItemState.WAITING)):
                raise Conflict(f"job {job_id} still has files to stage", job_id=job_id)
            through()
        if lines is None:
            lines = _result_lines_in(s, job)
        state = JobState.FAILED if lines else JobState.SUCCEEDED
        row.state, row.finished_at = state, utcnow()
        row.worker_id, row.lease_expires = None, None
        row.error = "" if not lines else (
            f"{row.files_failed} file(s) failed, {len(row.missing)} missing; first: {lines[0]}")
        summary = (f"job {job_id} {state}: {row.files_done} of {row.files_total} file(s) "
                   f"present ({row.files_skipped} skipped as identical), {row.files_failed} "
                   f"failed, {len(row.missing)} missing")
    JobLog(job.log_path)(summary)
    return state


def finish_cancelled(db: Database, job_id: int, kind: JobKind) -> str:
    """End a cancelled job (of ``kind``): its state, then the kind's temporary files."""
    job = load_job(db, job_id)
    left = record_cancelled(db, job)
    removed = kind.cancelled(db, job, left)
    kind.after_cancel(db, job)
    JobLog(job.log_path)(f"job {job_id} cancelled: {left} file(s) not staged, "
                         f"{removed} temporary file(s) removed")
    return JobState.CANCELLED


def record_cancelled(db: Database, job: JobRow) -> int:
    """A cancelled job's state in the database; returns how many of its files were left."""
    job_id = job.id
    with db.write() as s:
        row = s.get(JobRow, job_id)
        assert row is not None
        requeue_running(s, job_id)
        _recount(s, row)
        left = row.files_total - row.files_done - row.files_failed
        row.state, row.finished_at = JobState.CANCELLED, utcnow()
        row.worker_id, row.lease_expires = None, None
        row.error = f"cancelled; {left} file(s) not staged"
    return left


def fail_job(db: Database, job_id: int, worker_id: str, error: str) -> str:
    """End a job this worker holds as failed before it ran (``JobRefused``: e.g. its
    destination is outside the worker's allowed roots, or another job holds the folder).
    Its items stay queued: a retry runs them."""
    with db.write() as s:
        requeue_running(s, job_id)
        row = s.get(JobRow, job_id, with_for_update=True)
        if row is None or row.worker_id != worker_id:
            return "lost"
        row.state, row.finished_at, row.error = JobState.FAILED, utcnow(), error
        row.worker_id, row.lease_expires = None, None
        log_path = row.log_path
    JobLog(log_path)(f"job {job_id} failed: {error}")
    return JobState.FAILED



# ----- control --------------------------------------------------------------------------------
def cancel_job(db: Database, job_id: int, kinds: KindRegistry) -> dict[str, Any]:
    """Cancel a job. A running job's worker sees the request at its next heartbeat (about a
    second), removes its temporary files and marks the job cancelled; a queued job, or one
    whose worker is gone, is cancelled here at once (its kind, from ``kinds``, removes its
    temporary files). A finished job is left as it is."""
    with db.write() as s:
        now = lease_clock(s)
        job = s.get(JobRow, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.state not in ACTIVE_JOB_STATES:
            return job_json(job)
        job.cancel_requested = True
        worker_alive = (job.state == JobState.RUNNING and job.worker_id is not None
                        and job.lease_expires is not None and job.lease_expires > now
                        and not local_worker_dead(job.worker_id))
        if not worker_alive:
            # Nobody will act on the flag: hold the job (a short lease, so that a crash right
            # here leaves it to the next worker, which sees the flag) and finish it here.
            job.worker_id = CANCELLING_HOLDER
            job.lease_expires = now + dt.timedelta(seconds=60)
    if not worker_alive:
        JobLog(job.log_path)(f"job {job_id} cancelled while no worker held it")
        finish_cancelled(db, job_id, kinds.get(job.kind))
    return get_job(db, job_id)


def retry_job(db: Database, job_id: int, kinds: KindRegistry, *, force: bool = False,
              allowed_roots: Sequence[str | os.PathLike[str]] = (),
              actor: str | None = None) -> dict[str, Any]:
    """Put a finished job back in the queue with only what it did not stage: its failed items
    and those a cancel left unfinished (``attempts`` kept: they go on counting), plus names that
    were missing at launch and have an available instance now. Done and skipped items stay as
    they are, so a file staged already is never copied again.

    The directory is taken again (STAGING-IN-PROGRESS created exclusively, old result markers
    cleared); Conflict if the job is still active or another job holds the directory;
    InvalidRequest if there is nothing to retry; InsufficientSpace when what is left does not
    fit (unless ``force``). With ``allowed_roots``, the destination must still resolve inside
    them (a folder swapped for a symlink since launch is refused).
    """
    job = load_job(db, job_id)
    if job.state in ACTIVE_JOB_STATES:
        raise Conflict(f"job {job_id} is still {job.state}: it can be retried once it has "
                       f"finished (cancel it first to stop it)", job_id=job_id)
    kind = kinds.get(job.kind)
    kind.before_retry(db, job)
    new_items, still_missing, new_bytes = resolve_names(db, job.missing) if job.missing else ([], [], 0)
    with db.read() as s:
        left, left_bytes = s.execute(
            select(func.count(), func.coalesce(func.sum(JobItem.size), 0))
            .where(JobItem.job_id == job_id,
                   JobItem.state.in_((*RETRIED_ITEM_STATES, ItemState.WAITING)))).one()
    if not left and not new_items:
        if still_missing:
            raise InvalidRequest(
                f"nothing to retry: no file of job {job_id} failed, and its "
                f"{len(still_missing)} missing file(s) still have no available instance",
                missing=still_missing)
        raise InvalidRequest(f"nothing to retry: job {job_id} {job.state} with no failed file")
    taken = False
    try:
        with db.write() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no job {job_id}")
            if row.state in ACTIVE_JOB_STATES:  # retried (or resumed) by someone else meanwhile
                raise Conflict(f"job {job_id} is already {row.state}", job_id=job_id)
            kind.retake(s, row, left_bytes=int(left_bytes) + new_bytes, force=force,
                        allowed_roots=allowed_roots)
            taken = True
            s.execute(update(JobItem).where(JobItem.job_id == job_id,
                                            JobItem.state.in_(RETRIED_ITEM_STATES))
                      .values(state=ItemState.QUEUED, error=""))
            kind.requeued(s, row)
            if new_items:
                insert_items(s, job_id, new_items)
            row.files_total += len(new_items)
            row.bytes_total += new_bytes
            row.missing = still_missing
            row.state, row.finished_at, row.error = JobState.QUEUED, None, ""
            row.cancel_requested = False
            row.worker_id, row.lease_expires, row.heartbeat_at = None, None, None
            _recount(s, row)
            out = job_json(row)
    except BaseException:
        if taken:
            kind.release(job)
        raise
    log = JobLog(out["log_path"])
    log(f"job {job_id} retried{' by ' + actor if actor else ''}: {left} file(s) queued again"
        f"{f', {len(new_items)} missing file(s) found' if new_items else ''}; "
        f"{out['files_done']} already staged stay as they are")
    return out


def forget_job(db: Database, job_id: int) -> dict[str, Any]:
    """Delete a finished job: its row, its items and its log. What it staged (files and result
    markers) stays where it is, and the audit entry of its request is kept."""
    with db.write() as s:
        row = s.get(JobRow, job_id, with_for_update=True)
        if row is None:
            raise NotFound(f"no job {job_id}")
        if row.state in ACTIVE_JOB_STATES:
            raise Conflict(f"job {job_id} is still {row.state}: cancel it before forgetting it",
                           job_id=job_id)
        log_path = row.log_path
        s.execute(delete(JobItem).where(JobItem.job_id == job_id))
        s.execute(delete(JobRow).where(JobRow.id == job_id))
    # Only the log this engine named for the job (never some other file a row might point at).
    if log_path and os.path.basename(log_path) == f"job-{job_id}.log":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log_path)
    return {"deleted": job_id}
