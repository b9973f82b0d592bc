"""REST for jobs: ``POST stage``, ``POST transfers`` and the ``jobs`` routes, thin handlers over
``Core``.

A server's user sees and controls only their own jobs: the owner is the server's owner
(``c.StagingApp.owner``: the JupyterHub user, else the system user running the server).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import InvalidRequest
from ..jobs import markers
from .base import ApiError, BaseHandler
from .params import file_selection, flag


def stage_request(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``POST stage`` body."""
    selection = file_selection(body)
    destination = body.get("destination")
    if not isinstance(destination, str) or not destination:
        raise InvalidRequest("'destination' must be a folder (relative to your root directory)")
    method = body.get("method", "copy")
    if not isinstance(method, str):
        raise InvalidRequest("'method' must be a string")
    # ``contents``: a user's server's description of its contents manager (site mode only).
    request = {**selection, "destination": destination, "method": method,
               "dry_run": flag(body, "dry_run"), "force": flag(body, "force"),
               "expires_in": body.get("expires_in"), "expires_at": body.get("expires_at"),
               "contents": body.get("contents")}
    if "with_items" in body:  # (a user's server asking the site service: ``forward``)
        request["with_items"] = flag(body, "with_items")
    return request


def transfer_request(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``POST transfers`` body: the files and the ``peer`` (a configured name)."""
    selection = file_selection(body)
    peer = body.get("peer")
    if not isinstance(peer, str) or not peer:
        raise InvalidRequest("'peer' must name a configured peer (GET peers lists them)")
    return {**selection, "peer": peer}


class StageHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()

        def run() -> dict[str, Any]:
            request = stage_request(body)
            return self.core.stage(request.pop("destination"), **request)

        result = await self.call(run)
        self.reply(result, status=200 if body.get("dry_run") else 202)


class TransfersHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()

        def run() -> dict[str, Any]:
            request = transfer_request(body)
            return self.core.transfer(request.pop("peer"), **request)

        self.reply(await self.call(run), status=202)


#: Largest job id (and log offset) a request may name: the database's signed 64-bit integer.
_MAX_INT = 2**63 - 1


def _job_id(text: str) -> int:
    # isascii: str.isdigit() is also true of '²' and other digits int() refuses.
    if not (text.isascii() and text.isdigit()) or int(text) > _MAX_INT:
        raise ApiError(InvalidRequest(f"a job id is a number from 0 to {_MAX_INT}, not {text!r}"))
    return int(text)


def with_marker(job: dict[str, Any], look: bool = True) -> dict[str, Any]:
    """``job`` with ``marker``: the STAGING-* file in its destination folder now (what the
    Librarian's ``--wait`` script sees), or None. Read on GET only: a few stats per job.
    A site service does not ``look`` (users' folders are not its to read): None."""
    destination = job.get("destination") or ""
    job["marker"] = (markers.present(Path(destination))
                     if look and os.path.isabs(destination) else None)
    return job


class JobsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        core = self.core
        self.reply({"jobs": await self.call(
            lambda: [with_marker(job, not core.site_mode) for job in core.list_jobs()])})


class JobHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        number = _job_id(job_id)
        core = self.core
        text = await self.job_status.get(number, lambda: self.call(
            lambda: json.dumps(with_marker(core.job(number), not core.site_mode))))
        self.reply_text(text)

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        number = _job_id(job_id)
        try:
            self.reply(await self.call(self.core.forget, number))
        finally:
            self.job_status.forget(number)


class JobCancelHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        number = _job_id(job_id)
        try:
            self.reply(await self.call(self.core.cancel, number))
        finally:
            self.job_status.forget(number)


class JobRetryHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        try:
            force = flag(self.body_json(), "force")
        except InvalidRequest as exc:
            raise ApiError(exc) from exc
        number = _job_id(job_id)
        try:
            self.reply(await self.call(self.core.retry, number, force), status=202)
        finally:
            self.job_status.forget(number)


class JobLogHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        offset_text = self.get_query_argument("offset", "0")
        if not (offset_text.isascii() and offset_text.isdigit()) or int(offset_text) > _MAX_INT:
            raise ApiError(InvalidRequest("'offset' must be a non-negative integer"))
        self.reply(await self.call(self.core.job_log, _job_id(job_id), int(offset_text)))
