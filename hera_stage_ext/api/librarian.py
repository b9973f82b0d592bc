"""The HERA Librarian's v1 RPC, so existing HERA scripts keep working against this server.

``POST <base_url>/hera-stage/librarian/api/<operation>`` with a form field ``request`` holding a
JSON object that carries an ``authenticator``. The reply is ``{"success": true, ...}`` or
``{"success": false, "message": ...}`` with a 4xx status. These requests are authenticated by the
authenticator (checked in constant time against ``c.StagingApp.librarian_authenticators``), not by
a Jupyter token, as the stock client has none.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from ..catalogue.search_parse import parse_search
from ..core import Core
from ..errors import InvalidRequest, NotFound, StagingError
from .base import MAX_BODY_BYTES, BaseHandler, check_unicode

LISTING_KINDS = {
    "file-listing-json": "files",
    "instance-listing-json": "instances",
    "obs-listing-json": "observations",
    "session-listing-json": "sessions",
}
STAGE_FORMAT = "stage-the-files-json"
#: Rows fetched per page while collecting a Librarian listing.
PAGE = 5000


def _file_row(f: dict[str, Any]) -> dict[str, Any]:
    created = datetime.fromisoformat(f["create_time"].rstrip("Z")).replace(tzinfo=timezone.utc)
    return {
        "name": f["name"], "type": f["type"], "create_time": int(created.timestamp()),
        "obsid": f["obsid"], "size": f["size"], "md5": f["checksums"].get("md5"),
    }


def _instance_row(i: dict[str, Any], stores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "store_name": i["store"],
        "store_ssh_host": stores.get(i["store"], {}).get("ssh_host", ""),
        "parent_dirs": os.path.dirname(i["path"]),
        "name": i["file"],
        "deletion_policy": i["deletion_policy"],
        "full_path_on_store": i["full_path"],
    }


def _obs_row(o: dict[str, Any]) -> dict[str, Any]:
    return {k: o[k] for k in ("obsid", "start_time_jd", "stop_time_jd", "start_lst_hr",
                              "session_id")}


def _session_row(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("id", "start_time_jd", "stop_time_jd")}


def op_ping(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    return {"message": "hello", "source": source}


def _stage(core: Core, request: dict[str, Any], search: Any) -> dict[str, Any]:
    """``stage-the-files-json``: launch a staging job; reply as v1 did."""
    user, dest = request.get("stage_user"), request.get("stage_dest")
    if not isinstance(user, str) or not isinstance(dest, str) or not dest:
        raise InvalidRequest("staging needs 'stage_user' and 'stage_dest'")
    # v1 only checked that the user existed, so anyone could stage into anyone's space: here
    # stage_user must be the server's owner.
    job = core.stage(dest, search=search, via="librarian", for_user=user)
    return {"destination": job["destination"], "n_instances": job["files_total"],
            "n_bytes": job["bytes_total"], "job_id": job["id"]}


def op_search(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    output_format = request.get("output_format", "file-listing-json")
    if output_format not in LISTING_KINDS and output_format != STAGE_FORMAT:
        raise InvalidRequest(
            f"unsupported output_format {output_format!r}; one of "
            f"{', '.join([*LISTING_KINDS, STAGE_FORMAT])}"
        )
    if "search" not in request:
        raise InvalidRequest("the request has no 'search'")
    search = parse_search(request["search"])
    if output_format == STAGE_FORMAT:
        return _stage(core, request, search)
    kind = LISTING_KINDS[output_format]
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = core.catalogue.search(kind, search, limit=PAGE, cursor=cursor)
        rows.extend(page["results"])
        if len(rows) > core.max_rpc_results:
            raise InvalidRequest(
                f"the search matches more than {core.max_rpc_results} rows; narrow it"
            )
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if kind == "files":
        results = [_file_row(r) for r in rows]
    elif kind == "instances":
        stores = {s["name"]: s for s in core.catalogue.stores()}
        results = [_instance_row(r, stores) for r in rows]
    elif kind == "observations":
        results = [_obs_row(r) for r in rows]
    else:
        results = [_session_row(r) for r in rows]
    return {"results": results}


def op_locate_file_instance(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    name = request.get("file_name")
    if not isinstance(name, str):
        raise InvalidRequest("the request needs 'file_name'")
    instance = core.catalogue.locate(name)
    store = core.catalogue.store(instance["store"])
    return {
        "full_path_on_store": instance["full_path"],
        "store_name": instance["store"],
        "store_path": store["path"],
        "store_ssh_host": store["ssh_host"],
    }


OPERATIONS: dict[str, Callable[[Core, dict[str, Any], str], dict[str, Any]]] = {
    "ping": op_ping,
    "search": op_search,
    "locate_file_instance": op_locate_file_instance,
}


def handle_rpc(core: Core, operation: str, raw_request: str | None) -> dict[str, Any]:
    """Run one RPC; raises StagingError on failure (the handler turns it into a reply)."""
    if raw_request is None:
        raise InvalidRequest("the form field 'request' is missing")
    try:
        request = json.loads(raw_request)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"'request' is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(request, dict):
        raise InvalidRequest("'request' must be a JSON object")
    check_unicode(request)
    source = core.librarian_source(request.get("authenticator"))
    op = OPERATIONS.get(operation)
    if op is None:
        raise NotFound(f"unknown operation {operation!r}")
    return op(core, request, source)


class LibrarianRPCHandler(BaseHandler):
    def check_xsrf_cookie(self) -> None:
        """The stock client posts a form with no cookie; the authenticator protects us."""

    @allow_unauthenticated
    async def post(self, operation: str) -> None:
        if len(self.request.body or b"") > MAX_BODY_BYTES:
            self._fail(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
            return
        try:
            raw = self.get_body_argument("request", default=None)
            if raw is not None:  # nested too deep for the parser: refused before it recurses
                self.check_json_depth(raw, "'request'")
        except web.HTTPError:  # tornado decodes the field when asked: not UTF-8
            self._fail(400, "the form field 'request' is not valid UTF-8")
            return
        except StagingError as exc:
            self._fail(exc.status, exc.message)
            return
        try:
            result = await self.run(handle_rpc, self.core, operation, raw)
        except StagingError as exc:
            self._fail(exc.status, exc.message)
            return
        self.reply({"success": True, **result})

    def _fail(self, status: int, message: str) -> None:
        self.reply({"success": False, "message": message}, status=status)
