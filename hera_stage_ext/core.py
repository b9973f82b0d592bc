"""Core: the objects one server extension (or one CLI/worker process) works with, bundled.

The faces receive a ``Core`` and call into it; nothing here knows of tornado. Cross-cutting
checks that are not one module's business (who may call the Librarian RPC, what the server
reports about itself) live here.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import jobs
from .catalogue.catalogue import Catalogue
from .catalogue.ingest import Ingester
from .errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from .jobs.launcher import WorkerLauncher

#: Rows fetched per page when a search is resolved to the names a job will stage.
_RESOLVE_PAGE = 10_000


@dataclass
class Core:
    version: str
    site_name: str
    catalogue: Catalogue
    ingester: Ingester
    allowed_roots: list[str]
    allow_ingest: bool = True
    librarian_authenticators: dict[str, str] = field(default_factory=dict)
    max_search_limit: int = 10_000
    max_rpc_results: int = 100_000
    root_dir: str = "."
    job_log_dir: Path | None = None
    staged_read_only: bool = True
    max_stage_files: int = 1_000_000
    launcher: WorkerLauncher | None = None
    # Whose jobs this server launches and shows: one single-user server belongs to one person
    # (Jupyter's token users are anonymous and new on every request, so they cannot own jobs).
    owner: str = "user"

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "site_name": self.site_name,
            "database": self.catalogue.db.backend,
            "counts": self.catalogue.counts(),
            "allow_ingest": self.allow_ingest,
        }

    def check_ingest_allowed(self) -> None:
        if not self.allow_ingest:
            raise Forbidden("ingest is disabled on this server (c.StagingApp.allow_ingest)")

    def check_limit(self, limit: object) -> int:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidRequest("limit must be an integer")
        if not 1 <= limit <= self.max_search_limit:
            raise InvalidRequest(f"limit must be between 1 and {self.max_search_limit}")
        return limit

    def librarian_source(self, authenticator: object) -> str:
        """The source name an authenticator acts as; Unauthorized if it is not configured.

        Every configured authenticator is compared, in constant time, so the answer's timing
        says nothing about how much of a guess was right.
        """
        if not isinstance(authenticator, str) or not authenticator:
            raise Unauthorized("the request carries no authenticator")
        source = None
        given = authenticator.encode()
        for candidate, name in self.librarian_authenticators.items():
            if hmac.compare_digest(candidate.encode(), given):
                source = name
        if source is None:
            raise Unauthorized("unknown authenticator")
        return source

    # ----- staging ------------------------------------------------------------------------
    def names_matching(self, search: Any) -> list[str]:
        """Every file name a search matches now: what a job launched from it will stage."""
        names: list[str] = []
        cursor = None
        while True:
            page = self.catalogue.search("files", search, limit=_RESOLVE_PAGE, cursor=cursor)
            names += [row["name"] for row in page["results"]]
            if len(names) > self.max_stage_files:
                raise InvalidRequest(
                    f"the search matches more than {self.max_stage_files} files; narrow it")
            cursor = page["next_cursor"]
            if cursor is None:
                return names

    def stage(self, names: Sequence[str], destination: str, *, method: str = "copy",
              search: Any = None, dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        """Launch a staging job owned by this server's user (or, with ``dry_run``, say what it
        would do). A relative destination is taken from the server's root directory."""
        if dry_run:
            return jobs.dry_run_stage(self.catalogue.db, names, destination, method,
                                      self.allowed_roots, base=self.root_dir)
        job = jobs.create_stage_job(
            self.catalogue.db, self.owner, names, destination, method, self.allowed_roots,
            base=self.root_dir, search=search, force=force, read_only=self.staged_read_only,
            log_dir=self.job_log_dir,
        )
        if self.launcher is not None:
            self.launcher.ensure_running()
        return job

    def list_jobs(self) -> list[dict[str, Any]]:
        return jobs.list_jobs(self.catalogue.db, self.owner)

    def job(self, job_id: int) -> dict[str, Any]:
        job = jobs.get_job(self.catalogue.db, job_id)
        if job["owner"] != self.owner:
            # Someone else's job does not exist, as far as this user can tell.
            raise NotFound(f"no job {job_id}")
        return job

    def cancel(self, job_id: int) -> dict[str, Any]:
        self.job(job_id)
        return jobs.cancel_job(self.catalogue.db, job_id)

    def job_log(self, job_id: int, offset: int) -> dict[str, Any]:
        text, next_offset = jobs.read_log(self.job(job_id), offset)
        return {"text": text, "next_offset": next_offset}

    def resume_jobs(self) -> list[int]:
        """At server start: take over jobs whose worker died, and make sure a worker runs
        while any job is unfinished."""
        jobs.reconcile(self.catalogue.db)
        active = jobs.active_job_ids(self.catalogue.db)
        if active and self.launcher is not None:
            self.launcher.ensure_running()
        return active

    def close(self) -> None:
        self.catalogue.db.dispose()
