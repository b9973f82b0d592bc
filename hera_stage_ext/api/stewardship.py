"""REST for stewardship: fixity findings and checks, repair, deletion policies, safe deletion
and offload; thin handlers over ``stewardship.Stewardship``, their bodies read with
``models.py``."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..catalogue.naming import validate_name
from ..stewardship import Stewardship
from .base import BaseHandler
from .models import (
    DeleteInstancesRequest,
    DeletionPolicyRequest,
    FixityQuery,
    OffloadRequest,
    StoreChoice,
)


class _StewardHandler(BaseHandler):
    @property
    def steward(self) -> Stewardship:
        return self.core.stewardship


class FixityHandler(_StewardHandler):
    """``GET fixity?state=bad&state=missing&store=S&limit=N``: copies by what their last check
    found, with a summary of every state."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query_as(FixityQuery, max_search_limit=self.core.max_search_limit)
        self.reply(await self.call(self.steward.fsck, states=list(query.state) or None,
                                   store=query.store or None, limit=query.limit))


class FixityAuditHandler(_StewardHandler):
    """``POST fixity/audit``: one round of the periodic audit now, within its budget."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.reply(await self.call(self.steward.audit_now))


class FileFixityHandler(_StewardHandler):
    """``POST files/{name}/fixity`` ``{"store"?}``: re-hash the file's copies now."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        store = self.body_as(StoreChoice).store
        self.reply(await self.call(lambda: self.steward.check(validate_name(name), store)))


class FileRepairHandler(_StewardHandler):
    """``POST files/{name}/repair`` ``{"store"?}``: replace bad copies from a good one here."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        store = self.body_as(StoreChoice).store
        self.reply(await self.call(lambda: self.steward.repair(validate_name(name), store)))


class DeletionPolicyHandler(_StewardHandler):
    """``POST files/{name}/deletion-policy`` ``{"policy", "store"?, "all"?}``."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        request = self.body_as(DeletionPolicyRequest)

        def run() -> dict[str, Any]:
            return self.steward.set_policy(validate_name(name), request.policy,
                                           store=request.store, all_instances=request.all)

        self.reply(await self.call(run))


class DeleteInstancesHandler(_StewardHandler):
    """``POST delete-instances`` ``{"names" | "search" | "query", "store"?, "dry_run"?}``:
    delete the copies the deletion rule allows; per file, what happened to each copy."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(DeleteInstancesRequest)
        store, dry_run = request.store, request.dry_run

        def run() -> dict[str, Any]:
            if request.names is not None:
                files = {validate_name(n): self.steward.delete(n, store=store, dry_run=dry_run)
                         for n in request.names}
                for result in files.values():
                    del result["name"], result["dry_run"]
            else:
                files = self.steward.delete_matching(request.parsed_search(), store=store,
                                                     dry_run=dry_run)
            return {"dry_run": dry_run, "files": files,
                    "n_deleted": sum(f["n_deleted"] for f in files.values()),
                    "n_kept": sum(f["n_kept"] for f in files.values()),
                    "n_error": sum(f["n_error"] for f in files.values())}

        self.reply(await self.call(run))


class OffloadHandler(_StewardHandler):
    """``POST offload`` ``{"source", "dest", "wait"?}``."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(OffloadRequest)
        self.reply(await self.call(self.steward.offload, request.source, request.dest,
                                   wait=request.wait))
