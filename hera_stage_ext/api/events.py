"""Job progress pushed on Jupyter's event bus, so the panel and widgets need not poll hard.

Jobs run in a worker process, so the server learns of progress from the database: once a second
(only while this server's user has unfinished jobs, or one just finished) it reads their rows and
emits one event per job whose progress or state changed. Browsers read the events from
``app.serviceManager.events.stream``; REST polling stays the fallback.

In site mode (``c.StagingApp.site_url``) the server has no database: it asks the site service
for the user's jobs (``GET jobs``, with the user's token) instead, once a second while a job is
unfinished or one just finished, and every ``SiteJobs.idle_every`` seconds otherwise (jobs
launched elsewhere: the CLI on a login node), so hundreds of idle users' servers cost the
service little.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jupyter_events import EventLogger

from ..catalogue.models import utcnow
from ..states import JobState
from .ticker import Ticker

if TYPE_CHECKING:
    from ..core import Core
    from ..jobs.launcher import WorkerLauncher
    from .forward import SiteClient

JOB_PROGRESS_SCHEMA_ID = "https://github.com/hera-stage-ext/events/job-progress"
JOB_PROGRESS_SCHEMA: dict[str, Any] = {
    "$id": JOB_PROGRESS_SCHEMA_ID,
    "version": "1",
    "title": "hera_stage_ext job progress",
    "description": "A staging job changed state or made progress.",
    "type": "object",
    "required": ["id", "state", "files_total", "files_done", "bytes_total", "bytes_done"],
    "properties": {
        "id": {"type": "integer"},
        "kind": {"type": "string"},
        "state": {"type": "string"},
        "destination": {"type": "string"},
        "files_total": {"type": "integer"},
        "files_done": {"type": "integer"},
        "files_failed": {"type": "integer"},
        "files_skipped": {"type": "integer"},
        "bytes_total": {"type": "integer"},
        "bytes_done": {"type": "integer"},
        "bytes_moving": {"type": "integer"},
        "rate_bytes_per_s": {"type": ["number", "null"]},
        "eta_s": {"type": ["number", "null"]},
    },
}
_FIELDS = tuple(JOB_PROGRESS_SCHEMA["properties"])
_CHANGES = ("state", "files_done", "files_failed", "files_skipped", "bytes_done",
            "bytes_moving")


#: Seconds after its end a finished job is still reported (its last event is not missed).
RECENT_SECONDS = 60.0


class JobProgressNotifier:
    def __init__(self, core: Core | None, event_logger: EventLogger, interval_s: float = 1.0,
                 *, site_jobs: SiteJobs | None = None) -> None:
        """Reads ``core``'s database, or (site mode) asks the service through ``site_jobs``."""
        self.core = core
        self.event_logger = event_logger
        self._seen: dict[int, tuple[Any, ...]] = {}
        work: Callable[[], Any] = self._changed_jobs
        if site_jobs is not None:
            self.site_jobs = site_jobs
            work = self._changed_site_jobs
        self._ticker = Ticker("job progress notifier", interval_s, work, self._emit)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def _emit(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            self.event_logger.emit(schema_id=JOB_PROGRESS_SCHEMA_ID,
                                   data={k: job[k] for k in _FIELDS if k in job})

    def _changed_jobs(self) -> list[dict[str, Any]]:
        assert self.core is not None
        jobs = self.core.active_or_recent_jobs(RECENT_SECONDS)
        if self.core.launcher is not None and any(j["state"] == JobState.QUEUED for j in jobs):
            # A job launched while the worker was exiting (idle) finds no worker: start one
            # once that one is gone (a no-op while it lives).
            self.core.launcher.ensure_running()
        return self._changes(jobs)

    async def _changed_site_jobs(self) -> list[dict[str, Any]]:
        return self._changes(await self.site_jobs.read())

    def _changes(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        changed = []
        for job in jobs:
            key = tuple(job.get(k) for k in _CHANGES)
            if self._seen.get(job["id"]) != key:
                self._seen[job["id"]] = key
                changed.append(job)
        return changed


class SiteJobs:
    """The user's unfinished and recently finished jobs, read from the site service."""

    def __init__(self, site: SiteClient, launcher: WorkerLauncher | None,
                 idle_every: int = 30) -> None:
        self.site = site
        self.launcher = launcher
        self.idle_every = idle_every
        self._skip = 0  # ticks left before the next read while nothing runs

    def wake(self) -> None:
        """Read at the next tick (a job was launched here)."""
        self._skip = 0

    async def read(self) -> list[dict[str, Any]]:
        if self._skip > 0:
            self._skip -= 1
            return []
        since = (utcnow() - dt.timedelta(seconds=RECENT_SECONDS)).isoformat() + "Z"
        reply = await self.site.api("GET", "jobs")
        jobs = [job for job in reply.get("jobs", [])
                if job.get("finished_at") is None or job["finished_at"] >= since]
        self._skip = 0 if jobs else self.idle_every - 1
        if self.launcher is not None and any(
                job["state"] == JobState.QUEUED and job.get("kind", "stage") == "stage"
                for job in jobs):
            # The user's worker runs the user's staging jobs (the site's worker the rest).
            await _in_thread(self.launcher.ensure_running)
        return jobs


def _in_thread(fn: Callable[[], Any]) -> Awaitable[Any]:
    return asyncio.get_running_loop().run_in_executor(None, fn)
