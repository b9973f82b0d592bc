"""Stage jobs a site service records without touching the destination (site mode).

The site service runs under its own account and must never read or write a user's folders: a
staging request reaches it with the destination already resolved and confined by the user's
own server, and it only checks what it can check without the file system (an absolute, normal
path; a method a user's worker can run; the files) and that no other unfinished job goes into
the same folder (in the database). The job is stored with ``options["recorded"] = True``; the
user's worker (``jobs.worker --site-url``) confines the destination again against its own
allowed roots and takes the folder (STAGING-IN-PROGRESS) when it starts the job
(``stage_kind.StageKind.begin``).

Files only on a cold store: the job's items for them wait (``ItemState.WAITING``) and a recall
job (kind ``recall``, the same owner, destination ``job:<stage job id>``) is recorded with it,
for the site's own worker, which recalls them into the buffer (``recall.RecallKind``); the
user's worker stages each once it is in the queue. The ``contents`` method: the user's server
describes its contents manager (``contents.describe_manager``); the description is checked as
plain JSON (``contents.check_description``) and stored with the job, never used here: the
user's worker builds the manager from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..catalogue.db import Database
from ..errors import Conflict, InvalidRequest, NotFound
from ..paths import check_text
from ..states import ACTIVE_JOB_STATES, ItemState, JobState
from . import preview, recall
from .contents import SCHEME, check_description, clean_api_path
from .engine import create_job
from .joblog import JobLog, default_log_dir
from .methods import METHODS
from .models import JobRow, JobItem, item_state_is
from .plan import COPYING, unique_names, resolve_names, busy_job

#: Where the site's recall job of stage job N says it works (``JobRow.destination``).
RECALL_FOR = "job:{}"


def check_destination(destination: object, method: str = "copy") -> str:
    """An absolute, normalised path (what the user's server resolved), or for the ``contents``
    method into a manager without files, ``contents:<clean relative path>``; InvalidRequest
    else."""
    path = check_text(destination, "destination")
    if method == "contents" and path.startswith(SCHEME):
        if clean_api_path(path[len(SCHEME):] or ".") != path[len(SCHEME):]:
            raise InvalidRequest(f"destination {path!r} must be {SCHEME} and a clean path "
                                 f"relative to the contents root")
        return path
    if not os.path.isabs(path) or os.path.normpath(path) != path or path.startswith("//"):
        raise InvalidRequest(
            f"destination {path!r} must be an absolute, normalised path (the user's server "
            f"resolves it before it forwards a request to the site service)")
    return path


def _plan(db: Database, names_or_rows: Iterable[str | Mapping[str, Any]], destination: object,
          method: str) -> tuple[str, list[dict[str, Any]], list[str], int]:
    if method not in METHODS:
        raise InvalidRequest(f"unknown staging method {method!r}; use one of "
                             f"{', '.join(METHODS)}")
    dest = check_destination(destination, method)
    items, missing, total = resolve_names(db, unique_names(names_or_rows))
    recall.check_method(method, items)
    return dest, items, missing, total


def dry_run_recorded(db: Database, names_or_rows: Iterable[str | Mapping[str, Any]],
                     destination: object, method: str = "copy",
                     with_items: bool = False, contents: object = None) -> dict[str, Any]:
    """What a recorded job would stage (free space and the files already there are the user's
    server's to tell: with ``with_items``, ``items`` lists what it needs to look, at most
    ``preview.CHECK_FILES`` of them)."""
    dest, items, missing, total = _plan(db, names_or_rows, destination, method)
    _contents_options(method, dest, contents)
    needed = total if method in COPYING else 0
    out = {"destination": dest, "method": method, "files": len(items), "bytes": total,
           "missing": missing, "bytes_needed": needed, "free_bytes": None, "fits": True,
           **preview.nothing_checked(len(items)), "busy_job": busy_job(db, dest)}
    if with_items:
        out["items"] = [{key: item[key] for key in preview.ITEM_KEYS}
                        for item in items[:preview.CHECK_FILES]]
    return out


def busy_check(s: Session, destination: str, job_id: int) -> None:
    """Conflict when another unfinished job goes into ``destination``."""
    busy = s.scalar(select(JobRow.id).where(JobRow.destination == destination, JobRow.id != job_id,
                                         JobRow.state.in_(ACTIVE_JOB_STATES)))
    if busy is not None:
        raise Conflict(f"job {busy} is already staging into {destination}", job_id=busy)


def _contents_options(method: str, destination: str, contents: object) -> dict[str, Any]:
    """The job options of the ``contents`` method: the user's server's description of its
    contents manager, checked as plain JSON and stored as it is (the service never builds a
    manager from it: the user's worker does)."""
    if method != "contents":
        return {}
    spec = check_description(contents)
    if not spec["file_based"] and destination != SCHEME + spec["path"]:
        raise InvalidRequest(f"destination {destination!r} is not the contents path "
                             f"{spec['path']!r} the description names")
    if spec["file_based"] and destination.startswith(SCHEME):
        raise InvalidRequest("a file-based contents manager stages into a local folder: the "
                             "destination must be an absolute path")
    return {"contents": spec}


def record_stage_job(
    db: Database, owner: str, names_or_rows: Iterable[str | Mapping[str, Any]],
    destination: object, method: str = "copy", *, search: Any = None, read_only: bool = True,
    log_dir: str | os.PathLike[str] | None = None, options: Mapping[str, Any] | None = None,
    admit: Callable[[Session, JobRow], None] | None = None, contents: object = None,
) -> dict[str, Any]:
    """Record a stage job of ``owner`` into ``destination``, for the user's worker to run
    (``options`` and ``admit`` as ``engine.create_stage_job``'s); files only on a cold store
    get a recall job for the site's worker (``RECALL``)."""
    dest, items, missing, total = _plan(db, names_or_rows, destination, method)
    contents_options = _contents_options(method, dest, contents)
    if not items:
        raise NotFound(f"none of the {len(missing)} file(s) has an available instance on "
                       f"an online store", missing=missing)
    cold = sum(1 for item in items if item.get("state") == ItemState.WAITING)

    def take(s: Session, job: JobRow) -> None:
        if admit is not None:
            admit(s, job)
        busy_check(s, dest, job.id)
        if cold:
            add_recall_job(s, job, log_dir)

    recalled = f"; {cold} file(s) recalled from cold storage by the site first" if cold else ""
    return create_job(
        db, owner, "stage", dest, method, items, missing, total, search=search,
        options={"read_only": read_only, **(options or {}), "recorded": True,
                 **contents_options}, log_dir=log_dir,
        take=take,
        summary=f"{method} {len(items)} file(s), {total} bytes into {dest} (recorded by the "
                f"site service; the user's worker takes the folder{recalled})")


def add_recall_job(s: Session, stage: JobRow, log_dir: str | os.PathLike[str] | None) -> JobRow:
    """The site's recall job of ``stage`` (in the session's transaction): the site's worker
    claims it (kind ``recall``) and recalls the stage job's cold files into the buffer."""
    row = JobRow(owner=stage.owner, kind="recall", state=JobState.QUEUED,
              destination=RECALL_FOR.format(stage.id), method="recall",
              options={"stage_job": stage.id}, files_total=0, bytes_total=0, files_done=0,
              bytes_done=0, files_failed=0, files_skipped=0, missing=[], error="",
              log_path="", cancel_requested=False)
    s.add(row)
    s.flush()
    folder = Path(log_dir) if log_dir is not None else default_log_dir()
    row.log_path = str(folder / f"job-{row.id}.log")
    return row


def recall_jobs(db: Database, stage_id: int, active: bool | None = None) -> list[int]:
    """The ids of the site's recall jobs of stage job ``stage_id`` (only the active ones, or
    only the finished ones)."""
    query = select(JobRow.id).where(JobRow.kind == "recall",
                                 JobRow.destination == RECALL_FOR.format(stage_id))
    if active is not None:
        query = query.where(JobRow.state.in_(ACTIVE_JOB_STATES) if active
                            else JobRow.state.not_in(ACTIVE_JOB_STATES))
    with db.read() as s:
        return list(s.scalars(query.order_by(JobRow.id)))


def ensure_recall(db: Database, stage_id: int,
                  log_dir: str | os.PathLike[str] | None = None) -> int | None:
    """After a retry: a recall job for the stage job's files that wait for their recall,
    unless one is active already; returns its id (None: none needed or one runs)."""
    with db.write() as s:
        stage = s.get(JobRow, stage_id, with_for_update=True)
        if stage is None or stage.state not in ACTIVE_JOB_STATES:
            return None
        waiting = s.scalar(select(func.count()).select_from(JobItem).where(
            JobItem.job_id == stage_id, item_state_is(ItemState.WAITING)))
        running = s.scalar(select(JobRow.id).where(
            JobRow.kind == "recall", JobRow.destination == RECALL_FOR.format(stage_id),
            JobRow.state.in_(ACTIVE_JOB_STATES)))
        if not waiting or running is not None:
            return None
        row = add_recall_job(s, stage, log_dir)
        log_path, row_id = row.log_path, row.id
    JobLog(log_path)(f"job {row_id} created: the recall of job {stage_id}'s "
                     f"{waiting} file(s) on cold storage")
    return row_id


def is_recorded(job: Any) -> bool:
    options = job.options if not isinstance(job, Mapping) else job.get("options")
    return bool((options or {}).get("recorded"))

