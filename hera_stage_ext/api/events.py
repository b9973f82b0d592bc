"""Job progress pushed on Jupyter's event bus, so the panel and widgets need not poll hard.

Jobs run in a worker process, so the server learns of progress from the database: once a second
(only while this server's user has unfinished jobs, or one just finished) it reads their rows and
emits one event per job whose progress or state changed. Browsers read the events from
``app.serviceManager.events.stream``; REST polling stays the fallback.
"""

from __future__ import annotations

from typing import Any

from jupyter_events import EventLogger

from ..core import Core
from .ticker import Ticker

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
        "rate_bytes_per_s": {"type": ["number", "null"]},
        "eta_s": {"type": ["number", "null"]},
    },
}
_FIELDS = tuple(JOB_PROGRESS_SCHEMA["properties"])
_CHANGES = ("state", "files_done", "files_failed", "files_skipped", "bytes_done")


class JobProgressNotifier:
    def __init__(self, core: Core, event_logger: EventLogger, interval_s: float = 1.0) -> None:
        self.core = core
        self.event_logger = event_logger
        self._seen: dict[int, tuple[Any, ...]] = {}
        self._ticker = Ticker("job progress notifier", interval_s, self._changed_jobs,
                              self._emit)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def _emit(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            self.event_logger.emit(schema_id=JOB_PROGRESS_SCHEMA_ID,
                                   data={k: job[k] for k in _FIELDS if k in job})

    def _changed_jobs(self) -> list[dict[str, Any]]:
        changed = []
        jobs = self.core.active_or_recent_jobs()
        if self.core.launcher is not None and any(j["state"] == "queued" for j in jobs):
            # A job launched while the worker was exiting (idle) finds no worker: start one
            # once that one is gone (a no-op while it lives).
            self.core.launcher.ensure_running()
        for job in jobs:
            key = tuple(job[k] for k in _CHANGES)
            if self._seen.get(job["id"]) != key:
                self._seen[job["id"]] = key
                changed.append(job)
        return changed
