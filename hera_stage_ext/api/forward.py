"""Site mode on the user's side: the user's Jupyter server forwards the REST API to the site
service (``c.StagingApp.site_url``) and holds nothing of the site's.

Every ``<base_url>/hera-stage/api/<path>`` request is checked by the user's own Jupyter
authentication as in single-user mode, then sent on to ``<site_url>hera-stage/api/<path>``
with the same method, query and body and ``Authorization: token <the user's token>``: the
service learns who the user is from that token only. The browser's cookies, the request's own
``Authorization`` and XSRF headers never leave this server, and the service's cookies never
reach the browser. Answers come back with their status, body and content type, file contents
streamed. A service that cannot be reached answers 502 (503 while it is starting or
overloaded: its own answer) with a JSON message, never a traceback.

Every request has a bound (``SiteClient.bound``; T is ``c.StagingApp.site_request_timeout``,
45 s by default); a service that does not answer within it answers 504 with a JSON message,
so a hung service never leaves the panel, ``%stage`` or the CLI waiting for ever:

- connecting: 10 s for every route (a service that cannot be reached answers 502);
- an ordinary call (a search, a status, a launch, a job's log, a cancel): its whole answer
  within T. These do bounded work at the service; T is far above their slowest legitimate
  time (a launch of 100,000 names takes seconds) and below the notebook client's own 60 s,
  so the CLI and ``%stage`` show this message rather than a timeout of their own;
- a call whose work grows with the data and runs while the request waits (``ingest``,
  ``offload``, ``fixity/audit``, ``delete-instances``, ``files/<name>/repair``): an hour (or
  T if longer), so a large ingest is not cut (the client waits for these without a bound);
- a file's contents (streamed, of any size): the answer must begin within T and then no gap
  between two chunks may exceed T, with no bound on the whole download: a large file at any
  pace the browser reads it goes through (the wait for a slow browser is not counted), a
  service that stops sending mid-file is cut (the download ends short of its length).

No route of the user's API is a long poll; the site-to-site routes (the peers' long-polled
``status``) are not forwarded.

Paths of the user's file system are this server's business, not the service's: a staging
destination (``POST stage``, its dry run, the SKAO entry point's ``relative_path``) and an
upload's folder and manifest are confined to ``allowed_roots`` here (``paths.confine``,
relative to the server's root) and forwarded resolved and absolute; outside answers 403
without a request to the service. The ``contents`` method goes with this server's description
of its contents manager (``contents.describe_manager``), which the service stores and the
user's worker builds. The user's worker checks each job's destination again
before it writes (``--allowed-root``).

The Librarian RPC is authenticated by its ``authenticator``, not by Jupyter, so it goes on
without the user's token (exactly as if the caller had asked the service). The site-to-site
routes are not served by a user's server at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from tornado import httputil, web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from ..errors import InvalidRequest, StagingError, Unavailable
from ..jobs import cleaner, markers, preview
from ..jobs.contents import ContentsTarget, describe_manager
from ..jobs.worker import SITE_TOKEN_ENV
from ..paths import confine
from .base import MAX_BODY_BYTES, ApiHttpError, BaseHandler, check_unicode
from . import staged
from .job_status import JobStatusCache
from .routes import API_PREFIX, LIBRARIAN_PREFIX, SKAO_PREFIX

#: The hub's token of the user's server: the service accepts it under JupyterHub.
HUB_TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
#: Settings key of the ``SiteClient``.
SITE_KEY = "hera_stage_site"

#: Request headers passed on (everything else, cookies and credentials above all, stays here).
_REQUEST_HEADERS = ("Content-Type", "Accept", "Range", "If-Range", "If-None-Match",
                    "If-Modified-Since", "User-Agent")
#: Answer headers passed back (never Set-Cookie: the service's cookies are not this server's).
_ANSWER_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges",
                   "Content-Disposition", "ETag", "Last-Modified", "Retry-After",
                   "Cache-Control")
#: Seconds to connect to the service before it counts as down.
CONNECT_TIMEOUT_S = 10.0
#: Seconds one of the server's own reads (job progress) may take.
POLL_TIMEOUT_S = 30.0
#: Default seconds a forwarded call may wait for the service's answer (``site_request_timeout``):
#: under the notebook client's own 60 s.
ANSWER_TIMEOUT_S = 45.0
#: Seconds a call whose work grows with the data may wait for its answer.
SLOW_ANSWER_TIMEOUT_S = 3600.0
#: Routes (below the API prefix, POST) whose work grows with the data while the request waits.
SLOW_ROUTES = re.compile(r"ingest|offload|fixity/audit|delete-instances|files/[^/]+/repair")
_JOB = re.compile(r"jobs/[0-9]+")


@dataclass(frozen=True)
class Bound:
    """How long one forwarded request may take: ``answer`` seconds for the whole answer, or
    (``streamed``) for the answer to begin and then for each gap between two chunks."""

    answer: float
    streamed: bool = False

    def httpx(self) -> httpx.Timeout:
        # httpx's read timeout is per read from the socket: the gap between two chunks.
        return httpx.Timeout(self.answer, connect=min(CONNECT_TIMEOUT_S, self.answer))


class SiteConfigError(ValueError):
    """Site mode is configured in a way that would put the site's powers in a user's hands,
    or without the user's token: the server refuses to start."""


def read_token_file(path: str) -> str:
    """The token in ``path``: a regular file of this user that nobody else may read (mode
    0600 or stricter), opened without following a link; SiteConfigError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SiteConfigError(f"site_token_file {path!r} cannot be opened: {exc.strerror} "
                              "(it must be a regular file, not a link)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SiteConfigError(f"site_token_file {path!r} is not a regular file")
        if info.st_uid != os.geteuid():
            raise SiteConfigError(f"site_token_file {path!r} belongs to uid {info.st_uid}, "
                                  f"not to this user (uid {os.geteuid()})")
        if info.st_mode & 0o077:
            raise SiteConfigError(
                f"site_token_file {path!r} has mode {stat.S_IMODE(info.st_mode):04o}: others "
                f"may read it; chmod 600 {path}")
        token = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not token:
        raise SiteConfigError(f"site_token_file {path!r} is empty")
    return token


def site_token(token_file: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The user's token for the service: the hub's token of this server, else
    ``$HERA_STAGE_SITE_TOKEN``, else the token file; SiteConfigError when there is none."""
    for name in (HUB_TOKEN_ENV, SITE_TOKEN_ENV):
        if environ.get(name, "").strip():
            return environ[name].strip()
    if token_file:
        return read_token_file(os.path.expanduser(token_file))
    raise SiteConfigError(
        f"site_url is set but there is no token for the site service: run under JupyterHub "
        f"(${HUB_TOKEN_ENV}), set ${SITE_TOKEN_ENV}, or point c.StagingApp.site_token_file at "
        "a file (mode 0600) holding the token `hera-stage site-token issue` printed")


def site_error(code: int, message: str) -> bytes:
    return json.dumps({"error": "SiteUnavailable" if code in (502, 503, 504) else "SiteError",
                       "message": message}).encode()


@dataclass
class Answer:
    """An answer of the service, whole."""

    code: int
    headers: HTTPHeaders
    body: bytes


class ServiceAnswered(Exception):
    """An answer that is not a plain 200 JSON (for callers that want only those)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.code)
        self.answer = answer


@dataclass
class SiteClient:
    """The one HTTP client of this server towards the site service, with the user's token."""

    site_url: str  # ends in '/'
    token: str
    allowed_roots: list[str]
    root_dir: str
    #: Called after a stage job was launched or retried here (the user's worker wakes).
    on_launch: Callable[[], None] | None = None
    #: This server's contents manager (the ``contents`` method writes through a copy of it,
    #: built by the user's worker from its description).
    contents_manager: Any = None
    #: Seconds an ordinary forwarded call may wait for its answer (see the module's text).
    answer_timeout_s: float = ANSWER_TIMEOUT_S
    _http: httpx.AsyncClient | None = field(default=None, repr=False)

    @property
    def http(self) -> httpx.AsyncClient:
        # Made on first use, on the running loop. (tornado's client has no bound on the gap
        # between two chunks of a streamed answer, only on the whole request.)
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                           limits=httpx.Limits(max_connections=64))
        return self._http

    def bound(self, method: str, path: str) -> Bound:
        """The bound of a forwarded request of ``method`` to ``path`` (below the API prefix)."""
        if path.endswith("/content"):
            return Bound(self.answer_timeout_s, streamed=True)
        if method == "POST" and SLOW_ROUTES.fullmatch(path):
            return Bound(max(SLOW_ANSWER_TIMEOUT_S, self.answer_timeout_s))
        return Bound(self.answer_timeout_s)

    def url(self, path: str, query: str = "") -> str:
        return self.site_url + path.lstrip("/") + (f"?{query}" if query else "")

    def request(self, method: str, path: str, *, query: str = "", body: bytes | None = None,
                headers: dict[str, str] | None = None, with_token: bool = True,
                bound: Bound) -> tuple[httpx.Request, Bound]:
        # Bytes pass as they are: no compression asked for (a streamed answer is not decoded).
        out = {"Accept-Encoding": "identity", **(headers or {})}
        if with_token:
            out["Authorization"] = f"token {self.token}"
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        return self.http.build_request(method, self.url(path, query), headers=out,
                                       content=body, timeout=bound.httpx()), bound

    async def fetch(self, outgoing: tuple[httpx.Request, Bound]) -> Answer:
        """The service's whole answer to ``outgoing``; a 502 answer when it cannot be reached,
        a 504 one when it does not answer within the bound."""
        request, bound = outgoing
        try:
            async with asyncio.timeout(bound.answer):
                response = await self.http.send(request)
        except (TimeoutError, httpx.HTTPError) as exc:
            return self.failed(request, bound, exc)
        return Answer(response.status_code, headers_of(response), response.content)

    async def open_stream(self, outgoing: tuple[httpx.Request, Bound]
                          ) -> httpx.Response | Answer:
        """The service's answer to ``outgoing`` begun (status and headers; its body to read
        with ``aiter_raw``, each read bounded, and then ``aclose``), or an error Answer as
        ``fetch`` gives."""
        request, bound = outgoing
        try:
            async with asyncio.timeout(bound.answer):
                return await self.http.send(request, stream=True)
        except (TimeoutError, httpx.HTTPError) as exc:
            return self.failed(request, bound, exc)

    def failed(self, request: httpx.Request, bound: Bound, exc: BaseException) -> Answer:
        """The answer to a request that got none: 504 when the bound passed with the service
        connected, else 502 (refused, reset, no route, name unknown, no connection in time)."""
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError) or not isinstance(
                exc, TimeoutError | httpx.TimeoutException):
            return self.unreachable(str(exc) or type(exc).__name__)
        what = "begin to answer" if bound.streamed else "answer"
        return Answer(504, HTTPHeaders({"Content-Type": "application/json"}), site_error(
            504, f"the site service at {self.site_url} did not {what} {request.method} "
                 f"{request.url.path} within {bound.answer:g} s; try again later, or ask the "
                 "site's admins whether the service is overloaded or stuck"))

    def unreachable(self, why: str) -> Answer:
        return Answer(502, HTTPHeaders({"Content-Type": "application/json"}), site_error(
            502, f"the site service at {self.site_url} cannot be reached: {why}"))

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON of ``hera-stage/api/<path>`` (this server's own reads); ServiceAnswered
        for anything but a 2xx JSON answer."""
        request = self.request(method, "hera-stage/api/" + path,
                               body=None if body is None else json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"},
                               bound=Bound(min(POLL_TIMEOUT_S, self.answer_timeout_s)))
        answer = await self.fetch(request)
        if not 200 <= answer.code < 300 or "json" not in answer.headers.get("Content-Type", ""):
            raise ServiceAnswered(answer)
        return json.loads(answer.body)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ----- paths of the user's file system ------------------------------------------------
    def confine(self, path: object, what: str) -> str:
        """``path`` resolved inside the allowed roots (relative to the server's root), as an
        absolute path; Forbidden outside them."""
        if not isinstance(path, str) or not path:
            raise InvalidRequest(f"'{what}' must be a folder (relative to your root directory)")
        return str(confine(path, self.allowed_roots, base=self.root_dir, what=what,
                           name_roots=True))

    def with_marker(self, job: dict[str, Any]) -> dict[str, Any]:
        """``job`` with ``marker`` read here (the service cannot see the user's folders), for
        destinations inside the allowed roots only."""
        destination = job.get("destination") or ""
        job["marker"] = None
        if os.path.isabs(destination):
            try:
                self.confine(destination, "destination")
            except StagingError:
                return job
            job["marker"] = markers.present(Path(destination))
        return job

    def with_preview(self, plan: dict[str, Any]) -> dict[str, Any]:
        """A dry run's answer with what its job would find in the destination, looked at here
        (the service sends the ``items`` to look for, and cannot look itself)."""
        items = plan.pop("items", None)
        destination = plan.get("destination")
        if isinstance(items, list) and isinstance(destination, str):
            try:
                self.confine(destination, "destination")
            except StagingError:
                return plan
            plan.update(preview.check_destination(destination, items, plan.get("method", ""),
                                                  int(plan.get("files", len(items)))))
        return plan


# ----- request bodies rewritten before they leave ----------------------------------------------
def _json_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object")
    check_unicode(value)
    return value


def confine_stage(site: SiteClient, body: dict[str, Any]) -> dict[str, Any]:
    """A ``POST stage`` body (dry run too) with its destination resolved and checked here.
    The ``contents`` method: the destination is planned against this server's contents
    manager (inside its root and the allowed roots, or a clean contents path when the
    manager holds no files) and the manager's description goes with it, for the user's
    worker to build the same manager (the service only stores it). A dry run into a local
    folder: the service sends the items back, for this server to look at the folder."""
    body = {k: v for k, v in body.items() if k != "contents"}  # only this server's own
    if body.get("method", "copy") != "contents":
        return {**body, "destination": site.confine(body.get("destination"), "destination"),
                **({"with_items": True} if body.get("dry_run") is True else {})}
    destination = body.get("destination")
    if not isinstance(destination, str) or not destination:
        raise InvalidRequest("'destination' must be a folder (relative to your root directory)")
    if site.contents_manager is None:
        raise Unavailable("contents staging is not available: this server has no contents "
                          "manager")
    target = ContentsTarget.plan(destination, describe_manager(site.contents_manager),
                                 site.allowed_roots)
    return {**body, "destination": target.key, "contents": target.spec}


def confine_upload(site: SiteClient, body: dict[str, Any]) -> dict[str, Any]:
    """A ``POST upload`` body with its folder (and manifest) resolved and checked here."""
    out = {**body, "directory": site.confine(body.get("directory"), "directory")}
    if body.get("manifest") is not None:
        out["manifest"] = site.confine(body["manifest"], "manifest")
    return out


def confine_skao(site: SiteClient, query: dict[str, list[bytes]],
                 body: dict[str, Any]) -> dict[str, Any]:
    """An SKAO ``stage_data`` body with its ``relative_path`` resolved and checked here."""
    method = (query.get("method") or [b""])[0].decode("utf-8", "replace")
    if method == "direct_download":
        return body
    if method == "jupyter_copy":
        raise Unavailable("'jupyter_copy' is not available when staging through the site "
                          "service; use 'local_copy'")
    return {**body, "relative_path": site.confine(body.get("relative_path"), "relative_path")}


#: Route (relative to the API prefix) -> rewrite of its JSON body before forwarding.
_API_REWRITES: dict[str, Callable[[SiteClient, dict[str, Any]], dict[str, Any]]] = {
    "stage": confine_stage,
    "upload": confine_upload,
}


# ----- the handlers ---------------------------------------------------------------------------
class ForwardHandler(BaseHandler):
    """Passes one request on to the service and its answer back (``BaseHandler`` for its
    error answers and the job status cache; it has no ``core`` here)."""

    #: The prefix of this route, here and at the service.
    prefix = API_PREFIX
    #: Whether the user's token goes with the request.
    with_token = True

    @property
    def site(self) -> SiteClient:
        return self.settings[SITE_KEY]

    @property
    def job_status(self) -> JobStatusCache:
        """One cache for the server: every request goes on with the one user's token."""
        return self.settings.setdefault("hera_stage_site_job_status", JobStatusCache())

    async def forward(self, path: str) -> None:
        """``path``: the route below the prefix, decoded (what this server acts on); the
        request goes on with it as it came (percent-encoded), never with a dot segment,
        which a proxy on the way could resolve to some other route of its own."""
        self.raw_path = self.request.path[len(self.base_url.rstrip("/") + self.prefix) + 1:]
        try:
            if {".", ".."} & {*path.split("/"), *self.raw_path.split("/")}:
                raise InvalidRequest(f"no route {path!r}: a path has no '.' or '..' segment")
            if path == "stage":  # (the contents method asks this server's contents manager)
                body = await asyncio.get_running_loop().run_in_executor(
                    None, self.rewritten_body, path)
            else:
                body = self.rewritten_body(path)
        except StagingError as exc:
            raise ApiHttpError(exc) from exc
        if path in staged.LOCAL_ROUTES:  # the user's folders: read and cleaned here
            await serve_staged(self, path)
            return
        if self.request.method == "GET" and _JOB.fullmatch(path):
            await self.job_status_reply(int(path.split("/")[1]))
            return
        if self.request.method == "GET" and path == "jobs":
            await self.reply_answer(await self.site.fetch(self.outgoing(body)),
                                    rewrite=self.jobs_with_markers)
            return
        if self.streams(path):
            await self.stream(body)
            return
        answer = await self.site.fetch(self.outgoing(body))
        self.after(path, answer)
        if path == "stage" and answer.code == 200 and "json" in answer.headers.get(
                "Content-Type", ""):  # a dry run: the files already there, looked at here
            with contextlib.suppress(ValueError):  # (not JSON after all: passed on as it is)
                plan = await asyncio.to_thread(self.site.with_preview, json.loads(answer.body))
                answer = Answer(200, answer.headers, json.dumps(plan).encode())
        await self.reply_answer(answer)

    # What a subclass changes.
    def rewritten_body(self, path: str) -> bytes | None:
        if self.request.method in ("GET", "HEAD", "DELETE"):
            return None
        rewrite = _API_REWRITES.get(path)
        if rewrite is None:
            return self.request.body
        return json.dumps(rewrite(self.site, _json_body(self.request.body))).encode()

    def streams(self, path: str) -> bool:
        return path.endswith("/content")

    def after(self, path: str, answer: Answer) -> None:
        """What this server does once the service accepted a request."""
        match = re.fullmatch(r"jobs/([0-9]+)(?:/cancel|/retry)?", path)
        if match and self.request.method in ("POST", "DELETE"):
            self.job_status.forget(int(match.group(1)))
        launched = (path == "stage" and answer.code == 202) or (
            path.endswith("/retry") and answer.code == 202)
        if launched and self.site.on_launch is not None:
            self.site.on_launch()

    # Building and answering.
    def outgoing(self, body: bytes | None) -> tuple[httpx.Request, Bound]:
        """This request, to go on to the service, with its bound."""
        headers = {k: v for k in _REQUEST_HEADERS if (v := self.request.headers.get(k))}
        method = self.request.method or "GET"
        bound = self.site.bound(method, self.raw_path if self.prefix == API_PREFIX else "")
        return self.site.request(method, f"{self.prefix.lstrip('/')}/{self.raw_path}",
                                 query=self.request.query, body=body, headers=headers,
                                 with_token=self.with_token, bound=bound)

    async def job_status_reply(self, job_id: int) -> None:
        """``GET jobs/<id>``: one read of the service answers the polls of the next moment
        (``JobStatusCache``), as one read of the database does in single-user mode."""

        async def read() -> str:
            answer = await self.site.fetch(self.outgoing(None))
            if answer.code != 200 or "json" not in answer.headers.get("Content-Type", ""):
                raise ServiceAnswered(answer)
            return json.dumps(self.site.with_marker(json.loads(answer.body)))

        try:
            text = await self.job_status.get(job_id, read)
        except ServiceAnswered as exc:
            await self.reply_answer(exc.answer)
            return
        self.set_header("Content-Type", "application/json")
        self.finish(text)

    def jobs_with_markers(self, value: Any) -> Any:
        for job in value.get("jobs", []) if isinstance(value, dict) else []:
            self.site.with_marker(job)
        return value

    async def reply_answer(self, answer: Answer,
                           rewrite: Callable[[Any], Any] | None = None) -> None:
        ctype = answer.headers.get("Content-Type", "")
        body = answer.body
        if answer.code >= 400 and "json" not in ctype:
            # An HTML error page (a proxy's, a login redirect's): a message instead.
            body = site_error(answer.code, f"the site service answered {answer.code} "
                              f"{httputil.responses.get(answer.code, '')}".rstrip())
            ctype = "application/json"
        elif rewrite is not None and answer.code == 200 and "json" in ctype:
            body = json.dumps(rewrite(json.loads(body))).encode()
        elif 300 <= answer.code < 400:
            body = site_error(502, f"the site service answered {answer.code} (a redirect: is "
                              "site_url the service's address and the token valid?)")
            answer = Answer(502, answer.headers, body)
            ctype = "application/json"
        self.set_status(answer.code)
        for name in _ANSWER_HEADERS:
            if name in answer.headers and name != "Content-Length":
                self.set_header(name, answer.headers[name])
        if ctype:
            self.set_header("Content-Type", ctype)
        if answer.code not in (204, 304):
            self.write(body)
        await self.finish()

    async def stream(self, body: bytes | None) -> None:
        """Pass the answer on as it arrives (file contents, large and slow)."""
        opened = await self.site.open_stream(self.outgoing(body))
        if isinstance(opened, Answer):
            await self.reply_answer(opened)
            return
        response = opened
        try:
            if response.status_code >= 300:  # an error's JSON: answered whole
                await self.reply_answer(Answer(response.status_code, headers_of(response),
                                               await response.aread()))
                return
            self.set_status(response.status_code)
            for name in _ANSWER_HEADERS:
                if name in response.headers:
                    self.set_header(name, response.headers[name])
            try:
                async for chunk in response.aiter_raw():  # each read within the bound
                    self.write(chunk)
                    await self.flush()  # the service waits while the browser is slow
            except StreamClosedError:
                return  # the browser went away: nothing more to send
            except httpx.HTTPError as exc:  # the service stopped sending (or went away)
                # Begun already: the status cannot change. The download ends short of its
                # Content-Length, which every client reports as an incomplete transfer.
                self.log.warning("hera_stage_ext: %s from the site service stopped: %s",
                                 self.request.path, exc)
                if isinstance(self.request.connection, HTTP1Connection):
                    self.request.connection.close()
                return
            await self.finish()
        finally:
            await response.aclose()

    # Every method goes the same way.
    @web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        await self.forward(path)

    @web.authenticated
    @authorized
    async def post(self, path: str) -> None:
        await self.forward(path)

    @web.authenticated
    @authorized
    async def put(self, path: str) -> None:
        await self.forward(path)

    @web.authenticated
    @authorized
    async def patch(self, path: str) -> None:
        await self.forward(path)

    @web.authenticated
    @authorized
    async def delete(self, path: str) -> None:
        await self.forward(path)


def headers_of(response: httpx.Response) -> HTTPHeaders:
    headers = HTTPHeaders()
    for name, value in response.headers.multi_items():
        headers.add(name, value)
    return headers


class SkaoForwardHandler(ForwardHandler):
    prefix = SKAO_PREFIX

    def rewritten_body(self, path: str) -> bytes | None:
        body = confine_skao(self.site, httputil.parse_qs_bytes(self.request.query),
                            _json_body(self.request.body))
        return json.dumps(body).encode()

    def after(self, path: str, answer: Answer) -> None:
        if answer.code == 202 and self.site.on_launch is not None:
            self.site.on_launch()

    async def reply_answer(self, answer: Answer,
                           rewrite: Callable[[Any], Any] | None = None) -> None:
        # A direct download's link points into the service: here it is this server's route.
        service_base = urlsplit(self.site.site_url).path

        def local_link(value: Any) -> Any:
            link = value.get("download_url") if isinstance(value, dict) else None
            if isinstance(link, str) and link.startswith(service_base):
                value["download_url"] = self.base_url + link[len(service_base):]
            return value

        await super().reply_answer(answer, rewrite or local_link)


class LibrarianForwardHandler(ForwardHandler):
    """The Librarian RPC, authenticated by its authenticator at the service: sent on without
    the user's token, so a caller who is not the user cannot act as the user."""

    prefix = LIBRARIAN_PREFIX
    with_token = False

    def rewritten_body(self, path: str) -> bytes | None:
        return self.request.body

    def check_xsrf_cookie(self) -> None:
        return None  # a form post by a script, with no cookie to ride on

    @allow_unauthenticated
    async def post(self, path: str) -> None:
        await self.forward(path)

    @allow_unauthenticated
    async def get(self, path: str) -> None:
        await self.forward(path)


def forward_handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    """The routes of a user's server in site mode."""
    return [
        (API_PREFIX + r"/(?P<path>.+)$", ForwardHandler),
        (LIBRARIAN_PREFIX + r"/(?P<path>[^/]+)$", LibrarianForwardHandler),
        (SKAO_PREFIX + r"/(?P<path>stage_data)$", SkaoForwardHandler),
    ]


def check_forbidden(configured: dict[str, Any]) -> None:
    """Refuse site mode next to the site's own settings (``configured``: the settings given
    in the user's server's config, by name)."""
    held = [name for name in ("db_url", "peers", "peer_secrets", "librarian_authenticators")
            if name in configured]
    if held:
        raise SiteConfigError(
            f"site_url is set, so this server forwards to the site service and must not hold "
            f"the site's settings: remove {', '.join(f'c.StagingApp.{n}' for n in held)} from "
            "this server's configuration (they belong to the service's config)")


# ----- the staged data routes a user's server serves itself --------------------------------------
async def serve_staged(handler: Any, path: str) -> None:
    """``staged`` and ``staged/clean`` in a user's server in site mode (``handler``: its
    ``ForwardHandler``): the records from the service, the folder work here in the thread
    pool (this server runs as the user), and what was cleaned back to the service."""
    site = handler.site
    method = handler.request.method
    try:
        if method not in ("GET", "POST") or (method == "GET") != (path == "staged"):
            raise web.HTTPError(405)
        request = (staged.clean_request(_json_body(handler.request.body))
                   if method == "POST" else None)
        answer = await site.api("GET", "staged/records")
        if request is None:
            use = {k: answer.get(k) for k in ("unexpired_bytes", "quota_bytes")}
            value = await handler.call(cleaner.listing, answer["records"], site.allowed_roots,
                                       use)
        else:
            value, cleaned = await handler.call(staged.clean_with, answer["records"], request,
                                                site.allowed_roots, site.root_dir)
            if cleaned:
                await site.api("POST", "staged/records/cleaned", {"jobs": cleaned})
    except ServiceAnswered as exc:
        await handler.reply_answer(exc.answer)
        return
    except StagingError as exc:
        raise ApiHttpError(exc) from exc
    handler.reply(value)
