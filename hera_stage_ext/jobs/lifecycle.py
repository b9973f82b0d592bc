"""The life cycle of staged data, on the database's side: when a staged folder expires, how
much unexpired staged data a user holds (and the quota a launch is refused by), and the records
of a user's staged folders that ``cleaner`` checks and removes them by.

A stage job's expiry is decided at launch (``expiry_options``: the request's ``expires_in`` or
``expires_at``, else the site's default) and kept in its options (``expires_at``, ISO 8601 UTC),
as is the moment its folder was cleaned (``cleaned_at``). No folder is read here: the site
service uses this module too, and it never touches users' folders.

A *staged folder* is a destination of the user's stage jobs that has not been cleaned: its
record joins the jobs that staged into it (their ids, whether the engine made the folder, the
folder's pin, the latest expiry) and the entries they staged (``done`` items: path, size, kind,
checksum, and the link target of a ``symlink`` item), which is what the folder must still hold
for ``cleaner`` to remove any of it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..catalogue.checksums import preferred_algorithm
from ..catalogue.db import Database
from ..catalogue.models import utcnow
from ..catalogue.serialize import iso
from ..errors import Conflict, InvalidRequest, QuotaExceeded
from ..states import ACTIVE_JOB_STATES, ItemState
from .models import JobRow, JobItem

#: ``expires_in`` as text: a number and a unit (seconds, minutes, hours, days, weeks).
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Longest expiry a request may ask for (ten years: beyond, a date is not meant).
MAX_EXPIRY = dt.timedelta(days=3653)


def parse_duration(value: object, what: str = "expires_in") -> dt.timedelta:
    """Seconds (a number) or text such as ``"7d"``, ``"12h"``, ``"90m"``, ``"2w"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequest(f"'{what}' must be seconds (a number) or text such as '7d' or "
                             f"'12h'")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.lower())
        if match is None:
            raise InvalidRequest(f"'{what}' {value!r} is not a duration: give seconds, or a "
                                 f"number with s, m, h, d or w ('7d', '12h')")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        seconds = float(value)
    if not 0 < seconds <= MAX_EXPIRY.total_seconds():
        raise InvalidRequest(f"'{what}' must be more than 0 and at most {MAX_EXPIRY.days} "
                             f"days")
    return dt.timedelta(seconds=seconds)


def parse_instant(value: object, what: str = "expires_at") -> dt.datetime:
    """An ISO 8601 date or time (UTC when it names no offset), as naive UTC."""
    if not isinstance(value, str):
        raise InvalidRequest(f"'{what}' must be an ISO 8601 date or time, e.g. "
                             f"'2027-01-31T12:00:00Z'")
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"'{what}' {value!r} is not an ISO 8601 date or time") from None
    if when.tzinfo is not None:
        try:
            when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
        except OverflowError:  # e.g. 0001-01-01T00:00+01:00: before year 1 in UTC
            raise InvalidRequest(f"'{what}' {value!r} is out of range") from None
    return when


def expiry_options(expires_in: object = None, expires_at: object = None,
                   default_seconds: float = 0.0,
                   now: dt.datetime | None = None) -> dict[str, str]:
    """A launch's expiry, for the job's options: ``{"expires_at": ...}`` or nothing (kept
    until cleaned by hand). At most one of ``expires_in``/``expires_at``; neither: the site's
    default (``default_seconds``, 0 for none)."""
    now = now or utcnow()
    if expires_in is not None and expires_at is not None:
        raise InvalidRequest("give 'expires_in' or 'expires_at', not both")
    if expires_in is not None:
        when = now + parse_duration(expires_in)
    elif expires_at is not None:
        when = parse_instant(expires_at)
        if when <= now:
            raise InvalidRequest(f"'expires_at' {iso(when)} is in the past")
        if when - now > MAX_EXPIRY:
            raise InvalidRequest(f"'expires_at' is more than {MAX_EXPIRY.days} days away")
    elif default_seconds > 0:
        when = now + dt.timedelta(seconds=default_seconds)
    else:
        return {}
    return {"expires_at": iso(when.replace(microsecond=0)) or ""}


def expires_at(options: Mapping[str, Any] | None) -> dt.datetime | None:
    text = (options or {}).get("expires_at")
    return parse_instant(text) if isinstance(text, str) else None


def _staged_bytes(state: str, bytes_total: int, bytes_done: int) -> int:
    """What a job holds (or will, while it runs) in its folder."""
    return int(bytes_total if state in ACTIVE_JOB_STATES else bytes_done)


def staged_use(s: Session, owner: str, now: dt.datetime | None = None,
               exclude: int | None = None) -> int:
    """Bytes of ``owner``'s unexpired staged data not cleaned yet (queued and running jobs
    count what they will stage)."""
    now = now or utcnow()
    used = 0
    rows = s.execute(select(JobRow.id, JobRow.state, JobRow.bytes_total, JobRow.bytes_done,
                            JobRow.options)
                     .where(JobRow.owner == owner, JobRow.kind == "stage"))
    for job_id, state, total, done, options in rows:
        options = options or {}
        until = expires_at(options)
        if job_id == exclude or options.get("cleaned_at") or (until is not None
                                                              and until <= now):
            continue
        used += _staged_bytes(state, total, done)
    return used


def quota_admission(quota: int, owner: str) -> Callable[[Session, JobRow], None] | None:
    """The check a launch of ``owner`` runs in its own transaction (``create_job``'s
    ``take``): QuotaExceeded when the job would take the user past ``quota`` bytes of
    unexpired staged data. None when there is no quota."""
    if quota <= 0:
        return None

    def admit(s: Session, job: JobRow) -> None:
        used = staged_use(s, owner, exclude=job.id)
        if used + job.bytes_total > quota:
            raise QuotaExceeded(
                f"staging quota exceeded: {owner} holds {used} bytes of unexpired staged data "
                f"and this job needs {job.bytes_total} more; the quota is {quota} bytes (free "
                f"space with `hera-stage clean`, or stage fewer files)",
                quota_bytes=quota, used_bytes=used, requested_bytes=int(job.bytes_total))

    return admit


# ----- records of staged folders ---------------------------------------------------------------
def staged_records(db: Database, owner: str, now: dt.datetime | None = None,
                   entries: bool = True) -> list[dict[str, Any]]:
    """The records of ``owner``'s staged folders not cleaned yet, oldest first (local folders
    only: the ``contents`` method's folders are the contents manager's). ``entries``: with
    what each folder must hold (for ``cleaner``); without, only the counts."""
    now = now or utcnow()
    with db.read() as s:
        jobs = list(s.scalars(select(JobRow).where(JobRow.owner == owner, JobRow.kind == "stage",
                                                JobRow.method != "contents").order_by(JobRow.id)))
        folders: dict[str, dict[str, Any]] = {}
        for job in jobs:
            options = job.options or {}
            if options.get("cleaned_at"):
                continue
            record = folders.setdefault(job.destination, {
                "destination": job.destination, "jobs": [], "active": False, "made": False,
                "pin": None, "expires_at": None, "never_expires": False, "bytes": 0,
                "files": 0, "created_at": iso(job.created_at), "finished_at": None,
                "entries": {}})
            record["jobs"].append(job.id)
            record["active"] |= job.state in ACTIVE_JOB_STATES
            record["made"] |= bool(options.get("made"))
            if options.get("pin"):
                record["pin"] = list(options["pin"])  # the latest job's: the folder now
            until = expires_at(options)
            if until is None:
                record["never_expires"] = True
            elif record["expires_at"] is None or until > record["expires_at"]:
                record["expires_at"] = until
            record["finished_at"] = iso(job.finished_at)
            done = s.execute(select(JobItem.dest_path, JobItem.size, JobItem.is_directory,
                                    JobItem.checksums, JobItem.source_path)
                             .where(JobItem.job_id == job.id, JobItem.state == ItemState.DONE))
            for path, size, is_dir, checksums, source in done:
                algorithm = preferred_algorithm(checksums)
                record["entries"][path] = {
                    "path": path, "size": int(size), "directory": bool(is_dir),
                    "algorithm": algorithm, "checksum": checksums[algorithm],
                    "link": source if job.method == "symlink" else None}
    out = []
    for record in folders.values():
        until = None if record.pop("never_expires") else record["expires_at"]
        record["expires_at"] = iso(until)
        record["expired"] = until is not None and until <= now and not record["active"]
        staged = list(record["entries"].values())
        record["files"] = len(staged)
        record["bytes"] = sum(e["size"] for e in staged)
        record["entries"] = staged if entries else None
        out.append(record)
    return out


def usage(db: Database, owner: str, quota: int) -> dict[str, Any]:
    """How much staged data ``owner`` holds: unexpired (what the quota counts) and the quota."""
    with db.read() as s:
        used = staged_use(s, owner)
    return {"unexpired_bytes": used, "quota_bytes": quota or None}


def mark_cleaned(db: Database, owner: str, job_ids: Iterable[int]) -> list[int]:
    """Record that the folders of these jobs of ``owner`` were cleaned (finished jobs only);
    returns the ids marked. Their data no longer counts, and they are no longer listed."""
    ids = sorted({int(j) for j in job_ids})
    marked = []
    stamp = iso(utcnow())
    with db.write() as s:
        for job in s.scalars(select(JobRow).where(JobRow.id.in_(ids), JobRow.owner == owner,
                                               JobRow.kind == "stage",
                                               JobRow.state.not_in(ACTIVE_JOB_STATES))):
            job.options = {**(job.options or {}), "cleaned_at": stamp}
            marked.append(job.id)
    return marked


def check_forgettable(job: Mapping[str, Any]) -> None:
    """Conflict when forgetting ``job`` (its JSON) would drop staged data the quota counts
    (a stage job whose folder is not cleaned and not expired)."""
    options = job.get("options") or {}
    until = expires_at(options)
    if (job.get("kind") == "stage" and job.get("bytes_done") and not options.get("cleaned_at")
            and (until is None or until > utcnow())):
        raise Conflict(
            f"job {job['id']} staged {job['bytes_done']} bytes into {job['destination']} that "
            f"count towards your staging quota: clean the folder first (hera-stage clean "
            f"{job['destination']}), or forget the job once it has expired", job_id=job["id"])


def note_taken(db: Database, job_id: int, worker_id: str, pin: list[int], made: bool) -> None:
    """Record the folder a site's recorded job took, as the user's worker that holds the job
    took it: its pin (device and inode), which every later attempt's worker checks the folder
    against (``targets.LocalTarget.acquire``), and ``made``. The pin is kept once taken:
    another is refused (Conflict), so no later attempt moves the job to another folder (a
    retry lets the worker take the folder afresh, ``stage_kind.StageKind.retake``)."""
    with db.write() as s:
        job = s.get(JobRow, job_id, with_for_update=True)
        if job is None or job.worker_id != worker_id:
            raise Conflict(f"job {job_id} is not held by worker {worker_id}", job_id=job_id)
        options = dict(job.options or {})
        if options.get("pin") not in (None, pin):
            raise Conflict(f"job {job_id} took another folder at {job.destination}; it is "
                           f"not taken again", job_id=job_id)
        options["pin"] = pin
        if made:
            options["made"] = True
        if options != job.options:
            job.options = options


def check_pin(value: object) -> list[int]:
    """A folder's pin as a worker reports it: [device, inode], InvalidRequest else."""
    if not (isinstance(value, list) and len(value) == 2
            and all(type(n) is int and 0 <= n < 2**64 for n in value)):
        raise InvalidRequest("'pin' must be [device, inode], two integers")
    return list(value)


def note_made(db: Database, job_id: int) -> None:
    """Record that ``job_id`` made its folder (a user's worker says so when it finishes)."""
    with db.write() as s:
        job = s.get(JobRow, job_id)
        if job is not None and not (job.options or {}).get("made"):
            job.options = {**(job.options or {}), "made": True}
