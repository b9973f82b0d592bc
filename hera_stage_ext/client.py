"""The Python client of the REST API: the one client the CLI, the magic and the widgets share.

``Client()`` finds its Jupyter server by itself: explicit ``url``/``token`` (or the environment
variables ``HERA_STAGE_URL`` / ``HERA_STAGE_TOKEN``), else JupyterHub's environment of a
single-user server, else the kernel's parent server (``JPY_PARENT_PID``), else the running
server whose root directory holds the current directory. Server errors become ``ApiError``
carrying the server's message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_TIMEOUT_S = 60.0


class ClientError(Exception):
    """The client could not talk to a server (none found, unreachable, not authorised)."""


class ApiError(ClientError):
    """The server answered with an error; ``message`` is the server's own words."""

    def __init__(self, status: int, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.payload = payload or {}


@dataclass(frozen=True)
class ServerInfo:
    url: str  # the server's base URL, ending in '/'
    token: str


def _running_servers() -> list[dict[str, Any]]:
    from jupyter_server.serverapp import list_running_servers

    return list(list_running_servers())


def _server_info(entry: dict[str, Any]) -> ServerInfo:
    return ServerInfo(url=entry["url"].rstrip("/") + "/", token=entry.get("token", ""))


def discover_server(url: str | None = None, token: str | None = None) -> ServerInfo:
    url = url or os.environ.get("HERA_STAGE_URL")
    token = token if token is not None else os.environ.get("HERA_STAGE_TOKEN")
    if url:
        return ServerInfo(url.rstrip("/") + "/", token or "")
    hub_token = os.environ.get("JUPYTERHUB_API_TOKEN")
    hub_url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if hub_token and hub_url:
        hub_url = hub_url.replace("://0.0.0.0:", "://127.0.0.1:")
        return ServerInfo(hub_url.rstrip("/") + "/", token or hub_token)
    servers = _running_servers()
    parent = os.environ.get("JPY_PARENT_PID")
    if parent:
        for entry in servers:
            if str(entry.get("pid")) == parent:
                return _server_info(entry)
    cwd = os.path.realpath(os.getcwd())
    inside = [
        s for s in servers
        if os.path.commonpath([cwd, os.path.realpath(s.get("root_dir", "/"))])
        == os.path.realpath(s.get("root_dir", "/"))
    ]
    candidates = inside or servers
    if not candidates:
        raise ClientError(
            "no running Jupyter server found: start one, or give --url and --token "
            "(or HERA_STAGE_URL and HERA_STAGE_TOKEN)"
        )
    # The deepest root (the most specific server) wins.
    best = max(candidates, key=lambda s: len(os.path.realpath(s.get("root_dir", "/"))))
    return _server_info(best)


@dataclass
class SearchPage:
    kind: str
    results: list[dict[str, Any]]
    next_cursor: str | None
    total: int | None
    search: Any


def search_body(query: str | dict[str, Any] | list[Any]) -> dict[str, Any]:
    """A search request's body: JSON (object, list, or text starting with '{' or '[') goes as
    ``search``, anything else as the one-line ``query``."""
    if isinstance(query, (dict, list)):
        return {"search": query}
    if query.lstrip().startswith(("{", "[")):
        return {"search": query}
    return {"query": query}


class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.server = discover_server(url, token)
        self.timeout = timeout
        self.session = requests.Session()
        if self.server.token:
            self.session.headers["Authorization"] = f"token {self.server.token}"

    @property
    def api_url(self) -> str:
        return self.server.url + "hera-stage/api/"

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        url = self.api_url + path
        try:
            response = self.session.request(
                method, url, json=body, timeout=kwargs.pop("timeout", self.timeout), **kwargs
            )
        except requests.ConnectionError:
            raise ClientError(f"cannot reach the Jupyter server at {self.server.url}") from None
        except requests.Timeout:
            raise ClientError(f"the Jupyter server at {self.server.url} did not answer") from None
        if response.status_code >= 400:
            raise _api_error(response)
        return response.json()

    # ----- catalogue ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.request("GET", "status")

    def stores(self) -> list[dict[str, Any]]:
        return self.request("GET", "stores")["stores"]

    def search(
        self,
        query: str | dict[str, Any] | list[Any],
        *,
        kind: str = "files",
        limit: int = 100,
        cursor: str | None = None,
        count: bool = False,
        sort: str | None = None,
    ) -> SearchPage:
        body = {**search_body(query), "kind": kind, "limit": limit, "count": count}
        if cursor:
            body["cursor"] = cursor
        if sort:
            body["sort"] = sort
        reply = self.request("POST", "search", body)
        return SearchPage(reply["kind"], reply["results"], reply["next_cursor"], reply["total"],
                          reply["search"])

    def iter_search(
        self, query: str | dict[str, Any] | list[Any], *, kind: str = "files", page_size: int = 1000,
        sort: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every result of a search, fetched page by page."""
        cursor = None
        while True:
            page = self.search(query, kind=kind, limit=page_size, cursor=cursor, sort=sort)
            yield from page.results
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def info(self, name: str) -> dict[str, Any]:
        return self.request("GET", "files/" + requests.utils.quote(name, safe=""))

    def ingest_plan(self, store: str, globs: list[str]) -> dict[str, Any]:
        return self.request("POST", "ingest", {"store": store, "globs": globs, "plan": True})

    def ingest_paths(self, store: str, paths: list[str]) -> dict[str, Any]:
        return self.request("POST", "ingest", {"store": store, "paths": paths}, timeout=None)


def _api_error(response: requests.Response) -> ApiError:
    try:
        payload = response.json()
        message = payload.get("message") or payload.get("reason") or response.reason
    except (json.JSONDecodeError, ValueError, AttributeError):
        payload = None
        message = response.reason or "error"
    if response.status_code == 403 and message in ("Forbidden", None, ""):
        message = "not authorised: wrong or missing token"
    return ApiError(response.status_code, str(message), payload)
