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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_TIMEOUT_S = 60.0
#: Job states after which nothing more happens.
FINISHED_STATES = ("succeeded", "failed", "cancelled")


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


    # ----- staging ------------------------------------------------------------------------
    def stage(
        self,
        destination: str,
        query: str | dict[str, Any] | list[Any] | None = None,
        *,
        names: list[str] | None = None,
        method: str = "copy",
        dry_run: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        """Launch a staging job of the files a search matches (or of ``names``); with
        ``dry_run``, what it would do. ``destination`` is relative to the server's root."""
        if (query is None) == (names is None):
            raise ValueError("give a query or names, not both")
        body: dict[str, Any] = {"destination": destination, "method": method,
                                "dry_run": dry_run, "force": force}
        body.update(search_body(query) if query is not None else {"names": names})
        return self.request("POST", "stage", body)

    def jobs(self) -> list[dict[str, Any]]:
        return self.request("GET", "jobs")["jobs"]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.request("GET", f"jobs/{int(job_id)}")

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self.request("POST", f"jobs/{int(job_id)}/cancel", {})

    def log(self, job_id: int, offset: int = 0) -> tuple[str, int]:
        """The job's log from ``offset``: (text, next offset to ask for)."""
        reply = self.request("GET", f"jobs/{int(job_id)}/log?offset={int(offset)}")
        return reply["text"], reply["next_offset"]

    def wait(
        self, job_id: int, timeout: float | None = None, poll_seconds: float = 0.5,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job finishes (or ``timeout`` seconds pass: TimeoutError); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] in FINISHED_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout} s")
            time.sleep(poll_seconds)


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
