"""The native REST API under ``<base_url>/hera-stage/api/``: thin handlers over the core.

Each handler checks Jupyter's authentication and authorization, reads its input, calls one core
operation and writes its JSON. The OpenAPI document (``openapi.py``) describes every route here.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..catalogue.naming import validate_name
from ..catalogue.query_text import parse_query_text
from ..catalogue.search_parse import KINDS, parse_search
from ..errors import InvalidRequest, SearchError
from .base import ApiError, BaseHandler
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


def search_request(body: dict[str, Any], max_limit: int) -> dict[str, Any]:
    """Validate a search request body into keyword arguments of ``Catalogue.search``."""
    kind = body.get("kind", "files")
    if kind not in KINDS:
        raise SearchError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if ("search" in body) == ("query" in body):
        raise InvalidRequest("give exactly one of 'search' (JSON) or 'query' (one-line text)")
    if "query" in body:
        if not isinstance(body["query"], str):
            raise InvalidRequest("'query' must be a string")
        search = parse_query_text(body["query"], kind)
    else:
        search = parse_search(body["search"])
    limit = body.get("limit", 100)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {max_limit}")
    cursor = body.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise InvalidRequest("'cursor' must be a string from a previous reply's next_cursor")
    count = body.get("count", False)
    if not isinstance(count, bool):
        raise InvalidRequest("'count' must be true or false")
    sort = body.get("sort")
    if sort is not None and not isinstance(sort, str):
        raise InvalidRequest("'sort' must be a string such as 'name' or '-size'")
    return {"kind": kind, "search": search, "limit": limit, "cursor": cursor, "count": count,
            "sort": sort}


class SearchHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()
        try:
            request = search_request(body, self.core.max_search_limit)
        except InvalidRequest as exc:
            raise ApiError(exc) from exc
        kind = request.pop("kind")
        search = request.pop("search")
        # The reply's JSON is written in the thread pool, straight from the rows.
        self.reply_text(await self.call(self.core.catalogue.search_text, kind, search, **request))


class FileHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        detail = await self.call(
            lambda: self.core.catalogue.file_detail(validate_name(name))
        )
        self.reply(detail)


class IngestHandler(BaseHandler):
    """``{"store", "globs"}`` ingests all; ``"plan": true`` only lists what is new;
    ``{"store", "paths"}`` ingests exactly those store-relative paths (the CLI's batches)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body_json()
        store = body.get("store")
        if not isinstance(store, str) or not store:
            raise ApiError(InvalidRequest("'store' must name a configured store"))
        ingester = self.core.ingester

        def run() -> dict[str, Any]:
            self.core.check_ingest_allowed()
            if "paths" in body:
                paths = body["paths"]
                if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                    raise InvalidRequest("'paths' must be a list of store-relative paths")
                return ingester.ingest_paths(store, paths).to_json()
            globs = body.get("globs", ["*"])
            if body.get("plan"):
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
