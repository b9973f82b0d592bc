"""REST for staged data's life cycle: ``GET staged`` (the user's staged folders: sizes,
expiry, whether still intact, and how much they hold where), ``POST staged/clean`` (remove
expired or chosen staged folders; ``dry_run``), and the records a user's server in site mode
asks the site service for (``GET staged/records``, ``POST staged/records/cleaned``).

Folders are read and removed only by the user's own server (``jobs.cleaner``, as the user): a
single-user server here; in site mode ``api/forward.py`` serves ``staged`` and
``staged/clean`` itself with ``clean_with`` and asks the service only for the records. A site
service answers ``staged`` from its records alone (``state: "unchecked"``) and refuses
``staged/clean``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..core import Core
from ..errors import InvalidRequest
from ..jobs import cleaner, lifecycle
from ..states import FolderState
from .base import BaseHandler
from .models import StagedCleanedRequest, StagedCleanRequest

#: The routes a user's server in site mode serves itself (folder work), not the service.
LOCAL_ROUTES = ("staged", "staged/clean")
# On a site service every route here needs the scope stage (``site/auth.py``).


def clean_request(body: dict[str, Any]) -> dict[str, Any]:
    """A ``POST staged/clean`` body (``models.StagedCleanRequest``) as ``clean_with`` reads
    it: ``expired``, ``folders``, ``dry_run``."""
    return StagedCleanRequest.parse(body).model_dump()


def clean_with(records: list[dict[str, Any]], request: dict[str, Any],
               allowed_roots: Sequence[str], root_dir: str) -> tuple[dict[str, Any], list[int]]:
    """The folder work of a clean, from ``records`` (this process runs as the user)."""
    chosen = cleaner.select_folders(records, expired=request["expired"],
                                    folders=request["folders"], root_dir=root_dir)
    return cleaner.clean(chosen, allowed_roots, dry_run=request["dry_run"])


def staged_view(core: Core) -> dict[str, Any]:
    use = lifecycle.usage(core.catalogue.db, core.owner, core.staging_quota_bytes)
    if core.site_mode:  # the service does not read users' folders
        records = lifecycle.staged_records(core.catalogue.db, core.owner, entries=False)
        return {"folders": [{**r, "state": FolderState.UNCHECKED} for r in records],
                "total_bytes": sum(r["bytes"] for r in records), **use}
    return cleaner.listing(lifecycle.staged_records(core.catalogue.db, core.owner),
                           core.allowed_roots, use)


def clean_here(core: Core, body: dict[str, Any]) -> dict[str, Any]:
    request = clean_request(body)
    if core.site_mode:
        raise InvalidRequest("the site service does not touch your folders: clean them from "
                             "your own Jupyter server (its POST staged/clean), which runs as you")
    report, cleaned = clean_with(lifecycle.staged_records(core.catalogue.db, core.owner),
                                 request, core.allowed_roots, core.root_dir)
    lifecycle.mark_cleaned(core.catalogue.db, core.owner, cleaned)
    return report


class StagedHandler(BaseHandler):
    """``GET staged``: the user's staged folders and how much they hold."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.call(staged_view, self.core))


class StagedCleanHandler(BaseHandler):
    """``POST staged/clean`` ``{"expired"?, "folders"?, "dry_run"?}``."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()
        self.reply(await self.call(clean_here, self.core, body))


class StagedRecordsHandler(BaseHandler):
    """``GET staged/records``: the records of the user's staged folders, with what each must
    hold (what a user's server in site mode checks its folders against)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        def run() -> dict[str, Any]:
            core = self.core
            return {"records": lifecycle.staged_records(core.catalogue.db, core.owner),
                    **lifecycle.usage(core.catalogue.db, core.owner, core.staging_quota_bytes)}

        self.reply(await self.call(run))


class StagedCleanedHandler(BaseHandler):
    """``POST staged/records/cleaned`` ``{"jobs": [ids]}``: the user's server cleaned the
    folders of these jobs (of the user's, finished)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        ids = self.body_as(StagedCleanedRequest).jobs

        def run() -> dict[str, Any]:
            core = self.core
            return {"marked": lifecycle.mark_cleaned(core.catalogue.db, core.owner, ids)}

        self.reply(await self.call(run))
