"""REST for jobs: ``POST stage``, ``POST transfers`` and the ``jobs`` routes, thin handlers over
``Core``.

A server's user sees and controls only their own jobs: the owner is the server's owner
(``c.StagingApp.owner``: the JupyterHub user, else the system user running the server).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..catalogue.query_text import parse_query_text
from ..catalogue.search_parse import parse_search
from ..errors import InvalidRequest
from ..jobs import markers
from .base import ApiError, BaseHandler


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false")
    return value


def _selection(body: dict[str, Any]) -> dict[str, Any]:
    """The files a job request names: exactly one of names, search (JSON) or query (text)."""
    given = [key for key in ("names", "search", "query") if key in body]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of 'names', 'search' (JSON) or 'query' (text)")
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
    return {"names": names, "search": search}


def stage_request(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``POST stage`` body."""
    selection = _selection(body)
    destination = body.get("destination")
    if not isinstance(destination, str) or not destination:
        raise InvalidRequest("'destination' must be a folder (relative to your root directory)")
    method = body.get("method", "copy")
    if not isinstance(method, str):
        raise InvalidRequest("'method' must be a string")
    # ``contents``: a user's server's description of its contents manager (site mode only).
    request = {**selection, "destination": destination, "method": method,
               "dry_run": _bool(body, "dry_run"), "force": _bool(body, "force"),
               "expires_in": body.get("expires_in"), "expires_at": body.get("expires_at"),
               "contents": body.get("contents")}
    if "with_items" in body:  # (a user's server asking the site service: ``forward``)
        request["with_items"] = _bool(body, "with_items")
    return request


def transfer_request(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``POST transfers`` body: the files and the ``peer`` (a configured name)."""
    selection = _selection(body)
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


#: Seconds one read of a job's status answers the polls of that job after it. The worker
#: records progress about once a second, so a poll within this sees nothing the read did not;
#: many pollers of a job (a panel in several tabs, scripts) then cost a few database reads a
#: second, and each poll answered from memory skips the thread-pool hop, whose thread wake-ups
#: cost more CPU than the read itself (load_bench.py).
STATUS_REUSE_SECONDS = 0.25


class JobStatusCache:
    """The replies of ``GET jobs/<id>`` (JSON text) read less than ``reuse_s`` ago, on the
    event loop. Polls arriving while a read runs wait for that read instead of starting
    another. A failed read (no such job, a database error) is not kept. This server's own
    changes to a job (cancel, retry, delete) drop its entry, so they show at once."""

    def __init__(self, reuse_s: float = STATUS_REUSE_SECONDS) -> None:
        self.reuse_s = reuse_s
        self._entries: dict[int, tuple[float, asyncio.Future[str]]] = {}

    async def get(self, job_id: int, read: Callable[[], Awaitable[str]]) -> str:
        now = time.monotonic()
        entry = self._entries.get(job_id)
        if entry is None or now - entry[0] > self.reuse_s:
            if len(self._entries) > 64:  # forget the stale ones, not only this job's
                self._entries = {k: e for k, e in self._entries.items()
                                 if now - e[0] <= self.reuse_s}
            entry = (now, asyncio.ensure_future(read()))
            self._entries[job_id] = entry
            entry[1].add_done_callback(lambda done: self._drop_failed(job_id, done))
        return await asyncio.shield(entry[1])

    def _drop_failed(self, job_id: int, done: asyncio.Future[str]) -> None:
        entry = self._entries.get(job_id)
        if entry is not None and entry[1] is done and (done.cancelled() or done.exception()):
            del self._entries[job_id]

    def forget(self, job_id: int) -> None:
        self._entries.pop(job_id, None)


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
            force = _bool(self.body_json(), "force")
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
