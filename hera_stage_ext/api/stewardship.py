"""REST for stewardship: fixity findings and checks, repair, deletion policies, safe deletion
and offload; thin handlers over ``stewardship.Stewardship``."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..catalogue.naming import validate_name
from ..errors import InvalidRequest
from ..stewardship import Stewardship
from .base import ApiError, BaseHandler
from .params import file_selection, flag


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidRequest(f"'{key}' must be a non-empty string")
    return value


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
        unknown = sorted(set(self.request.query_arguments) - {"state", "store", "limit"})
        if unknown:  # a misspelt filter must not answer the unfiltered default
            raise ApiError(InvalidRequest(f"unknown query parameter(s): {', '.join(unknown)}"))
        states = self.get_arguments("state") or None
        store = self.get_argument("store", None) or None
        try:
            limit = int(self.get_argument("limit", "1000"))
        except ValueError:
            raise ApiError(InvalidRequest("'limit' must be an integer")) from None
        if not 1 <= limit <= self.core.max_search_limit:
            raise ApiError(InvalidRequest(
                f"'limit' must be between 1 and {self.core.max_search_limit}"))
        self.reply(await self.call(self.steward.fsck, states=states, store=store, limit=limit))


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
        body = self.body_json()
        self.reply(await self.call(lambda: self.steward.check(
            validate_name(name), _optional_text(body, "store"))))


class FileRepairHandler(_StewardHandler):
    """``POST files/{name}/repair`` ``{"store"?}``: replace bad copies from a good one here."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        body = self.body_json()
        self.reply(await self.call(lambda: self.steward.repair(
            validate_name(name), _optional_text(body, "store"))))


class DeletionPolicyHandler(_StewardHandler):
    """``POST files/{name}/deletion-policy`` ``{"policy", "store"?, "all"?}``."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        body = self.body_json()

        def run() -> dict[str, Any]:
            return self.steward.set_policy(
                validate_name(name), body.get("policy"), store=_optional_text(body, "store"),
                all_instances=flag(body, "all"))

        self.reply(await self.call(run))


class DeleteInstancesHandler(_StewardHandler):
    """``POST delete-instances`` ``{"names" | "search" | "query", "store"?, "dry_run"?}``:
    delete the copies the deletion rule allows; per file, what happened to each copy."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()

        def run() -> dict[str, Any]:
            selection = file_selection(body)
            store, dry_run = _optional_text(body, "store"), flag(body, "dry_run")
            if selection["names"] is not None:
                files = {validate_name(n): self.steward.delete(n, store=store, dry_run=dry_run)
                         for n in selection["names"]}
                for result in files.values():
                    del result["name"], result["dry_run"]
            else:
                files = self.steward.delete_matching(selection["search"], store=store,
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
        body = self.body_json()

        def run() -> dict[str, Any]:
            source, dest = _optional_text(body, "source"), _optional_text(body, "dest")
            if source is None or dest is None:
                raise InvalidRequest("an offload needs 'source' and 'dest' store names")
            return self.steward.offload(source, dest, wait=flag(body, "wait"))

        self.reply(await self.call(run))
