"""REST for staging: ``POST stage`` and the ``jobs`` routes, thin handlers over ``Core``.

A server's user sees and controls only their own jobs: the owner is the server's owner
(``c.StagingApp.owner``: the JupyterHub user, else the system user running the server).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..catalogue.query_text import parse_query_text
from ..catalogue.search import parse_search
from ..errors import InvalidRequest
from ..jobs import markers
from .base import ApiError, BaseHandler


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false")
    return value


def stage_request(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``POST stage`` body: exactly one of names, search (JSON) or query (text)."""
    given = [key for key in ("names", "search", "query") if key in body]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of 'names', 'search' (JSON) or 'query' (text)")
    destination = body.get("destination")
    if not isinstance(destination, str) or not destination:
        raise InvalidRequest("'destination' must be a folder (relative to your root directory)")
    method = body.get("method", "copy")
    if not isinstance(method, str):
        raise InvalidRequest("'method' must be a string")
    names = body.get("names")
    if names is not None and (
        not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
    ):
        raise InvalidRequest("'names' must be a non-empty list of file names")
    search = None
    if "search" in body:
        search = parse_search(body["search"])
    elif "query" in body:
        if not isinstance(body["query"], str):
            raise InvalidRequest("'query' must be a string")
        search = parse_query_text(body["query"])
    return {"names": names, "search": search, "destination": destination, "method": method,
            "dry_run": _bool(body, "dry_run"), "force": _bool(body, "force")}


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


#: Largest job id (and log offset) a request may name: the database's signed 64-bit integer.
_MAX_INT = 2**63 - 1


def _job_id(text: str) -> int:
    # isascii: str.isdigit() is also true of '²' and other digits int() refuses.
    if not (text.isascii() and text.isdigit()) or int(text) > _MAX_INT:
        raise ApiError(InvalidRequest(f"a job id is a number from 0 to {_MAX_INT}, not {text!r}"))
    return int(text)


def with_marker(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` with ``marker``: the STAGING-* file in its destination folder now (what the
    Librarian's ``--wait`` script sees), or None. Read on GET only: a few stats per job."""
    destination = job.get("destination") or ""
    job["marker"] = markers.present(Path(destination)) if os.path.isabs(destination) else None
    return job


class JobsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"jobs": await self.call(
            lambda: [with_marker(job) for job in self.core.list_jobs()])})


class JobHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        number = _job_id(job_id)
        self.reply(await self.call(lambda: with_marker(self.core.job(number))))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        self.reply(await self.call(self.core.forget, _job_id(job_id)))


class JobCancelHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        self.reply(await self.call(self.core.cancel, _job_id(job_id)))


class JobRetryHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        try:
            force = _bool(self.body_json(), "force")
        except InvalidRequest as exc:
            raise ApiError(exc) from exc
        self.reply(await self.call(self.core.retry, _job_id(job_id), force), status=202)


class JobLogHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        offset_text = self.get_query_argument("offset", "0")
        if not (offset_text.isascii() and offset_text.isdigit()) or int(offset_text) > _MAX_INT:
            raise ApiError(InvalidRequest("'offset' must be a non-negative integer"))
        self.reply(await self.call(self.core.job_log, _job_id(job_id), int(offset_text)))
