"""REST for jobs: ``POST stage``, ``POST transfers`` and the ``jobs`` routes, thin handlers over
``Core``; their bodies are ``models.StageRequest``, ``TransferRequest`` and ``RetryRequest``.

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
from .base import ApiHttpError, BaseHandler
from .models import MAX_ID, JobLogQuery, RetryRequest, StageRequest, TransferRequest


class StageHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(StageRequest)
        options = request.model_dump(exclude={"names", "search", "query", "destination"})

        def run() -> dict[str, Any]:
            return self.core.stage(request.destination, names=request.names,
                                   search=request.parsed_search(), **options)

        result = await self.call(run)
        self.reply(result, status=200 if request.dry_run else 202)


class TransfersHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(TransferRequest)

        def run() -> dict[str, Any]:
            return self.core.transfer(request.peer, names=request.names,
                                      search=request.parsed_search())

        self.reply(await self.call(run), status=202)


def parse_job_id(text: str) -> int:
    # isascii: str.isdigit() is also true of '²' and other digits int() refuses.
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
        raise ApiHttpError(InvalidRequest(f"a job id is a number from 0 to {MAX_ID}, not {text!r}"))
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
        number = parse_job_id(job_id)
        core = self.core
        text = await self.job_status.get(number, lambda: self.call(
            lambda: json.dumps(with_marker(core.job(number), not core.site_mode))))
        self.reply_text(text)

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        number = parse_job_id(job_id)
        try:
            self.reply(await self.call(self.core.forget, number))
        finally:
            self.job_status.forget(number)


class JobCancelHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        number = parse_job_id(job_id)
        try:
            self.reply(await self.call(self.core.cancel, number))
        finally:
            self.job_status.forget(number)


class JobRetryHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        force = self.body_as(RetryRequest).force
        number = parse_job_id(job_id)
        try:
            self.reply(await self.call(self.core.retry, number, force), status=202)
        finally:
            self.job_status.forget(number)


class JobLogHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        offset = self.query_as(JobLogQuery).offset
        self.reply(await self.call(self.core.job_log, parse_job_id(job_id), offset))
