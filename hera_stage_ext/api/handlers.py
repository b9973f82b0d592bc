"""The native REST API under ``<base_url>/hera-stage/api/``: thin handlers over the core.

Each handler checks Jupyter's authentication and authorization, reads its input, calls one core
operation and writes its JSON. Bodies are read with their request models (``models.py``); the
OpenAPI document (``openapi.py``) is generated from those and describes every route here.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..catalogue.naming import validate_name
from ..errors import InvalidRequest
from .base import ApiHttpError, BaseHandler
from .models import IngestRequest, SearchRequest
from .openapi import openapi_document


class StatusHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        status = await self.call(self.core.status)
        status["user"] = self.current_user.username if self.current_user else None
        self.reply(status)


class StoresHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"stores": await self.call(self.core.catalogue.stores)})


class SearchHandler(BaseHandler):
    """``POST search``. A search that brings its token in the ``Authorization`` header is
    answered without Jupyter's login cookie: such a client (a program paging through results)
    sends the header with every request, so the cookie was signed on each of them for nothing
    (a tenth of a small search's CPU), and, kept by a client, it would authenticate requests
    that carry no token at all."""

    def set_secure_cookie(self, name: str, value: str | bytes, expires_days: float | None = 30,
                          version: int | None = None, **kwargs: Any) -> None:
        """Tornado's, but not Jupyter's login cookie for a token sent in the header."""
        if name == self.identity_provider.get_cookie_name(self) and self._token_in_header():
            return
        super().set_secure_cookie(name, value, expires_days, version, **kwargs)

    def _token_in_header(self) -> bool:
        """Whether the request's token (if any) is the ``Authorization`` header's: Jupyter
        reads a ``token`` URL parameter first (``IdentityProvider.get_token``)."""
        return (not self.get_argument("token", "")
                and self.identity_provider.auth_header_pat.match(
                    self.request.headers.get("Authorization", "")) is not None)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(SearchRequest, max_search_limit=self.core.max_search_limit)
        try:
            search = request.parsed_search()
        except InvalidRequest as exc:
            raise ApiHttpError(exc) from exc
        # The reply's JSON is written in the thread pool, straight from the rows.
        self.reply_text(await self.call(
            self.core.catalogue.search_text, request.kind, search, limit=request.limit,
            cursor=request.cursor, count=request.count, sort=request.sort))


class FileHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        detail = await self.call(
            lambda: self.core.catalogue.file_detail(validate_name(name))
        )
        self.reply(detail)


class IngestHandler(BaseHandler):
    """``POST ingest``: ``models.IngestRequest``."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(IngestRequest)
        store, ingester = request.store, self.core.ingester

        def run() -> dict[str, Any]:
            self.core.check_ingest_allowed()
            if request.paths is not None:
                return ingester.ingest_paths(store, request.paths).to_json()
            globs = request.globs
            if request.plan:
                plan = ingester.plan(store, globs)
                return {"store": store, "todo": plan.todo, "unchanged": plan.unchanged,
                        "errors": plan.errors}
            return ingester.ingest(store, globs).to_json()

        reply = await self.call(run)
        errors = reply["errors"]
        if errors and all(e.get("reason") == "conflict" for e in errors) and not (
            reply.get("registered") or reply.get("instances_added")
        ):
            # Nothing but names known with other content: the request as a whole conflicts.
            reply = {"error": "Conflict", "message": errors[0]["message"], **reply}
            self.reply(reply, status=409)
            return
        self.reply(reply)


class OpenAPIHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(openapi_document(self.core.version, self.core.max_search_limit))
