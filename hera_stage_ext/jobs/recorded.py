"""Stage jobs a site service records without touching the destination (site mode).

The site service runs under its own account and must never read or write a user's folders: a
staging request reaches it with the destination already resolved and confined by the user's
own server, and it only checks what it can check without the file system (an absolute, normal
path; a method a user's worker can run; the files) and that no other unfinished job goes into
the same folder (in the database). The job is stored with ``options["recorded"] = True``; the
user's worker (``jobs.worker --site-url``) confines the destination again against its own
allowed roots and takes the folder (STAGING-IN-PROGRESS) when it starts the job
(``engine.StageKind.begin``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..catalogue.db import Database
from ..errors import Conflict, InvalidRequest, NotFound
from ..paths import check_text
from . import preview, recall
from .engine import create_job
from .methods import METHODS
from .models import ACTIVE_STATES, Job
from .plan import COPYING, _names, _resolve, busy_job

#: Methods a user's worker runs from a recorded job (``contents`` needs the user's server).
RECORDED_METHODS = tuple(m for m in METHODS if m != "contents")


def check_destination(destination: object) -> str:
    """An absolute, normalised path (what the user's server resolved); InvalidRequest else."""
    path = check_text(destination, "destination")
    if not os.path.isabs(path) or os.path.normpath(path) != path or path.startswith("//"):
        raise InvalidRequest(
            f"destination {path!r} must be an absolute, normalised path (the user's server "
            f"resolves it before it forwards a request to the site service)")
    return path


def _plan(db: Database, names_or_rows: Iterable[str | Mapping[str, Any]], destination: object,
          method: str) -> tuple[str, list[dict[str, Any]], list[str], int]:
    if method not in RECORDED_METHODS:
        raise InvalidRequest(f"unknown staging method {method!r} on the site service; use "
                             f"one of {', '.join(RECORDED_METHODS)}")
    dest = check_destination(destination)
    items, missing, total = _resolve(db, _names(names_or_rows))
    if any(item.get("state") == recall.WAITING for item in items):
        # The recall into the buffer belongs to the site, the staging to the user: the two
        # are not split between the site worker and the user's worker yet.
        cold = sorted(item["name"] for item in items if item.get("state") == recall.WAITING)
        raise InvalidRequest(
            f"{len(cold)} file(s) are only on a cold store; staging them through the site "
            f"service is not supported yet (first: {cold[0]})", cold=cold[:100])
    return dest, items, missing, total


def dry_run_recorded(db: Database, names_or_rows: Iterable[str | Mapping[str, Any]],
                     destination: object, method: str = "copy",
                     with_items: bool = False) -> dict[str, Any]:
    """What a recorded job would stage (free space and the files already there are the user's
    server's to tell: with ``with_items``, ``items`` lists what it needs to look, at most
    ``preview.CHECK_FILES`` of them)."""
    dest, items, missing, total = _plan(db, names_or_rows, destination, method)
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
    busy = s.scalar(select(Job.id).where(Job.destination == destination, Job.id != job_id,
                                         Job.state.in_(ACTIVE_STATES)))
    if busy is not None:
        raise Conflict(f"job {busy} is already staging into {destination}", job_id=busy)


def record_stage_job(
    db: Database, owner: str, names_or_rows: Iterable[str | Mapping[str, Any]],
    destination: object, method: str = "copy", *, search: Any = None, read_only: bool = True,
    log_dir: str | os.PathLike[str] | None = None, options: Mapping[str, Any] | None = None,
    admit: Callable[[Session, Job], None] | None = None,
) -> dict[str, Any]:
    """Record a stage job of ``owner`` into ``destination``, for the user's worker to run
    (``options`` and ``admit`` as ``engine.create_stage_job``'s)."""
    dest, items, missing, total = _plan(db, names_or_rows, destination, method)
    if not items:
        raise NotFound(f"none of the {len(missing)} file(s) has an available instance on "
                       f"an online store", missing=missing)

    def take(s: Session, job: Job) -> None:
        if admit is not None:
            admit(s, job)
        busy_check(s, dest, job.id)

    return create_job(
        db, owner, "stage", dest, method, items, missing, total, search=search,
        options={"read_only": read_only, **(options or {}), "recorded": True}, log_dir=log_dir,
        take=take,
        summary=f"{method} {len(items)} file(s), {total} bytes into {dest} (recorded by the "
                f"site service; the user's worker takes the folder)")


def is_recorded(job: Any) -> bool:
    options = job.options if not isinstance(job, Mapping) else job.get("options")
    return bool((options or {}).get("recorded"))

