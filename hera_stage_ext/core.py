"""Core: the objects one server extension (or one CLI/worker process) works with, bundled.

The faces receive a ``Core`` and call into it; nothing here knows of tornado. Cross-cutting
checks that are not one module's business (who may call the Librarian RPC, what the server
reports about itself) live here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import jobs
from .catalogue.catalogue import Catalogue
from .catalogue.ingest import Ingester
from .catalogue.models import utcnow
from .errors import Forbidden, InvalidRequest, NotFound, StagingError, Unauthorized
from .jobs import lifecycle
from .jobs.contents import describe_manager
from .jobs.kinds import KindRegistry
from .jobs.launcher import WorkerLauncher
from .jobs.models import AuditEntry
from .jobs.recorded import dry_run_recorded, ensure_recall, recall_jobs, record_stage_job
from .standard_kinds import standard_kinds
from .transfer.transfer_kind import create_transfer_job, peer_destination
from .transfer.peers import PeerRegistry
from .transfer.receiver import Receiver
from .transfer.upload import DEFAULT_BATCH, create_upload_job

log = logging.getLogger("hera_stage_ext")


@dataclass
class Core:
    version: str
    site_name: str
    catalogue: Catalogue
    ingester: Ingester
    allowed_roots: list[str]
    allow_ingest: bool = True
    librarian_authenticators: dict[str, str] = field(default_factory=dict)
    max_rpc_results: int = 100_000
    root_dir: str = "."
    job_log_dir: Path | None = None
    staged_read_only: bool = True
    max_stage_files: int = 1_000_000
    launcher: WorkerLauncher | None = None
    # The server's contents manager: the ``contents`` method writes through a copy of it.
    contents_manager: Any = None
    # Whose jobs this server launches and shows: one single-user server belongs to one person
    # (Jupyter's token users are anonymous and new on every request, so they cannot own jobs).
    owner: str = "user"
    # Site-to-site transfers: the peers (both directions) and the receiving side's pulls.
    peers: PeerRegistry = field(default_factory=lambda: PeerRegistry("site"))
    receiver: Receiver | None = None
    # Bulk upload to a peer: the local store the files are catalogued in first.
    upload_store: str = ""
    # Fixity, repair, safe deletion and offload (stewardship.Stewardship).
    stewardship: Any = None
    # A site service (``hera-stage site``): one Core per request (``for_user``), owned by the
    # request's authenticated user; stage jobs are recorded without touching their folder.
    site_mode: bool = False
    # What this request's user may do (site mode): scope names such as "read", "stage",
    # "admin"; None: everything (a single-user server's owner).
    scopes: frozenset[str] | None = None
    # Staged data's life cycle (jobs/lifecycle.py): a launch's default expiry (0: none) and
    # each user's quota of unexpired staged bytes (0: none).
    staged_expiry_seconds: float = 0.0
    staging_quota_bytes: int = 0
    # The job kinds a cancel or a retry of a job no worker holds hands the job to (the
    # server's composition root passes its registry).
    kinds: KindRegistry = field(default_factory=standard_kinds)

    @property
    def max_search_limit(self) -> int:
        """Largest page of a search: the catalogue's (``c.StagingApp.max_search_limit``)."""
        return self.catalogue.max_search_limit

    def for_user(self, user: str, scopes: frozenset[str]) -> Core:
        """This core for one request of ``user`` (site mode): their jobs, their scopes."""
        return dataclasses.replace(self, owner=user, scopes=scopes)

    @property
    def is_admin(self) -> bool:
        """Whether this request sees and controls every user's jobs (scope admin)."""
        return self.scopes is not None and "admin" in self.scopes

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
        names = self.catalogue.names_matching(search, self.max_stage_files)
        if len(names) > self.max_stage_files:
            raise InvalidRequest(
                f"the search matches more than {self.max_stage_files} files; narrow it")
        return names

    def stage(
        self, destination: str, *, names: Sequence[str] | None = None, search: Any = None,
        method: str = "copy", dry_run: bool = False, force: bool = False, via: str = "rest",
        for_user: str | None = None, with_items: bool = False, expires_in: Any = None,
        expires_at: Any = None, contents: Any = None,
    ) -> dict[str, Any]:
        """Launch a staging job of ``names``, or of what ``search`` matches now, owned by this
        server's user (with ``dry_run``, only say what it would do). A relative destination is
        taken from the server's root directory. ``for_user``, when a request names the user it
        stages for, must be this server's owner. Every request is audited, refused ones too.
        ``with_items`` (site mode, a dry run): the items too, for the user's server to look
        at the destination (``preview``). ``expires_in``/``expires_at``: when the staged folder
        may be cleaned (``lifecycle``). ``contents``: on a site service, the user's server's
        description of its contents manager (the ``contents`` method); a single-user server
        describes its own."""
        asked = {"search": search} if names is None else {"names": list(names)[:100],
                                                          "count": len(names)}
        action = "dry-run" if dry_run else "stage"
        try:
            if for_user is not None and for_user != self.owner:
                raise Forbidden(f"this server stages for {self.owner!r} only, not {for_user!r}")
            if names is None:
                names = self.names_matching(search)
                if not names:
                    raise InvalidRequest("the search matches no file: nothing to stage")
            expiry = lifecycle.expiry_options(expires_in, expires_at, self.staged_expiry_seconds)
            admit = lifecycle.quota_admission(self.staging_quota_bytes, self.owner)
            if self.site_mode:
                # The user's server resolved and confined the destination; the user's worker
                # checks it again and takes the folder. The service never touches it.
                result = (dry_run_recorded(self.catalogue.db, names, destination, method,
                                           with_items, contents)
                          if dry_run else record_stage_job(
                              self.catalogue.db, self.owner, names, destination, method,
                              search=search, read_only=self.staged_read_only,
                              log_dir=self.job_log_dir, contents=contents, options=expiry,
                              admit=admit))
            else:
                own = (describe_manager(self.contents_manager)
                       if method == "contents" else None)
                result = (jobs.dry_run_stage(self.catalogue.db, names, destination, method,
                                             self.allowed_roots, base=self.root_dir,
                                             contents=own)
                          if dry_run else jobs.create_stage_job(
                              self.catalogue.db, self.owner, names, destination, method,
                              self.allowed_roots, base=self.root_dir, search=search,
                              force=force, read_only=self.staged_read_only,
                              log_dir=self.job_log_dir, contents=own, options=expiry,
                              admit=admit))
        except StagingError as exc:
            self.audit(via, for_user, action, destination, method, asked, "refused",
                       exc.message)
            raise
        job_id = None if dry_run else result["id"]
        self.audit(via, for_user, action, destination, method, asked, "accepted", "", job_id)
        if job_id is not None and self.launcher is not None and (
                not self.site_mode or recall_jobs(self.catalogue.db, job_id, active=True)):
            # (Site mode: the user's worker runs it; the site's worker recalls its cold files.)
            self.launcher.ensure_running()
        return result

    def transfer(self, peer: str, *, names: Sequence[str] | None = None, search: Any = None,
                 via: str = "rest") -> dict[str, Any]:
        """Launch a job sending ``names`` (or what ``search`` matches now) to ``peer``; audited
        like staging requests, refused ones too."""
        asked = {"search": search} if names is None else {"names": list(names)[:100],
                                                          "count": len(names)}
        destination = peer_destination(peer)
        try:
            if names is None:
                names = self.names_matching(search)
                if not names:
                    raise InvalidRequest("the search matches no file: nothing to transfer")
            result = create_transfer_job(self.catalogue.db, self.owner, names, self.peers, peer,
                                         search=search, log_dir=self.job_log_dir)
        except StagingError as exc:
            self.audit(via, None, "transfer", destination, "transfer", asked, "refused",
                       exc.message)
            raise
        self.audit(via, None, "transfer", destination, "transfer", asked, "accepted", "",
                   result["id"])
        if self.launcher is not None:
            self.launcher.ensure_running()
        return result

    def upload(self, directory: str, glob: str, *, store: str | None = None,
               peer: str | None = None, batch: int = DEFAULT_BATCH, parallel: int | None = None,
               manifest: str | None = None, via: str = "rest") -> dict[str, Any]:
        """Launch a bulk upload of what ``glob`` matches in ``directory`` into ``store`` (or to
        ``peer``, through ``upload_store``) with its manifest; audited like staging."""
        asked = {"directory": directory, "glob": glob, "store": store, "peer": peer}
        target = f"peer:{peer}" if peer else f"store:{store}"
        try:
            self.check_ingest_allowed()  # an upload registers files
            result = create_upload_job(
                self.catalogue.db, self.owner, directory, glob, self.allowed_roots, store=store,
                peer=peer, registry=self.peers, upload_store=self.upload_store,
                base=self.root_dir, batch=batch, parallel=parallel, manifest=manifest,
                read_only=self.staged_read_only, log_dir=self.job_log_dir)
        except StagingError as exc:
            self.audit(via, None, "upload", target, "upload", asked, "refused", exc.message)
            raise
        self.audit(via, None, "upload", target, "upload", asked, "accepted", "", result["id"])
        if self.launcher is not None:
            self.launcher.ensure_running()
        return result

    def audit(self, via: str, for_user: str | None, action: str, destination: str, method: str,
              asked: dict[str, Any], outcome: str, reason: str, job_id: int | None = None
              ) -> None:
        """Record a launch request in the audit table (and the server's log): who asked (the
        owner, or ``for_user``), through which face (``via``), what (``asked``), and whether it
        was ``accepted`` (its ``job_id``) or ``refused`` (``reason``)."""
        user = for_user or self.owner
        log.info("audit: %s %s by %s via %s into %r (%s): %s%s%s", action, method, user, via,
                 destination, _describe(asked), outcome, f" job {job_id}" if job_id else "",
                 f": {reason}" if reason else "")
        with self.catalogue.db.write() as s:
            s.add(AuditEntry(via=via, user=user, action=action, destination=str(destination),
                             method=str(method), request=asked, outcome=outcome,
                             reason=reason, job_id=job_id))

    def list_jobs(self) -> list[dict[str, Any]]:
        return [job for job in jobs.list_jobs(self.catalogue.db,
                                              None if self.is_admin else self.owner)
                if self.is_admin or job["kind"] not in SITE_KINDS]

    def active_or_recent_jobs(self, within_s: float = 60.0) -> list[dict[str, Any]]:
        """This user's unfinished jobs and those that finished in the last ``within_s``."""
        since = (utcnow() - dt.timedelta(seconds=within_s)).isoformat() + "Z"
        return [job for job in jobs.list_jobs(self.catalogue.db, self.owner, limit=50)
                if (job["finished_at"] is None or job["finished_at"] >= since)
                and job["kind"] not in SITE_KINDS]

    def job(self, job_id: int) -> dict[str, Any]:
        job = jobs.get_job(self.catalogue.db, job_id)
        if job["owner"] != self.owner and not self.is_admin:
            # Someone else's job does not exist, as far as this user can tell.
            raise NotFound(f"no job {job_id}")
        return job

    def _controlled(self, job_id: int) -> dict[str, Any]:
        """A job this request may cancel, retry or forget: its own (or any, for an admin),
        of a kind its scopes launch (stage, transfer, ingest for uploads)."""
        job = self.job(job_id)
        needed = KIND_SCOPES.get(job["kind"], "admin")
        if self.scopes is not None and not self.is_admin and needed not in self.scopes:
            raise Forbidden(f"job {job_id} is a {job['kind']} job: controlling it needs the "
                            f"scope custom:hera-stage:{needed}")
        return job

    def cancel(self, job_id: int) -> dict[str, Any]:
        self._controlled(job_id)
        result = jobs.cancel_job(self.catalogue.db, job_id, self.kinds)
        for recall_id in recall_jobs(self.catalogue.db, job_id, active=True):
            jobs.cancel_job(self.catalogue.db, recall_id, self.kinds)  # (site mode: its recall stops too)
        return result

    def retry(self, job_id: int, force: bool = False) -> dict[str, Any]:
        """Queue again what a finished job did not stage (its failed and unfinished files)."""
        job = self._controlled(job_id)
        result = jobs.retry_job(self.catalogue.db, job_id, self.kinds, force=force,
                                       allowed_roots=self.allowed_roots, actor=self.owner)
        recalls = (self.site_mode and job["kind"] == "stage"
                   and ensure_recall(self.catalogue.db, job_id, self.job_log_dir) is not None)
        if self.launcher is not None and (recalls or not (self.site_mode
                                                          and job["kind"] == "stage")):
            self.launcher.ensure_running()
        return result

    def forget(self, job_id: int) -> dict[str, Any]:
        """Delete a finished job and its log (not what it staged). Under a staging quota, not
        while its staged data counts (it would stop counting, and stay)."""
        job = self._controlled(job_id)
        if self.staging_quota_bytes > 0:
            lifecycle.check_forgettable(job)
        result = jobs.forget_job(self.catalogue.db, job_id)
        for recall_id in recall_jobs(self.catalogue.db, job_id, active=False):
            jobs.forget_job(self.catalogue.db, recall_id)  # (site mode: its recall jobs)
        return result

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
        if self.receiver is not None:
            self.receiver.close()
        self.catalogue.db.dispose()


#: The scope (site mode) that launches, and so controls, each kind of job (others: admin).
KIND_SCOPES = {"stage": "stage", "transfer": "transfer", "upload": "ingest"}
#: Kinds of jobs the site runs for a user's job (a stage job's recall), listed to admins only:
#: a user follows, cancels and retries the stage job.
SITE_KINDS = ("recall",)


def _describe(asked: dict[str, Any]) -> str:
    if "names" in asked:
        return f"{asked['count']} name(s)"
    if "glob" in asked:
        return f"{asked['glob']!r} in {asked['directory']!r}"
    return "search " + json.dumps(asked["search"])[:200]
