"""What every REST handler shares: access to the core, JSON bodies, and the one error mapping.

A JSON body is read through ``jsonbody.load_json``: at most ``MAX_BODY_BYTES``, nested at most
``jsonbody.MAX_JSON_DEPTH`` deep, otherwise a 4xx naming the limit (never a RecursionError);
``body_as`` then validates it with its request model (``models.py``).

Domain errors (``errors.StagingError``) become HTTP answers here and only here: the status the
error names, with a JSON body ``{"error": ..., "message": ...}``. Core calls run in a thread
pool so a slow query or a long ingest never stalls the server's event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..core import Core
from ..errors import InvalidRequest, StagingError
from ..jsonbody import check_depth, load_json
from ..jsonbody import check_unicode as check_unicode  # the Librarian RPC's, from here
from ..site.scopes import user_scopes
from .job_status import JobStatusCache
from .models import QueryModel, RequestModel

T = TypeVar("T")
M = TypeVar("M", bound=RequestModel)
Q = TypeVar("Q", bound=QueryModel)

#: Largest JSON request body accepted, in bytes.
MAX_BODY_BYTES = 1 << 20
#: Largest request body the site service reads at all (its ``max_body_size``): twice a JSON
#: body's limit, so that a body just over that limit still gets the JSON 413 naming it, and
#: anything larger is refused from its ``Content-Length`` before it is read (tornado's bare
#: 400): an authenticated user cannot make the service hold 512 MiB (jupyter_server's default)
#: in memory. A handler that takes more raises it for its own request (``POST push``).
SITE_MAX_BODY_BYTES = 2 * MAX_BODY_BYTES
#: Resource name for Jupyter's authorizer (``authorized`` decorator).
AUTH_RESOURCE = "hera_stage"
#: Settings key of the ``Content-Security-Policy`` header's value per handler class (worked
#: out once).
_CSP_KEY = "hera_stage_csp"


class ApiHttpError(web.HTTPError):
    """A domain error on its way out, keeping its JSON payload."""

    def __init__(self, error: StagingError) -> None:
        super().__init__(error.status, "%s", error.message)
        self.payload = error.to_json()


class BaseHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def core(self) -> Core:
        """The core; on a site service, the core of this request's authenticated user."""
        core: Core = self.settings["hera_stage"]
        if core.site_mode and self.current_user is not None:
            return core.for_user(self.current_user.username, user_scopes(self.current_user))
        return core

    @property
    def content_security_policy(self) -> str:
        """Jupyter's header, made of the server's settings alone, so worked out once (joined
        and its report URL built anew on every reply before)."""
        # (Per handler class: one that mixes another policy in keeps its own.)
        known: dict[type, str] = self.settings.setdefault(_CSP_KEY, {})
        csp = known.get(type(self))
        if csp is None:
            csp = known[type(self)] = super().content_security_policy
        return csp

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a (blocking) core call in the thread pool."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``run``, mapping domain errors to HTTP answers."""
        try:
            return await self.run(fn, *args, **kwargs)
        except StagingError as exc:
            raise ApiHttpError(exc) from exc

    @staticmethod
    def check_json_depth(text: str, what: str) -> None:
        """``jsonbody.check_depth`` for JSON a handler parses itself (a form field)."""
        check_depth(text, what)

    def body_json(self) -> dict[str, Any]:
        """The request body as a JSON object, or a 4xx that says what is wrong with it."""
        body = self.request.body or b""
        try:
            if len(body) <= MAX_BODY_BYTES and not body.strip():
                return {}
            value = load_json(body, max_bytes=MAX_BODY_BYTES)
            if not isinstance(value, dict):
                raise InvalidRequest("request body must be a JSON object")
        except InvalidRequest as exc:
            raise ApiHttpError(exc) from None
        return value

    def body_as(self, model: type[M], **context: Any) -> M:
        """The request body validated by ``model`` (``models.py``), or a 400 naming the field
        that is wrong; ``context``: what the model's checks read (``max_search_limit``)."""
        body = self.body_json()
        try:
            return model.parse(body, **context)
        except InvalidRequest as exc:
            raise ApiHttpError(exc) from None

    def query_as(self, model: type[Q], **context: Any) -> Q:
        """The query string validated by ``model``, or a 400 naming the parameter."""
        try:
            return model.from_arguments(self.request.query_arguments, **context)
        except InvalidRequest as exc:
            raise ApiHttpError(exc) from None

    @property
    def job_status(self) -> JobStatusCache:
        """The server's ``JobStatusCache`` (one per server, made on first use)."""
        # One per user (a site service answers many): a reply is never shown to another.
        caches = self.settings.setdefault("hera_stage_job_status", {})
        cache = caches.get(self.core.owner)
        if cache is None:
            cache = caches.setdefault(self.core.owner, JobStatusCache())
        return cache

    def reply(self, value: Any, status: int = 200) -> None:
        self.reply_text(json.dumps(value), status)

    def reply_text(self, text: str, status: int = 200) -> None:
        """Reply with ``text``, JSON already encoded."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(text)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiHttpError):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(exc.payload))
            return
        super().write_error(status_code, **kwargs)

