"""The job engine: create staging jobs, claim and run them, resume them after a crash, cancel
them, and keep their logs.

Life cycle: ``create_stage_job`` resolves the files to instances, checks the destination and
space, writes the job and its items and takes the directory (STAGING-IN-PROGRESS), all before it
returns; a worker (``worker.py``, or ``run_pending`` in-process) claims the job under a lease,
runs its items with a bounded number of streams (items claimed atomically in batches: ``FOR UPDATE
SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and writes the result markers at the end.
Streams write and verify each item under its temporary name; about once a second (or sooner when
much is waiting) one of them commits what all have written: one sync of the file system, the
renames to the final names, one more sync, then the results in one transaction and the per-file
log lines in one write. So a file is never recorded as done before it is on disk under its final
name, and an item a dead worker had not committed is simply redone.
A worker that dies stops renewing its lease; the next one puts the dead worker's running items
back in the queue, removes their temporary files and goes on; verified items are never copied
again. Every state change is a short transaction; the database is the truth.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from ..catalogue.db import Database
from ..catalogue.models import File, Instance, Store, utcnow
from ..catalogue.serialize import iso
from ..errors import Conflict, InsufficientSpace, InvalidRequest, NotFound, StagingError
from . import kinds, recall, targets
from .copy_pool import CopyPool, HandOver, HelperDied, hand_overs
from .methods import (
    METHODS,
    Cancelled,
    ItemFailed,
    ItemSpec,
    Mover,
    Outcome,
    commit,
    remove_temp_folders,
)
from .models import ACTIVE_STATES, Job, JobItem

_ITEMS = JobItem.__table__

_IN_CHUNK = 5_000
#: Methods that write every byte again at the destination (so free space is checked for them).
_COPYING = ("copy", "reflink", "contents")



@dataclass
class EngineConfig:
    """How a worker runs jobs (what a job *is* is decided at launch and stored on the job)."""

    streams: int = 4  # parallel item streams per job
    lease_seconds: float = 30.0  # a worker silent this long is dead; its jobs are taken over
    heartbeat_seconds: float = 1.0  # lease renewal and cancel check interval
    chunk_size: int = 1 << 20  # reused copy buffer per stream
    fsync: bool = True
    # Items up to this size go to the worker's copy helper processes, when it has them, in
    # hand-overs of at most so many items and bytes (the results are committed between them,
    # so progress shows and a store going away is seen soon).
    pool_max_bytes: int = 1 << 20
    pool_batch_items: int = 1024
    pool_batch_bytes: int = 4 << 20
    claim_batch: int = 1024  # items claimed per transaction (at most)...
    claim_bytes: int = 64 << 20  # ...and no more bytes than this (but always one item)
    flush_seconds: float = 1.0  # written items are committed and recorded this often...
    commit_items: int = 4096  # ...or as soon as this many wait...
    commit_bytes: int = 256 << 20  # ...or this many bytes
    # Test-only throttle: seconds slept after every chunk copied, so a test can kill mid-job.
    chunk_delay: float = field(
        default_factory=lambda: float(os.environ.get("HERA_STAGE_TEST_CHUNK_DELAY", "0") or 0))
    # Transfer jobs: the peers (a transfer.peers.PeerRegistry); None: the worker's environment.
    peers: Any = None


def default_log_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "hera_stage" / "job-logs"


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _local_worker_dead(worker_id: str | None) -> bool:
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


# ----- JSON and logs --------------------------------------------------------------------------
def job_json(job: Job) -> dict[str, Any]:
    elapsed = None
    if job.started_at is not None:
        elapsed = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
    rate = job.bytes_done / elapsed if elapsed and elapsed > 0 else None
    eta = None
    if rate and job.state in ACTIVE_STATES:
        eta = max(job.bytes_total - job.bytes_done, 0) / rate
    return {
        "id": job.id, "owner": job.owner, "kind": job.kind, "state": job.state,
        "destination": job.destination, "method": job.method, "search": job.search,
        "options": job.options, "files_total": job.files_total, "bytes_total": job.bytes_total,
        "files_done": job.files_done, "bytes_done": job.bytes_done,
        "files_failed": job.files_failed, "files_skipped": job.files_skipped,
        "missing": job.missing, "error": job.error, "log_path": job.log_path,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "cancel_requested": job.cancel_requested,
        "worker_id": job.worker_id, "rate_bytes_per_s": rate, "eta_s": eta,
    }


def _load_job(db: Database, job_id: int) -> Job:
    """A detached snapshot of a job row (a read session's rollback would expire it)."""
    with db.read() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        s.expunge(job)
        return job


def get_job(db: Database, job_id: int) -> dict[str, Any]:
    with db.read() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job_json(job)


def list_jobs(db: Database, owner: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The newest jobs first; only ``owner``'s when given."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(Job.owner == owner)
    with db.read() as s:
        return [job_json(job) for job in s.scalars(query)]


def active_job_ids(db: Database) -> list[int]:
    """Jobs not finished yet (queued, or running under some worker)."""
    with db.read() as s:
        return list(s.scalars(select(Job.id).where(Job.state.in_(ACTIVE_STATES)).order_by(Job.id)))


class JobLog:
    """The human-readable log of one job: appended by whoever acts on the job.

    ``log(message)`` appends at once; ``log.note(message)`` (the per-file lines of a run) keeps
    the line until the next ``flush`` (or the next ``log(...)``, which flushes first), so that a
    second's worth of lines costs one write instead of an open, a write and a close per file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._held: list[str] = []
        self._dir_made = False

    @staticmethod
    def _line(message: str) -> str:
        return f"{utcnow().isoformat(timespec='milliseconds')}Z  {message}\n"

    def __call__(self, message: str) -> None:
        line = self._line(message)
        with self._lock:
            self._held.append(line)
            self._write_held()

    def note(self, message: str) -> None:
        line = self._line(message)
        with self._lock:
            self._held.append(line)

    def flush(self) -> None:
        with self._lock:
            if self._held:
                self._write_held()

    def _write_held(self) -> None:
        data = "".join(self._held).encode("utf-8", "surrogateescape")
        self._held.clear()
        if not self._dir_made:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._dir_made = True
        # O_APPEND: whole writes from several processes never interleave mid-line.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def read_log(job: Job | Mapping[str, Any], offset: int = 0,
             max_bytes: int = 1 << 20) -> tuple[str, int]:
    """The log from byte ``offset``: ``(text, next_offset)``, whole lines only, so a tail can
    call again with ``next_offset`` and never see half a line."""
    path = job["log_path"] if isinstance(job, Mapping) else job.log_path
    if offset < 0:
        raise InvalidRequest("offset must be >= 0")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return "", offset
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) < max_bytes:
        return "", offset
    data = data[:end] if end else data
    return data.decode("utf-8", "replace"), offset + len(data)


# ----- creation -------------------------------------------------------------------------------
@dataclass
class StagePlan:
    target: targets.Target
    method: str
    items: list[dict[str, Any]]
    missing: list[str]
    bytes_total: int
    bytes_needed: int
    free_bytes: int | None  # None: not a local file system (free space unknown)

    def summary(self) -> dict[str, Any]:
        return {
            "destination": self.target.key, "method": self.method,
            "files": len(self.items), "bytes": self.bytes_total, "missing": self.missing,
            "bytes_needed": self.bytes_needed, "free_bytes": self.free_bytes,
            "fits": self.free_bytes is None or self.bytes_needed <= self.free_bytes,
        }


def _names(names_or_rows: Iterable[str | Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for entry in names_or_rows:
        name = entry.get("name") if isinstance(entry, Mapping) else entry
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"a file to stage must be a name or a row with a name: {entry!r}")
        if name not in seen:  # a name asked twice is staged (and counted) once
            seen.add(name)
            names.append(name)
    if not names:
        raise InvalidRequest("nothing to stage: no file names given (did the search match any?)")
    return names


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def plan_stage(
    db: Database, names_or_rows: Iterable[str | Mapping[str, Any]], destination: str,
    method: str, allowed_roots: Sequence[str | os.PathLike[str]], *,
    base: str | os.PathLike[str] | None = None, contents: Mapping[str, Any] | None = None,
) -> StagePlan:
    """Resolve and check everything a staging job needs; reads only, writes nothing.
    ``contents``: the contents manager's description (``contents.describe_manager``), for the
    ``contents`` method."""
    if method not in METHODS:
        raise InvalidRequest(f"unknown staging method {method!r}; use one of {', '.join(METHODS)}")
    target = targets.plan_target(destination, method, allowed_roots, base, contents)
    items, missing, total = _resolve(db, _names(names_or_rows))
    recall.check_method(method, items)
    needed = total if method in _COPYING else 0
    free = _free_bytes(target.local) if target.local is not None else None
    return StagePlan(target, method, items, missing, total, needed, free)


def _resolve(db: Database, names: Sequence[str], kind: str = "online",
             ) -> tuple[list[dict[str, Any]], list[str], int]:
    """The instance each name is staged from (the first available one on an online store, by
    store name): ``(items, missing names, total bytes)``. Names with none, but one on a cold
    store, become items that wait for their recall (``recall.resolve_cold``)."""
    chosen: dict[str, Any] = {}
    query = (
        select(File.name, File.size, File.is_directory, File.checksums, Instance.path,
               Store.name, Store.path)
        .join(Instance, Instance.file_id == File.id)
        .join(Store, Instance.store_id == Store.id)
        .where(Instance.available, Store.available, Store.kind == kind)
        .order_by(Store.name, Instance.id)  # the same instance ``Catalogue.locate`` picks
    )
    with db.read() as s:
        for start in range(0, len(names), _IN_CHUNK):
            for row in s.execute(query.where(File.name.in_(names[start:start + _IN_CHUNK]))):
                chosen.setdefault(row[0], row)
    items, missing, total = [], [], 0
    for name in names:
        row = chosen.get(name)
        if row is None:
            missing.append(name)
            continue
        _, size, is_dir, sums, inst_path, store, store_path = row
        rel = os.path.normpath(inst_path)
        if os.path.isabs(rel) or rel == ".." or rel.startswith("../"):
            raise InvalidRequest(f"instance path {inst_path!r} of {name!r} leaves its store")
        items.append({"name": name, "store": store, "size": size, "is_directory": is_dir,
                      "checksums": dict(sums or {}), "dest_path": rel,
                      "source_path": os.path.join(store_path, inst_path)})
        total += size
    if missing and kind == "online":
        cold, missing, cold_bytes = recall.resolve_cold(db, missing, _resolve)
        items += cold
        total += cold_bytes
    return items, missing, total


def dry_run_stage(
    db: Database, names_or_rows: Iterable[str | Mapping[str, Any]], destination: str,
    method: str = "copy", allowed_roots: Sequence[str | os.PathLike[str]] = (), *,
    base: str | os.PathLike[str] | None = None, contents: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a staging job would do: files, de-duplicated bytes, missing names, free space."""
    return plan_stage(db, names_or_rows, destination, method, allowed_roots, base=base,
                      contents=contents).summary()


def _is_active(s: Session, job_id: int) -> bool:
    state = s.scalar(select(Job.state).where(Job.id == job_id))
    return state in ACTIVE_STATES


def create_stage_job(
    db: Database, owner: str, names_or_rows: Iterable[str | Mapping[str, Any]],
    destination: str, method: str = "copy",
    allowed_roots: Sequence[str | os.PathLike[str]] = (), *,
    base: str | os.PathLike[str] | None = None, search: Any = None, force: bool = False,
    read_only: bool = True, log_dir: str | os.PathLike[str] | None = None,
    contents: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Launch a staging job; returns it (``missing`` lists names with no available instance).

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

    def take(s: Session, job: Job) -> None:
        busy = s.scalar(select(Job.id).where(Job.destination == dest, Job.id != job.id,
                                             Job.state.in_(ACTIVE_STATES)))
        if busy is not None:
            raise Conflict(f"job {busy} is already staging into {dest}", job_id=busy)
        target.acquire(job.id, owner, lambda other: _is_active(s, other))

    return create_job(
        db, owner, "stage", dest, method, plan.items, plan.missing, plan.bytes_total,
        search=search, options={"read_only": read_only, **target.options()}, log_dir=log_dir,
        take=take, release=target.release,
        summary=f"{method} {len(plan.items)} file(s), {plan.bytes_total} bytes into {dest}")


def create_job(
    db: Database, owner: str, kind: str, destination: str, method: str,
    items: Sequence[Mapping[str, Any]], missing: Sequence[str], bytes_total: int, *,
    search: Any = None, options: dict[str, Any] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    take: Callable[[Session, Job], None] | None = None,
    release: Callable[[int], None] | None = None, summary: str = "",
) -> dict[str, Any]:
    """Write a job of ``kind`` and its items (``_resolve``'s rows) in one transaction, and start
    its log; every kind's creation ends here. ``take(session, job)`` runs inside that
    transaction (claim the job's target; raise to refuse, and nothing is written);
    ``release(job_id)`` undoes what ``take`` did outside the database if the commit fails."""
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir()
    taken = False
    job_id: int | None = None
    try:
        with db.write() as s:
            job = Job(owner=owner, kind=kind, state="queued", destination=destination,
                      method=method, search=search, options=dict(options or {}),
                      files_total=len(items), bytes_total=bytes_total,
                      files_done=0, bytes_done=0, files_failed=0, files_skipped=0,
                      missing=list(missing), error="", log_path="", cancel_requested=False)
            s.add(job)
            s.flush()
            job_id = job.id
            job.log_path = str(log_dir / f"job-{job.id}.log")
            s.execute(insert(JobItem), [
                {"state": "queued", **item, "job_id": job.id, "attempts": 0, "error": ""}
                for item in items
            ])
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
        rows = s.execute(select(Job.id, Job.worker_id, Job.lease_expires)
                         .where(Job.state == "running", Job.worker_id.is_not(None))).all()
    dead = [jid for jid, wid, lease in rows
            if (lease is not None and lease < now) or _local_worker_dead(wid)]
    if dead:
        with db.write() as s:
            s.execute(update(Job).where(Job.id.in_(dead), Job.state == "running")
                      .values(worker_id=None, lease_expires=None))
    return dead


def claim_job(db: Database, worker_id: str, lease_seconds: float,
              owner: str | None = None, skip: Collection[int] = ()) -> tuple[int, bool] | None:
    """Take the oldest job that is queued or whose worker is gone; returns (id, resumed).

    With ``owner``, only that user's jobs: a worker started by a user's server runs as that
    user, so it must never take another user's job (it would write their files as itself).
    Without, any job (a site's service workers). Never one of ``skip`` (jobs this worker
    holds back after they failed to run)."""
    with db.write() as s:
        now = lease_clock(s)
        query = select(Job).where(Job.state.in_(ACTIVE_STATES),
                                  or_(Job.worker_id.is_(None), Job.lease_expires < now))
        if owner is not None:
            query = query.where(Job.owner == owner)
        if skip:
            query = query.where(Job.id.not_in(skip))
        job = s.scalars(query.order_by(Job.id).limit(1).with_for_update(skip_locked=True)
                        ).first()
        if job is None:
            return None
        resumed = job.started_at is not None
        job.worker_id = worker_id
        job.heartbeat_at = now
        job.lease_expires = now + dt.timedelta(seconds=lease_seconds)
        if job.state == "queued":
            job.state = "running"
            job.started_at = job.started_at or now
        # Items a dead worker had in hand go back to the queue (their temp files are removed
        # before anything else runs); done and skipped items stay as they are.
        s.execute(update(JobItem).where(JobItem.job_id == job.id, JobItem.state == "running")
                  .values(state="queued", worker_id=None))
        return job.id, resumed


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
            for start in range(0, len(ids), _IN_CHUNK):
                connection.execute(update(t).where(t.c.id.in_(ids[start:start + _IN_CHUNK]))
                                   .values(state=state, error="", worker_id=None))
        if failed:
            connection.execute(
                update(t).where(t.c.id == bindparam("item_id"))
                .values(state=bindparam("item_state"), error=bindparam("item_error"),
                        worker_id=None), failed)
        s.execute(update(Job).where(Job.id == job_id).values(
            files_done=Job.files_done + len(done),
            bytes_done=Job.bytes_done + sum(c.size for c, _ in done),
            files_skipped=Job.files_skipped + sum(1 for _, st in done if st == "skipped"),
            files_failed=Job.files_failed + sum(1 for _, st, _ in results if st == "failed"),
        ))


def _unfinished_paths(db: Database, job_id: int) -> list[str]:
    with db.read() as s:
        return list(s.scalars(select(JobItem.dest_path).where(
            JobItem.job_id == job_id, JobItem.state.in_(("queued", "running")))))


# ----- running --------------------------------------------------------------------------------
class _JobRun:
    """One worker's run of one claimed job: streams, heartbeat, finalisation."""

    def __init__(self, db: Database, job: Job, worker_id: str, config: EngineConfig,
                 stop: threading.Event, pool: CopyPool | None = None) -> None:
        self.db, self.job, self.worker_id, self.config, self.stop = db, job, worker_id, config, stop
        self.dest = Path(job.destination)
        self.kind = kinds.kind(job.kind)  # how the items of this job are moved
        self.dest_str = job.destination
        self.target = targets.for_job(job.destination, job.method, job.options)
        self.read_only = bool(job.options.get("read_only", True))
        self.pool = pool
        self.run_key = uuid.uuid4().hex  # tells the copy helpers one run from another
        self.log = JobLog(job.log_path)
        self.abort = threading.Event()  # set on cancel, lost lease or worker stop
        self.cancel_requested = job.cancel_requested
        self.lost = False
        self.copied_bytes = 0
        self._lock = threading.Lock()
        # The job's stores (name -> root) and those the catalogue says are unavailable now,
        # refreshed with every heartbeat: a store taken offline mid-job fails the items still
        # to come with a clear error instead of reading from it.
        self.store_roots: dict[str, str] = {}
        self.unavailable: frozenset[str] = frozenset()
        self.store_generation = 0  # bumped whenever ``unavailable`` changes
        # Shared by the streams: destination folders known to exist, and whether each
        # (relative) folder resolves inside the destination, so neither is asked per file.
        self.made_dirs: set[str] = set()
        self.inside: dict[str, bool] = {}
        # Items through (written and verified, or skipped, or failed) and not yet committed:
        # (item, state, error, outcome); the outcome carries the rename still to do.
        self._pending: list[tuple[_Claimed, str, str, Outcome | None]] = []
        # Items a copy helper made final already (copied, verified, logged, renamed, synced):
        # only their results are still to record.
        self._final: list[_Claimed] = []
        self._pending_bytes = 0
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._last_commit = time.monotonic()

    def _refresh_stores(self) -> None:
        with self.db.read() as s:
            if not self.store_roots:
                names = list(s.scalars(select(JobItem.store).where(
                    JobItem.job_id == self.job.id).distinct()))
                self.store_roots = dict(s.execute(select(Store.name, Store.path).where(
                    Store.name.in_(names))).all())
            self.unavailable = frozenset(s.scalars(select(Store.name).where(
                Store.name.in_(list(self.store_roots)), Store.available.is_(False))))

    def _explain(self, item: _Claimed, exc: OSError) -> str:
        """What an OSError means for the user: which side failed and why."""
        source = item.source_path
        on_source = isinstance(exc.filename, str) and (
            exc.filename == source or exc.filename.startswith(source.rstrip("/") + "/"))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"No space left on device: the file system holding {self.dest} is full "
                    f"({exc.strerror}); the partial copy was removed")
        if on_source and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EIO, errno.ESTALE,
                                       errno.ENODEV, errno.ENXIO):
            root = self.store_roots.get(item.store)
            if root is not None and not os.path.isdir(root):
                return (f"store {item.store!r} is unavailable: its directory {root} cannot be "
                        f"read ({exc.strerror}); retry the job when the store is back")
            return (f"the instance {source} on store {item.store!r} cannot be read "
                    f"({exc.strerror})")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            if on_source:
                return f"cannot read the instance {source}: {exc.strerror}"
            where = os.path.dirname(item.dest_path) or "."
            return (f"{exc.strerror}: cannot write into {where!r} of the destination "
                    f"{self.dest}")
        return str(exc)

    def _check(self, n: int) -> None:
        if self.abort.is_set() or self.stop.is_set():
            raise Cancelled()
        if self.config.chunk_delay:
            time.sleep(self.config.chunk_delay)

    def _heartbeat(self) -> None:
        while not self.abort.wait(self.config.heartbeat_seconds):
            if self.stop.is_set():
                self.abort.set()
                return
            try:
                with self.db.write() as s:
                    now = lease_clock(s)
                    row = s.execute(
                        update(Job).where(Job.id == self.job.id, Job.worker_id == self.worker_id)
                        .values(heartbeat_at=now,
                                lease_expires=now + dt.timedelta(seconds=self.config.lease_seconds))
                        .returning(Job.cancel_requested)).first()
            except Exception as exc:  # a database hiccup: try again next beat
                self.log(f"heartbeat failed: {exc}")
                continue
            if row is None:
                self.lost = True
                self.abort.set()
            elif row[0]:
                self.cancel_requested = True
                self.abort.set()
            else:
                was = self.unavailable
                with contextlib.suppress(Exception):  # keep the last answer on a hiccup
                    self._refresh_stores()
                if self.unavailable != was:
                    self.store_generation += 1
                for store in sorted(self.unavailable - was):
                    self.log(f"store {store!r} became unavailable: its files still to stage "
                             f"fail")

    def _spec(self, item: _Claimed) -> ItemSpec:
        return ItemSpec(item.source_path, os.path.join(self.dest_str, item.dest_path),
                        item.size, item.is_directory, item.checksums, self.job.method,
                        self.read_only, self.store_roots.get(item.store))

    def _stream(self) -> None:
        mover = self.target.mover(self.config, self._check, self.log, self.made_dirs)
        while not (self.abort.is_set() or self.stop.is_set()):
            batch = _claim_items(self.db, self.job.id, self.worker_id, self.config.claim_batch,
                                 self.config.claim_bytes)
            if not batch:
                return
            started: set[int] = set()
            try:
                pooled = [c for c in batch if self._pooled(c)]
                for part in hand_overs(pooled, lambda c: c.size, self.config.pool_batch_items,
                                       self.config.pool_batch_bytes):
                    if self.abort.is_set() or self.stop.is_set():
                        break
                    self._move_pooled(part, started, mover)
                for item in batch:
                    if item.id in started or self._pooled(item):
                        continue
                    if self.abort.is_set() or self.stop.is_set():
                        break
                    started.add(item.id)
                    self._one(mover, item, self._spec(item))
                    if self._commit_due():
                        self._commit(wait=False)
            finally:
                # Items not started go back to the queue; those through are committed by
                # whichever stream commits next (or at the end of the run).
                _requeue(self.db, [c.id for c in batch if c.id not in started])

    def _pooled(self, item: _Claimed) -> bool:
        """Small plain files go to the helper processes (when the worker has them): their
        cost is Python per file, not bytes; large files and data sets stay in the stream,
        where a cancel is seen between chunks."""
        return (self.pool is not None and self.target.poolable and not item.is_directory
                and item.size <= self.config.pool_max_bytes)

    def _move_pooled(self, items: list[_Claimed], started: set[int], mover: Mover) -> None:
        """One hand-over to a helper, which copies, verifies, logs and makes final its
        files (``copy_pool``); here only their results are queued for the next commit."""
        assert self.pool is not None
        specs, ready = [], []
        for item in items:
            spec = self._spec(item)
            try:
                self._precheck(item, spec)
            except ItemFailed as exc:
                started.add(item.id)
                self._settle(item, None, exc, None)
                continue
            specs.append(spec)
            ready.append(item)
        if not ready or self.abort.is_set() or self.stop.is_set():
            return
        generation = self.store_generation

        def interrupt() -> bool:
            # A store that became unavailable stops the hand-over too: the items it had not
            # reached come back to the queue and fail there, with the store's name.
            return self.abort.is_set() or self.store_generation != generation

        hand = HandOver(self.run_key, str(self.log.path), self.config.fsync, specs,
                        [item.dest_path for item in ready])
        try:
            moved = self.pool.move(hand, interrupt)
        except HelperDied as exc:
            # What it made final is found verified (not copied again); the rest is copied here,
            # not handed over again, so a file that kills helpers cannot stall the job.
            self.log(f"{exc}: its {len(ready)} file(s) are moved by the worker itself")
            remove_temp_folders({os.path.dirname(spec.final) for spec in specs}, exc.pid)
            for item, spec in zip(ready, specs):
                if self.abort.is_set() or self.stop.is_set():
                    break
                started.add(item.id)
                item.attempts += 1  # a second attempt: a file found there is its own
                self._one(mover, item, spec)
            return
        final: list[_Claimed] = []
        for item, result in zip(ready, moved):
            started.add(item.id)
            if result is None:
                final.append(item)
            elif isinstance(result, BaseException):
                self._settle(item, None, result, None)
            else:
                self._settle(item, result, None, None)
        if final:
            nbytes = sum(item.size for item in final)
            with self._lock:
                self.copied_bytes += nbytes
            with self._pending_lock:
                self._final.extend(final)
                self._pending_bytes += nbytes
        if self._commit_due():
            self._commit(wait=False)

    def _precheck(self, item: _Claimed, spec: ItemSpec) -> None:
        folder = os.path.dirname(item.dest_path)
        inside = self.inside.get(folder)
        if inside is None:
            inside = self.inside[folder] = self.target.inside(os.path.dirname(spec.final))
        if not inside:
            raise ItemFailed("destination sub-directory leads outside the destination")
        if item.store in self.unavailable:
            raise ItemFailed(f"store {item.store!r} is unavailable (marked so in the "
                             f"catalogue); retry the job when it is back")

    def _one(self, mover: Mover, item: _Claimed, spec: ItemSpec) -> None:
        started = time.monotonic()
        try:
            self._precheck(item, spec)
            # The mover never reads an instance swapped for a symlink out of its store.
            outcome = mover.move(spec)
        except Cancelled:
            raise
        except (ItemFailed, OSError, StagingError) as exc:
            return self._settle(item, None, exc, started)
        return self._settle(item, outcome, None, started)

    def _settle(self, item: _Claimed, outcome: Outcome | None, error: BaseException | None,
                started: float | None) -> None:
        """Log an item's result and queue it for the next commit. ``started`` (when the item
        was moved alone) gives its rate in the log."""
        if outcome is None:
            message = (self._explain(item, error) if isinstance(error, OSError)
                       else str(error))
            self.log.note(f"FAILED {item.dest_path}: {message}")
            return self._add(item, "failed", message, None)
        state = outcome.state
        if state == "skipped" and item.attempts > 1:
            # An earlier attempt of this job finished it (before its worker or helper died):
            # it is ours.
            state = "done"
            self.log.note(f"verified {item.dest_path} (finished by an earlier attempt; "
                          f"not copied again)")
        elif state == "skipped":
            self.log.note(f"skipped {item.dest_path}: {outcome.note}")
        else:
            with self._lock:
                self.copied_bytes += item.size
            rate = ""
            if started is not None:
                seconds = max(time.monotonic() - started, 1e-9)
                rate = f", {item.size / seconds / 1e6:.1f} MB/s"
            self.log.note(f"{self.job.method} {item.dest_path} ({item.size} bytes{rate}"
                          f"{', ' + outcome.note if outcome.note else ''})")
        return self._add(item, state, "", outcome)

    # ----- commits: renames and results of a batch at once --------------------------------
    def _add(self, item: _Claimed, state: str, error: str, outcome: Outcome | None) -> None:
        with self._pending_lock:
            self._pending.append((item, state, error, outcome))
            self._pending_bytes += item.size

    def _commit_due(self) -> bool:
        return (len(self._pending) + len(self._final) >= self.config.commit_items
                or self._pending_bytes >= self.config.commit_bytes
                or time.monotonic() - self._last_commit >= self.config.flush_seconds)

    def _commit(self, wait: bool) -> None:
        """Make every item through so far final (``methods.commit``: sync, renames, sync),
        then record the results in one transaction. With ``wait`` False, returns at once
        when another stream is committing (it goes on copying meanwhile)."""
        if not self._commit_lock.acquire(blocking=wait):
            return
        try:
            with self._pending_lock:
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                final, self._final = self._final, []
                self._last_commit = time.monotonic()
            if not batch and not final:
                return
            # The per-file lines first: a file under its final name always has its line.
            self.log.flush()
            renames = [(o.tmp, o.final) for _, _, _, o in batch if o is not None and o.tmp]
            errors = iter(commit(renames, self.config.fsync))
            results = [(item, "done", "") for item in final]
            for item, state, error, outcome in batch:
                if outcome is not None and outcome.tmp:
                    exc = next(errors)
                    if exc is not None:
                        error = ("appeared at the destination while it was being staged; "
                                 "not overwritten" if isinstance(exc, FileExistsError)
                                 else self._explain(item, exc))
                        state = "failed"
                        self.log.note(f"FAILED {item.dest_path}: {error}")
                        with self._lock:
                            self.copied_bytes -= item.size
                results.append((item, state, error))
            _record(self.db, self.job.id, results)
            self.log.flush()
        finally:
            self._commit_lock.release()

    def run(self, resumed: bool) -> str:
        job = self.job
        self.log(f"worker {self.worker_id} {'resumes' if resumed else 'starts'} job {job.id} "
                 f"({self.config.streams} stream(s))")
        self._refresh_stores()
        self.kind.begin(self, resumed)
        started = time.monotonic()
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True)
        heartbeat.start()
        errors: list[BaseException] = []

        def stream() -> None:
            try:
                self.kind.stream(self)
            except Cancelled:
                pass
            except BaseException as exc:  # a bug or the database gone: stop the job's run
                errors.append(exc)
                self.abort.set()

        threads = [threading.Thread(target=stream, name=f"job{job.id}-stream{i}")
                   for i in range(self.kind.streams(self))]
        if not self.cancel_requested:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.abort.set()
        heartbeat.join()
        if not self.lost:
            # What the streams wrote and verified becomes final (on cancel and stop too).
            try:
                self._commit(wait=True)
            except Exception as exc:  # the database or the disk gone: released below
                errors.append(exc)
        self.log.flush()
        seconds = time.monotonic() - started
        if self.lost:
            self.log("lease lost to another worker; stopping (its uncommitted items are "
                     "redone by the worker that took the job)")
            return "lost"
        if errors and not self.cancel_requested:
            self.log(f"worker error: {errors[0]!r}; job released for another attempt")
            raise errors[0]  # the worker releases the job and takes it again after a back-off
        if self.cancel_requested:
            finish_cancelled(self.db, job.id)
            return "cancelled"
        if self.stop.is_set():
            self._release()
            self.log("worker stopping: job released, it resumes with the next worker")
            return "released"
        if _unfinished_paths(self.db, job.id):  # another worker still holds some items
            self._release()
            return "released"
        self.log(f"copied {self.copied_bytes} bytes in {seconds:.1f} s "
                 f"({self.copied_bytes / max(seconds, 1e-9) / 1e6:.1f} MB/s)")
        return finish_job(self.db, job.id)

    def _release(self) -> None:
        release_job(self.db, self.job.id, self.worker_id)


def release_job(db: Database, job_id: int, worker_id: str, error: str | None = None) -> None:
    """Give a job this worker holds back to the queue (its items in hand too), for the next
    worker to resume; ``error`` says why, on the job, until it finishes."""
    with db.write() as s:
        s.execute(update(JobItem).where(JobItem.job_id == job_id, JobItem.state == "running")
                  .values(state="queued", worker_id=None))
        values: dict[str, Any] = {"worker_id": None, "lease_expires": None}
        if error is not None:
            values["error"] = error
        s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id)
                  .values(**values))


def _recount(s: Session, job: Job) -> None:
    """Counters from the items themselves: authoritative whatever a crash lost."""
    counts = dict(s.execute(select(JobItem.state, func.count()).where(JobItem.job_id == job.id)
                            .group_by(JobItem.state)).all())
    job.files_done = counts.get("done", 0) + counts.get("skipped", 0)
    job.files_skipped = counts.get("skipped", 0)
    job.files_failed = counts.get("failed", 0)
    # int(): PostgreSQL sums a BIGINT column as NUMERIC (a Decimal here).
    job.bytes_done = int(s.scalar(select(func.coalesce(func.sum(JobItem.size), 0)).where(
        JobItem.job_id == job.id, JobItem.state.in_(("done", "skipped")))) or 0)


def finish_job(db: Database, job_id: int) -> str:
    """Write the result marker and the final state of a job whose items are all through."""
    job = _load_job(db, job_id)
    with db.read() as s:
        failed = s.execute(select(JobItem.dest_path, JobItem.error).where(
            JobItem.job_id == job_id, JobItem.state == "failed").order_by(JobItem.id)).all()
    lines = [f"{path}: {error}" for path, error in failed]
    lines += [f"{name}: no available instance on an online store" for name in job.missing]
    # The kind's results first (stage: markers), then the database: a crash in between
    # leaves a running job whose finalisation simply runs again.
    kinds.kind(job.kind).finish(job, lines)
    state = "failed" if lines else "succeeded"
    with db.write() as s:
        row = s.get(Job, job_id)
        assert row is not None
        _recount(s, row)
        row.state, row.finished_at = state, utcnow()
        row.worker_id, row.lease_expires = None, None
        row.error = "" if not lines else (
            f"{row.files_failed} file(s) failed, {len(row.missing)} missing; first: {lines[0]}")
        summary = (f"job {job_id} {state}: {row.files_done} of {row.files_total} file(s) "
                   f"present ({row.files_skipped} skipped as identical), {row.files_failed} "
                   f"failed, {len(row.missing)} missing")
    JobLog(job.log_path)(summary)
    return state


def finish_cancelled(db: Database, job_id: int) -> str:
    job = _load_job(db, job_id)
    kind = kinds.kind(job.kind)
    with db.write() as s:
        row = s.get(Job, job_id)
        assert row is not None
        s.execute(update(JobItem).where(JobItem.job_id == job_id, JobItem.state == "running")
                  .values(state="queued", worker_id=None))
        _recount(s, row)
        left = row.files_total - row.files_done - row.files_failed
        row.state, row.finished_at = "cancelled", utcnow()
        row.worker_id, row.lease_expires = None, None
        row.error = f"cancelled; {left} file(s) not staged"
    removed = kind.cancelled(db, job, left)
    recall.reap_after_cancel(db, job_id, JobLog(job.log_path))
    JobLog(job.log_path)(f"job {job_id} cancelled: {left} file(s) not staged, "
                         f"{removed} temporary file(s) removed")
    return "cancelled"


def run_job(db: Database, job_id: int, worker_id: str, config: EngineConfig | None = None,
            stop: threading.Event | None = None, resumed: bool = False,
            pool: CopyPool | None = None) -> str:
    """Run a job this worker has claimed until it is finished, cancelled or released."""
    job = _load_job(db, job_id)
    return _JobRun(db, job, worker_id, config or EngineConfig(), stop or threading.Event(),
                   pool).run(resumed)


def run_pending(db: Database, config: EngineConfig | None = None, *,
                worker_id: str | None = None, stop: threading.Event | None = None,
                pool: CopyPool | None = None) -> list[int]:
    """Claim and run jobs in this process until none is left; returns the ids run."""
    config = config or EngineConfig()
    worker_id = worker_id or new_worker_id()
    ran = []
    while not (stop and stop.is_set()):
        claimed = claim_job(db, worker_id, config.lease_seconds)
        if claimed is None:
            break
        run_job(db, claimed[0], worker_id, config, stop, resumed=claimed[1], pool=pool)
        ran.append(claimed[0])
    return ran


# ----- control --------------------------------------------------------------------------------
def cancel_job(db: Database, job_id: int) -> dict[str, Any]:
    """Cancel a job. A running job's worker sees the request at its next heartbeat (about a
    second), removes its temporary files and marks the job cancelled; a queued job, or one
    whose worker is gone, is cancelled here at once. A finished job is left as it is."""
    with db.write() as s:
        now = lease_clock(s)
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.state not in ACTIVE_STATES:
            return job_json(job)
        job.cancel_requested = True
        worker_alive = (job.state == "running" and job.worker_id is not None
                        and job.lease_expires is not None and job.lease_expires > now
                        and not _local_worker_dead(job.worker_id))
        if not worker_alive:
            # Nobody will act on the flag: hold the job (a short lease, so that a crash right
            # here leaves it to the next worker, which sees the flag) and finish it here.
            job.worker_id = "cancel"
            job.lease_expires = now + dt.timedelta(seconds=60)
    if not worker_alive:
        JobLog(job.log_path)(f"job {job_id} cancelled while no worker held it")
        finish_cancelled(db, job_id)
    return get_job(db, job_id)


def retry_job(db: Database, job_id: int, *, force: bool = False,
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
    job = _load_job(db, job_id)
    if job.state in ACTIVE_STATES:
        raise Conflict(f"job {job_id} is still {job.state}: it can be retried once it has "
                       f"finished (cancel it first to stop it)", job_id=job_id)
    kind = kinds.kind(job.kind)
    recall.rewind_reaped(db, job_id, _resolve)
    new_items, still_missing, new_bytes = _resolve(db, job.missing) if job.missing else ([], [], 0)
    with db.read() as s:
        left, left_bytes = s.execute(
            select(func.count(), func.coalesce(func.sum(JobItem.size), 0))
            .where(JobItem.job_id == job_id,
                   JobItem.state.in_((*recall.RETRIED, recall.WAITING)))).one()
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
            row = s.get(Job, job_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no job {job_id}")
            if row.state in ACTIVE_STATES:  # retried (or resumed) by someone else meanwhile
                raise Conflict(f"job {job_id} is already {row.state}", job_id=job_id)
            kind.retake(s, row, left_bytes=int(left_bytes) + new_bytes, force=force,
                        allowed_roots=allowed_roots)
            taken = True
            s.execute(update(JobItem).where(JobItem.job_id == job_id,
                                            JobItem.state.in_(recall.RETRIED))
                      .values(state="queued", error="", worker_id=None))
            if new_items:
                s.execute(insert(JobItem), [
                    {"state": "queued", **item, "job_id": job_id, "attempts": 0, "error": ""}
                    for item in new_items])
            row.files_total += len(new_items)
            row.bytes_total += new_bytes
            row.missing = still_missing
            row.state, row.finished_at, row.error = "queued", None, ""
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
        row = s.get(Job, job_id, with_for_update=True)
        if row is None:
            raise NotFound(f"no job {job_id}")
        if row.state in ACTIVE_STATES:
            raise Conflict(f"job {job_id} is still {row.state}: cancel it before forgetting it",
                           job_id=job_id)
        log_path = row.log_path
        s.execute(delete(JobItem).where(JobItem.job_id == job_id))
        s.execute(delete(Job).where(Job.id == job_id))
    # Only the log this engine named for the job (never some other file a row might point at).
    if log_path and os.path.basename(log_path) == f"job-{job_id}.log":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log_path)
    return {"deleted": job_id}


# ----- the stage kind -------------------------------------------------------------------------
class StageKind(kinds.JobKind):
    """Staging: items copied (or linked) into the job's destination (``targets``: a local folder
    or a contents-manager folder), which the job holds with the Librarian's markers from launch
    until its result markers are written."""

    name = "stage"

    def begin(self, run: _JobRun, resumed: bool) -> None:
        run.target.ensure_in_progress(run.job.id, run.job.owner)
        if resumed:
            n = run.target.remove_temps(_unfinished_paths(run.db, run.job.id))
            if n:
                run.log(f"removed {n} temporary file(s) left by the previous worker")

    def stream(self, run: _JobRun) -> None:
        recall.with_recall(run, run._stream)

    def finish(self, job: Job, lines: list[str]) -> None:
        _target(job).finish(job.id, lines)

    def cancelled(self, db: Database, job: Job, left: int) -> int:
        target = _target(job)
        removed = target.remove_temps(_unfinished_paths(db, job.id))
        target.finish(job.id, [f"job {job.id} cancelled: {left} file(s) not staged"])
        return removed

    def retake(self, s: Session, job: Job, *, left_bytes: int, force: bool,
               allowed_roots: Sequence[str | os.PathLike[str]]) -> None:
        target = _target(job)
        target.recheck(allowed_roots)
        needed = left_bytes if job.method in _COPYING else 0
        free = _free_bytes(target.local) if target.local is not None else None
        if free is not None and needed > free and not force:
            raise InsufficientSpace(
                f"the destination has {free} bytes free and the retry needs {needed}",
                needed=needed, free=free)
        busy = s.scalar(select(Job.id).where(Job.destination == job.destination,
                                             Job.id != job.id, Job.state.in_(ACTIVE_STATES)))
        if busy is not None:
            raise Conflict(f"job {busy} is already staging into {job.destination}", job_id=busy)
        target.acquire(job.id, job.owner, lambda other: _is_active(s, other))

    def release(self, job: Job) -> None:
        _target(job).release(job.id)


def _target(job: Job) -> targets.Target:
    return targets.for_job(job.destination, job.method, job.options)


STAGE = StageKind()
