"""The Python client of the REST API: the one client the CLI, the magic and the widgets share.

``Client()`` finds its Jupyter server by itself, in this order:

1. explicit ``url``/``token`` arguments, or the environment variables ``HERA_STAGE_URL`` /
   ``HERA_STAGE_TOKEN``;
2. JupyterHub's environment of a single-user server (``JUPYTERHUB_SERVICE_URL`` and
   ``JUPYTERHUB_API_TOKEN``);
3. the kernel's parent server: the entry of ``list_running_servers()`` whose ``pid`` is the
   kernel's ``JPY_PARENT_PID`` (what every kernel a Jupyter server starts has);
4. the running server whose root directory holds the current directory (the deepest one).

A token given explicitly overrides the discovered one. ``client.server.source`` says which
route was taken. Server errors become ``ApiError`` carrying the server's message; an
unreachable server, a wrong token or an unknown job are one-line errors (also in notebooks:
``ClientError`` renders as one line instead of a traceback).

Results are small typed objects with a readable repr and an HTML repr for notebooks:
``FileInfo``, ``Job``, ``StagePlan`` (dicts with attribute access, so ``job["id"]`` and
``job.id`` both work), ``JobList`` and ``SearchResults`` (``.to_dataframe()`` when pandas is
installed). ``Job.shown_state`` is the state to show a person (``cancelling`` once a cancel is
asked); ``RateMeter`` turns the byte counts of successive polls into a rate and an ETA.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload
from urllib.parse import quote

import requests

from .states import FINISHED_JOB_STATES, JobState

DEFAULT_TIMEOUT_S = 60.0
#: Log lines that describe a file the job could not stage.
_ERROR_WORDS = ("FAILED", "MISSING", "CONFLICT")


def human_size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RateMeter:
    """A transfer rate and an ETA from a job's byte counts as the server reports them, over a
    sliding window of samples (not since the start, nor from the last two polls only): a
    stall then a jump shows the average over the window, never a burst's rate. ``rate`` is
    None until two samples in the window differ (nothing measured yet, or nothing moved for
    a whole window): show "—" then, never a made-up number."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self.remaining: int | None = None

    def add(self, bytes_done: int, bytes_total: int | None = None) -> None:
        now = self.clock()
        if self._samples and bytes_done < self._samples[-1][1]:
            self._samples.clear()  # counted again from less (a retry): old samples lie
        self._samples.append((now, bytes_done))
        # Keep one sample at or before the window's start, so the span covers the window.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        if bytes_total is not None:
            self.remaining = max(bytes_total - bytes_done, 0)

    @property
    def rate(self) -> float | None:
        """Bytes per second over the window, or None (see the class)."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if b1 == b0 or t1 <= t0:
            return None
        return (b1 - b0) / (t1 - t0)

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return None if rate is None or self.remaining is None else self.remaining / rate

    def rate_text(self) -> str:
        rate = self.rate
        return "—" if rate is None else f"{human_size(rate)}/s"

    def eta_text(self) -> str:
        eta = self.eta_s
        return "—" if eta is None else human_duration(eta)


# ----- errors ---------------------------------------------------------------------------------
class ClientError(Exception):
    """The client could not talk to a server (none found, unreachable, not authorised)."""

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the error in one line (a few for a
        failed job), since the user's mistake is not in our stack frames."""
        lines = str(self).splitlines() or [""]
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {lines[0]}", *lines[1:]]


class ApiError(ClientError):
    """The server answered with an error; ``message`` is the server's own words."""

    def __init__(self, status: int, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.payload = payload or {}


class JobFailed(ClientError):
    """A job that was waited for ended otherwise than ``succeeded``; ``job`` is its final state
    and ``errors`` the log lines of the files it could not stage."""

    MAX_LINES = 10

    def __init__(self, job: Job, errors: Sequence[str] = ()) -> None:
        self.job = job
        self.errors = list(errors)
        head = f"job {job['id']} {job['state']}"
        if job.get("error"):
            head += f": {job['error']}"
        lines = [head, *(f"  {e}" for e in self.errors[: self.MAX_LINES])]
        if len(self.errors) > self.MAX_LINES:
            lines.append(f"  ... and {len(self.errors) - self.MAX_LINES} more (see the job's log)")
        super().__init__("\n".join(lines))


# ----- server discovery -----------------------------------------------------------------------
@dataclass(frozen=True)
class ServerInfo:
    url: str  # the server's base URL, ending in '/'
    token: str
    #: How it was found: explicit, environment, jupyterhub, parent, cwd.
    source: str = "explicit"

    def __repr__(self) -> str:
        return f"ServerInfo(url={self.url!r}, token={'***' if self.token else ''!r}, " \
               f"source={self.source!r})"


def _running_servers() -> list[dict[str, Any]]:
    from jupyter_server.serverapp import list_running_servers

    return list(list_running_servers())


def _server_info(entry: dict[str, Any], token: str | None, source: str) -> ServerInfo:
    url = entry["url"].rstrip("/") + "/"
    return ServerInfo(url=url, token=token if token else entry.get("token", ""), source=source)


def discover_server(url: str | None = None, token: str | None = None) -> ServerInfo:
    """Find the Jupyter server to talk to (see the module's docstring for the order)."""
    token = token or None
    if url:
        return ServerInfo(url.rstrip("/") + "/", token or "", "explicit")
    env_url, env_token = os.environ.get("HERA_STAGE_URL"), os.environ.get("HERA_STAGE_TOKEN")
    if env_url:
        return ServerInfo(env_url.rstrip("/") + "/", token or env_token or "", "environment")
    hub_token = os.environ.get("JUPYTERHUB_API_TOKEN")
    hub_url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if hub_token and hub_url:
        hub_url = hub_url.replace("://0.0.0.0:", "://127.0.0.1:")
        return ServerInfo(hub_url.rstrip("/") + "/", token or hub_token, "jupyterhub")
    servers = _running_servers()
    parent = os.environ.get("JPY_PARENT_PID")
    if parent:
        for entry in servers:
            if str(entry.get("pid")) == parent:
                # Under JupyterHub the server's own token may be empty: the hub's one works.
                return _server_info(entry, token or (None if entry.get("token") else hub_token),
                                    "parent")
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
    return _server_info(best, token, "cwd")


# ----- typed results --------------------------------------------------------------------------
def _html_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    out = ['<table class="hera-stage">']
    if header:
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
                   + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td style="text-align:left">{html.escape(str(c))}</td>'
                                    for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class Record(dict[str, Any]):
    """A JSON object from the server: a ``dict`` whose keys are also attributes
    (``job["state"] == job.state``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__!s} has no {name!r}") from None

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *(k for k in self if k.isidentifier())})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"

    def _repr_html_(self) -> str:
        rows = [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in self.items()]
        return f"<b>{type(self).__name__}</b>" + _html_table(rows)


class FileInfo(Record):
    """A catalogue file (a search result or ``Client.info``)."""

    @property
    def stores(self) -> list[str]:
        """Stores holding an available instance."""
        return sorted({i["store"] for i in self.get("instances", []) if i.get("available")})

    @property
    def path(self) -> str | None:
        """The full path of an available instance (online stores first), or None."""
        available = [i for i in self.get("instances", []) if i.get("available")]
        available.sort(key=lambda i: (i.get("store_kind") != "online", i["store"]))
        return available[0]["full_path"] if available else None

    def __repr__(self) -> str:
        obsid = self.get("obsid")
        return (f"FileInfo({self.get('name')!r}, {human_size(self.get('size'))}, "
                f"obsid {'-' if obsid is None else obsid}, "
                f"on {','.join(self.stores) or 'no store'})")

    def _repr_html_(self) -> str:
        rows = [("name", self.get("name")), ("size", human_size(self.get("size"))),
                ("obsid", self.get("obsid")), ("created", self.get("create_time", ""))]
        rows += [(alg, digest) for alg, digest in self.get("checksums", {}).items()]
        rows += [("instance", f"{i['store']}: {i['full_path']}"
                  + ("" if i.get("available") else " (unavailable)"))
                 for i in self.get("instances", [])]
        return "<b>FileInfo</b>" + _html_table(rows)


class Job(Record):
    """A job and its progress, as the server reported it when this object was made."""

    @property
    def finished(self) -> bool:
        return self.get("state") in FINISHED_JOB_STATES

    @property
    def succeeded(self) -> bool:
        return self.get("state") == JobState.SUCCEEDED

    @property
    def shown_state(self) -> str:
        """The state a person should read: ``cancelling`` for an unfinished job whose cancel
        was asked (its worker stops it within seconds), else ``state``."""
        state = str(self.get("state"))
        return "cancelling" if self.get("cancel_requested") and not self.finished else state

    @property
    def bytes_moved(self) -> int:
        """Bytes committed plus those on their way (``bytes_moving``: inside files)."""
        return int(self.get("bytes_done", 0)) + int(self.get("bytes_moving") or 0)

    @property
    def fraction(self) -> float:
        """Progress from 0 to 1 (by bytes moved; by files when the job has no bytes)."""
        if self.get("bytes_total"):
            return min(1.0, self.bytes_moved / self["bytes_total"])
        if self.get("files_total"):
            return min(1.0, (self["files_done"] + self.get("files_skipped", 0))
                       / self["files_total"])
        return 1.0 if self.succeeded else 0.0

    @property
    def percent(self) -> float:
        return round(100.0 * self.fraction, 1)

    def summary(self) -> str:
        text = (f"job {self.get('id')} {self.shown_state}: "
                f"{self.get('files_done', 0)}/{self.get('files_total', 0)} files, "
                f"{human_size(self.bytes_moved)}/{human_size(self.get('bytes_total', 0))}"
                f" ({self.percent:g}%), {self.get('method')} into {self.get('destination')}")
        if self.get("files_failed"):
            text += f", {self['files_failed']} failed"
        if self.get("error"):
            text += f": {self['error']}"
        return text

    def __repr__(self) -> str:
        return f"<Job {self.summary()[4:]}>"

    def _repr_html_(self) -> str:
        rows = [("job", self.get("id")), ("state", self.shown_state),
                ("files", f"{self.get('files_done', 0)} / {self.get('files_total', 0)}"
                 + (f" ({self['files_failed']} failed)" if self.get("files_failed") else "")),
                ("bytes", f"{human_size(self.bytes_moved)} / "
                 f"{human_size(self.get('bytes_total', 0))} ({self.percent:g}%)"),
                ("method", self.get("method")), ("destination", self.get("destination"))]
        if self.get("rate_bytes_per_s"):
            rows.append(("rate", human_size(self["rate_bytes_per_s"]) + "/s"))
        if self.get("error"):
            rows.append(("error", self["error"]))
        if self.get("missing"):
            rows.append(("missing", ", ".join(self["missing"][:20])))
        return "<b>Job</b>" + _html_table(rows)


class StagePlan(Record):
    """What a stage would do (``Client.stage(..., dry_run=True)``)."""

    def __repr__(self) -> str:
        text = (f"<StagePlan {self.get('files')} file(s), {human_size(self.get('bytes'))} into "
                f"{self.get('destination')} by {self.get('method')}; "
                f"{human_size(self.get('free_bytes'))} free"
                + ("" if self.get("fits", True) else " (NOT ENOUGH)"))
        if self.get("missing"):
            text += f"; {len(self['missing'])} missing"
        return text + "".join(f"; {line}" for line in self.notes()) + ">"

    def notes(self) -> list[str]:
        """What the destination holds already, and a job holding it (a launch is refused)."""
        notes = []
        if self.get("already_there"):
            notes.append(f"{self['already_there']} already there "
                         f"({human_size(self.get('already_there_bytes'))}): skipped")
        if self.get("conflicts"):
            notes.append(f"{self['conflicts']} in the way (other content at their names): "
                         f"they fail, nothing is overwritten")
        if self.get("busy_job") is not None:
            notes.append(f"job {self['busy_job']} is staging into this folder: a launch is "
                         f"refused until it ends")
        return notes

    def _repr_html_(self) -> str:
        rows = [("files", self.get("files")), ("bytes", human_size(self.get("bytes"))),
                ("destination", self.get("destination")), ("method", self.get("method")),
                ("free", human_size(self.get("free_bytes"))), ("fits", self.get("fits")),
                ("missing", ", ".join(self.get("missing", [])) or "none"),
                *[("note", note) for note in self.notes()]]
        return "<b>StagePlan</b>" + _html_table(rows)


class JobList(list):
    """A list of ``Job``."""

    def __repr__(self) -> str:
        return "\n".join(repr(j) for j in self) if self else "<no jobs>"

    def _repr_html_(self) -> str:
        rows = [(j.get("id"), j.shown_state, f"{j.get('files_done')}/{j.get('files_total')}",
                 f"{human_size(j.get('bytes_done'))}/{human_size(j.get('bytes_total'))}",
                 f"{j.percent:g}%", j.get("method"), j.get("destination"), j.get("created_at"))
                for j in self]
        return _html_table(rows, ("job", "state", "files", "bytes", "done", "method",
                                  "destination", "created"))


_ROW_TYPES: dict[str, type[Record]] = {"files": FileInfo}


class SearchResults:
    """One page of search results: ``results`` (typed rows), ``next_cursor`` (``None`` on the
    last page), ``total`` (when counted). Iterable and indexable like its rows."""

    def __init__(self, kind: str, results: Sequence[Mapping[str, Any]],
                 next_cursor: str | None = None,
                 total: int | None = None, search: Any = None) -> None:
        row_type = _ROW_TYPES.get(kind, Record)
        self.kind = kind
        self.results = [r if isinstance(r, row_type) else row_type(r) for r in results]
        self.next_cursor = next_cursor
        self.total = total
        self.search = search

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self.results if "name" in r]

    def to_dataframe(self) -> Any:
        """The rows as a pandas DataFrame (nested instances become a ``stores`` column)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe() needs pandas: pip install pandas") from None
        rows = []
        for r in self.results:
            row = {k: v for k, v in r.items() if not isinstance(v, (list, dict))}
            if isinstance(r, FileInfo):
                row["stores"] = ",".join(r.stores)
                row["path"] = r.path
            rows.append(row)
        return pd.DataFrame(rows)

    def _more(self) -> str:
        if self.total is not None and self.total > len(self):
            return f" of {self.total}"
        return " (more pages)" if self.next_cursor else ""

    def __repr__(self) -> str:
        head = f"<SearchResults {len(self)}{self._more()} {self.kind}>"
        return "\n".join([head, *(f"  {r!r}" for r in self.results[:20]),
                          *(["  ..."] if len(self) > 20 else [])])

    def _repr_html_(self) -> str:
        head = f"<b>{len(self)}{html.escape(self._more())} {html.escape(self.kind)}</b>"
        if self.kind == "files":
            rows = [(r.get("name"), human_size(r.get("size")),
                     "-" if r.get("obsid") is None else r["obsid"],
                     ",".join(r.stores) or "(no instance)") for r in self.results]
            return head + _html_table(rows, ("name", "size", "obsid", "stores"))
        keys = list(self.results[0]) if self.results else []
        cells = [[json.dumps(r.get(k)) if isinstance(r.get(k), (dict, list)) else r.get(k)
                  for k in keys] for r in self.results]
        return head + _html_table(cells, keys)


#: The name this type had before it was typed; kept for existing callers.
SearchPage = SearchResults


def search_body(query: str | dict[str, Any] | list[Any]) -> dict[str, Any]:
    """A search request's body: JSON (object, list, or text starting with '{' or '[') goes as
    ``search``, anything else as the one-line ``query``."""
    if isinstance(query, (dict, list)):
        return {"search": query}
    if query.lstrip().startswith(("{", "[")):
        return {"search": query}
    return {"query": query}


def error_lines(log_text: str) -> list[str]:
    """The lines of a job's log that name files it could not stage."""
    return [line for line in log_text.splitlines() if any(w in line for w in _ERROR_WORDS)]


# ----- the client -----------------------------------------------------------------------------
class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
        *, server: ServerInfo | None = None,
    ) -> None:
        self.server = server or discover_server(url, token)
        self.timeout = timeout
        self.session = requests.Session()
        if self.server.token:
            self.session.headers["Authorization"] = f"token {self.server.token}"

    def copy(self) -> Client:
        """Another client of the same server with its own HTTP session (for another thread)."""
        return Client(server=self.server, timeout=self.timeout)

    def __repr__(self) -> str:
        return f"<hera_stage_ext Client of {self.server.url} (found by {self.server.source})>"

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
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{self.server.url} answered {path} with no JSON: is the hera_stage_ext server "
                "extension enabled there?") from None

    # ----- catalogue ----------------------------------------------------------------------
    def status(self) -> Record:
        return Record(self.request("GET", "status"))

    def stores(self) -> list[Record]:
        return [Record(s) for s in self.request("GET", "stores")["stores"]]

    def search(
        self,
        query: str | dict[str, Any] | list[Any],
        *,
        kind: str = "files",
        limit: int = 100,
        cursor: str | None = None,
        count: bool = False,
        sort: str | None = None,
    ) -> SearchResults:
        """One page of a search (one-line query text, or the JSON search language)."""
        body = {**search_body(query), "kind": kind, "limit": limit, "count": count}
        if cursor:
            body["cursor"] = cursor
        if sort:
            body["sort"] = sort
        reply = self.request("POST", "search", body)
        return SearchResults(reply["kind"], reply["results"], reply["next_cursor"],
                             reply["total"], reply["search"])

    def iter_search(
        self, query: str | dict[str, Any] | list[Any], *, kind: str = "files", page_size: int = 1000,
        sort: str | None = None,
    ) -> Iterator[Record]:
        """Every result of a search, fetched page by page."""
        cursor = None
        while True:
            page = self.search(query, kind=kind, limit=page_size, cursor=cursor, sort=sort)
            yield from page.results
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def search_all(self, query: str | dict[str, Any] | list[Any], *, kind: str = "files",
                   sort: str | None = None) -> SearchResults:
        """Every result of a search as one ``SearchResults``."""
        rows = list(self.iter_search(query, kind=kind, sort=sort))
        return SearchResults(kind, rows, None, len(rows), query)

    def info(self, name: str) -> FileInfo:
        return FileInfo(self.request("GET", "files/" + quote(name, safe="")))

    def ingest_plan(self, store: str, globs: list[str]) -> dict[str, Any]:
        return self.request("POST", "ingest", {"store": store, "globs": globs, "plan": True})

    def ingest_paths(self, store: str, paths: list[str]) -> dict[str, Any]:
        return self.request("POST", "ingest", {"store": store, "paths": paths}, timeout=None)

    # ----- staging ------------------------------------------------------------------------
    @overload
    def stage(self, destination: str, query: str | dict[str, Any] | list[Any] | None = None, *,
              names: list[str] | None = None, method: str = "copy",
              dry_run: Literal[False] = False, force: bool = False,
              expires_in: str | float | None = None, expires_at: str | None = None) -> Job: ...

    @overload
    def stage(self, destination: str, query: str | dict[str, Any] | list[Any] | None = None, *,
              names: list[str] | None = None, method: str = "copy", dry_run: Literal[True],
              force: bool = False, expires_in: str | float | None = None,
              expires_at: str | None = None) -> StagePlan: ...

    @overload
    def stage(self, destination: str, query: str | dict[str, Any] | list[Any] | None = None, *,
              names: list[str] | None = None, method: str = "copy", dry_run: bool,
              force: bool = False, expires_in: str | float | None = None,
              expires_at: str | None = None) -> Job | StagePlan: ...

    def stage(
        self,
        destination: str,
        query: str | dict[str, Any] | list[Any] | None = None,
        *,
        names: list[str] | None = None,
        method: str = "copy",
        dry_run: bool = False,
        force: bool = False,
        expires_in: str | float | None = None,
        expires_at: str | None = None,
    ) -> Job | StagePlan:
        """Launch a staging job of the files a search matches (or of ``names``): the ``Job``;
        with ``dry_run``, what it would do: a ``StagePlan``. ``destination`` is relative to
        the server's root; ``expires_in`` (seconds, or text such as "7d") or ``expires_at``
        (ISO 8601): when ``clean(expired=True)`` may remove the folder."""
        if (query is None) == (names is None):
            raise ValueError("give a query or names, not both")
        body: dict[str, Any] = {"destination": destination, "method": method,
                                "dry_run": dry_run, "force": force}
        for key, value in (("expires_in", expires_in), ("expires_at", expires_at)):
            if value is not None:
                body[key] = value
        body.update(search_body(query) if query is not None else {"names": names})
        reply = self.request("POST", "stage", body)
        return StagePlan(reply) if dry_run else Job(reply)

    def staged(self) -> dict[str, Any]:
        """Your staged folders (sizes, expiry, whether intact) and how much you hold where."""
        return self.request("GET", "staged")

    def clean(self, folders: list[str] | None = None, *, expired: bool = False,
              dry_run: bool = False) -> dict[str, Any]:
        """Remove expired (``expired``) and/or chosen staged folders: only what is still the
        staged data, never anything else; ``dry_run``: say what would go."""
        return self.request("POST", "staged/clean", {"folders": list(folders or []),
                                                     "expired": expired, "dry_run": dry_run},
                            timeout=None)

    def transfer(self, peer: str, query: str | dict[str, Any] | list[Any] | None = None, *,
                 names: list[str] | None = None) -> Job:
        """Launch a transfer job sending the files a search matches (or ``names``) to the
        configured ``peer``: the ``Job`` (follow it with ``wait`` like a staging job)."""
        if (query is None) == (names is None):
            raise ValueError("give a query or names, not both")
        body: dict[str, Any] = {"peer": peer}
        body.update(search_body(query) if query is not None else {"names": names})
        return Job(self.request("POST", "transfers", body))

    def upload(self, directory: str, glob: str, *, store: str | None = None,
               peer: str | None = None, batch: int | None = None, parallel: int | None = None,
               manifest: str | None = None) -> Job:
        """Launch a bulk upload of what ``glob`` matches in ``directory`` (a path on the
        server's machine) into ``store`` or to ``peer``: the ``Job``; ``manifest`` is where its
        manifest JSON is written (default: upload-manifest.json in the directory)."""
        body: dict[str, Any] = {"directory": directory, "glob": glob}
        for key, value in (("store", store), ("peer", peer), ("batch", batch),
                           ("parallel", parallel), ("manifest", manifest)):
            if value is not None:
                body[key] = value
        return Job(self.request("POST", "upload", body))

    # ----- standing orders ----------------------------------------------------------------
    def orders(self) -> list[Record]:
        """Your standing orders."""
        return [Record(o) for o in self.request("GET", "standing-orders")["standing_orders"]]

    def order(self, name: str) -> Record:
        return Record(self.request("GET", _order_path(name)))

    def add_order(self, name: str, peer: str, query: str | dict[str, Any] | list[Any]) -> Record:
        """Create a standing order: what ``query`` matches is sent to ``peer`` as it arrives."""
        return Record(self.request("POST", "standing-orders",
                                   {"name": name, "peer": peer, **search_body(query)}))

    def pause_order(self, name: str) -> Record:
        return Record(self.request("POST", _order_path(name) + "/pause", {}))

    def resume_order(self, name: str) -> Record:
        return Record(self.request("POST", _order_path(name) + "/resume", {}))

    def delete_order(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", _order_path(name))

    def jobs(self) -> JobList:
        return JobList(Job(j) for j in self.request("GET", "jobs")["jobs"])

    def job(self, job_id: int) -> Job:
        return Job(self.request("GET", f"jobs/{_id(job_id)}"))

    def cancel(self, job_id: int) -> Job:
        return Job(self.request("POST", f"jobs/{_id(job_id)}/cancel", {}))

    def retry(self, job_id: int, force: bool = False) -> Job:
        """Queue again what a finished job did not stage (its failed and unfinished files)."""
        return Job(self.request("POST", f"jobs/{_id(job_id)}/retry", {"force": force}))

    def forget(self, job_id: int) -> dict[str, Any]:
        """Delete a finished job and its log (not what it staged)."""
        return self.request("DELETE", f"jobs/{_id(job_id)}")

    def log(self, job_id: int, offset: int = 0) -> tuple[str, int]:
        """The job's log from ``offset``: (text, next offset to ask for)."""
        reply = self.request("GET", f"jobs/{_id(job_id)}/log?offset={int(offset)}")
        return reply["text"], reply["next_offset"]

    def log_text(self, job_id: int) -> str:
        """The whole log as it is now."""
        parts: list[str] = []
        offset = 0
        while True:
            text, offset = self.log(job_id, offset)
            if not text:
                return "".join(parts)
            parts.append(text)

    def errors(self, job_id: int) -> list[str]:
        """The log lines of the files a job could not stage."""
        return error_lines(self.log_text(job_id))

    def wait(
        self, job_id: int, timeout: float | None = None, poll_seconds: float = 0.5,
        on_progress: Callable[[Job], None] | None = None, check: bool = False,
    ) -> Job:
        """Poll until the job finishes (or ``timeout`` seconds pass: TimeoutError); returns it.
        With ``check``, a job that did not succeed raises ``JobFailed`` with its errors."""
        job_id = _id(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.finished:
                if check and not job.succeeded:
                    raise JobFailed(job, self.errors(job_id))
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout} s")
            time.sleep(poll_seconds)


def _order_path(name: str) -> str:
    return "standing-orders/" + quote(name, safe="")


def _id(job_id: Any) -> int:
    if isinstance(job_id, dict):
        job_id = job_id["id"]
    try:
        return int(job_id)
    except (TypeError, ValueError):
        raise ClientError(f"a job id is a number, not {job_id!r}") from None


def _api_error(response: requests.Response) -> ApiError:
    try:
        payload = response.json()
        message = payload.get("message") or payload.get("reason") or response.reason
    except (json.JSONDecodeError, ValueError, AttributeError):
        payload = None
        message = response.reason or "error"
    if response.status_code == 403 and message in ("Forbidden", None, ""):
        message = "not authorised: wrong or missing token"
    if response.status_code == 404 and payload is None:
        message = (f"{response.url} not found: is the hera_stage_ext server extension enabled "
                   "on this server?")
    return ApiError(response.status_code, str(message), payload)
