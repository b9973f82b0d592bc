"""REST of the worker API (site mode): a user's worker claims and reports on that user's stage
jobs through the site service, under ``hera-stage/api/worker/``. Thin handlers over
``site.worker_ops.WorkerOps``, for the authenticated user of the request (scope
``custom:hera-stage:stage``); registered only on a site service."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import InvalidRequest
from ..jobs.joblog import LOG_TAIL_ACTIONS, LOG_TAIL_TYPE
from ..site.worker_ops import JsonText, WorkerOps, body_with_log
from .base import MAX_BODY_BYTES, ApiHttpError, BaseHandler
from .jobs import parse_job_id

#: Where the worker API lives, under the native API's prefix.
WORKER_PREFIX = "/worker"

#: action -> (HTTP method, WorkerOps method, whether it takes the body)
ACTIONS: dict[str, tuple[str, str, bool]] = {
    "": ("GET", "job", False),
    "active": ("GET", "active", False),
    "stores": ("GET", "stores", False),
    "unfinished": ("GET", "unfinished", False),
    "waiting": ("GET", "waiting", False),
    "results": ("GET", "results", False),
    "heartbeat": ("POST", "heartbeat", True),
    "finish": ("POST", "finish", True),
    "cancelled": ("POST", "cancelled", True),
    "fail": ("POST", "fail", True),
    "release": ("POST", "release", True),
    "taken": ("POST", "taken", True),
    "log": ("POST", "log", True),
    "items/claim": ("POST", "claim_items", True),
    "items/requeue": ("POST", "requeue", True),
    "items/record": ("POST", "record", True),
    "items/exchange": ("POST", "exchange", True),
}


class _WorkerHandler(BaseHandler):
    @property
    def ops(self) -> WorkerOps:
        return WorkerOps(self.core.catalogue.db, self.core.owner)


class WorkerClaimHandler(_WorkerHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()
        self.reply(await self.call(self.ops.claim, body))


class WorkerJobHandler(_WorkerHandler):
    async def _act(self, method: str, job_id: str, action: str) -> None:
        entry = ACTIONS.get(action)
        if entry is None or entry[0] != method:
            raise ApiHttpError(InvalidRequest(f"no worker action {method} {action!r}"))
        number = parse_job_id(job_id)
        fn = getattr(self.ops, entry[1])
        args: list[Any] = [number, self._body(action)] if entry[2] else [number]
        answer = await self.call(fn, *args)
        if isinstance(answer, JsonText):
            self.reply_text(answer)
        else:
            self.reply(answer)

    def _body(self, action: str) -> dict[str, Any]:
        """The call's body: JSON, or for an item call JSON followed by the job's log lines
        (``LOG_TAIL_TYPE``; media types are case-insensitive, and parameters such as a charset
        are ignored, as on the JSON path)."""
        kind = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != LOG_TAIL_TYPE:
            return self.body_json()
        try:
            if action not in LOG_TAIL_ACTIONS:
                raise InvalidRequest(f"{action!r} takes no log lines after its JSON")
            return body_with_log(self.request.body or b"", MAX_BODY_BYTES)
        except InvalidRequest as exc:
            raise ApiHttpError(exc) from None

    @web.authenticated
    @authorized
    async def get(self, job_id: str, action: str = "") -> None:
        await self._act("GET", job_id, action or "")

    @web.authenticated
    @authorized
    async def post(self, job_id: str, action: str = "") -> None:
        await self._act("POST", job_id, action or "")


def worker_handlers(api_prefix: str) -> list[tuple[str, type[BaseHandler]]]:
    base = api_prefix + WORKER_PREFIX
    return [
        (base + r"/claim$", WorkerClaimHandler),
        (base + r"/jobs/(?P<job_id>[^/]+)$", WorkerJobHandler),
        (base + r"/jobs/(?P<job_id>[^/]+)/(?P<action>[a-z]+(?:/[a-z]+)?)$", WorkerJobHandler),
    ]
