"""The HERA Librarian's v1 RPC, so existing HERA scripts keep working against this server.

``POST <base_url>/hera-stage/librarian/api/<operation>`` with a form field ``request`` holding a
JSON object that carries an ``authenticator``. The reply is ``{"success": true, ...}`` or
``{"success": false, "message": ...}`` with a 4xx status (400 for a wrong or missing
authenticator, as v1). These requests are authenticated by the authenticator (checked in
constant time against ``c.StagingApp.librarian_authenticators``), not by a Jupyter token, as the
stock client has none. Every v1 operation is here (``OPERATIONS``); a JSON search may carry v1's
``#`` comments (stripped outside JSON strings only).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from ..catalogue import sessions, v1upload
from ..catalogue.catalogue import FileSpec
from ..catalogue.search_parse import parse_search
from ..core import Core
from ..errors import InvalidRequest, NotFound, StagingError, Unauthorized
from .base import MAX_BODY_BYTES, BaseHandler, check_unicode

LISTING_KINDS = {
    "file-listing-json": "files",
    "instance-listing-json": "instances",
    "obs-listing-json": "observations",
    "session-listing-json": "sessions",
}
STAGE_FORMAT = "stage-the-files-json"
#: Rows fetched per page while collecting a Librarian listing (at most the configured
#: largest page, ``c.StagingApp.max_search_limit``).
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
    search = _search(request, "search")
    if output_format == STAGE_FORMAT:
        return _stage(core, request, search)
    kind = LISTING_KINDS[output_format]
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = core.catalogue.search(kind, search, limit=min(PAGE, core.max_search_limit),
                                     cursor=cursor)
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
    name = _text(request, "file_name")
    instance = core.catalogue.locate(name)
    store = core.catalogue.store(instance["store"])
    return {
        "full_path_on_store": instance["full_path"],
        "store_name": instance["store"],
        "store_path": instance["path"],  # v1: the file's path within its store
        "store_ssh_host": store["ssh_host"],
    }


def _text(request: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = request.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"the request needs '{key}' (a string)")
    return value


def _number(request: dict[str, Any], key: str) -> float | None:
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"'{key}' must be a number")
    return float(value)


def strip_comments(text: str) -> str:
    """v1's ``#`` comments in a JSON search: from ``#`` to the end of the line, outside JSON
    strings only (v1 stripped inside strings too, breaking names that hold ``#``)."""
    out, in_string, escaped, skipping = [], False, False, False
    for char in text:
        if skipping:
            if char == "\n":
                skipping = False
                out.append(char)
            continue
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == "#":
            skipping = True
        else:
            out.append(char)
            in_string = char == '"'
    return "".join(out)


def _search(request: dict[str, Any], key: str) -> Any:
    if key not in request:
        raise InvalidRequest(f"the request has no '{key}'")
    value = request[key]
    return parse_search(strip_comments(value) if isinstance(value, str) else value)


def _mode(request: dict[str, Any]) -> bool:
    """v1's deletion ``mode``: "standard" deletes, "noop" only says what it would do."""
    mode = request.get("mode", "standard")
    if mode not in ("standard", "noop"):
        raise InvalidRequest(f"unexpected deletion operations mode {mode!r}")
    return mode == "noop"


def op_create_file_event(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    name, type_ = _text(request, "file_name"), _text(request, "type")
    payload = request.get("payload")
    if not isinstance(payload, dict):
        raise InvalidRequest("'payload' must be an object")
    if len(type_) > 64:
        raise InvalidRequest("an event type is at most 64 characters")
    core.catalogue.add_event(name, type_, payload)
    return {}


def op_assign_observing_sessions(core: Core, request: dict[str, Any], source: str
                                 ) -> dict[str, Any]:
    core.check_ingest_allowed()
    return {"new_sessions": sessions.assign_sessions(
        core.catalogue.db, _number(request, "minimum_start_jd"),
        _number(request, "maximum_start_jd"))}


def op_describe_session_without_event(core: Core, request: dict[str, Any], source: str
                                      ) -> dict[str, Any]:
    source_name = request.get("source")
    if not isinstance(source_name, str):  # "" is a source too: files registered without one
        raise InvalidRequest("the request needs 'source' (a string)")
    return sessions.describe_session_without_event(
        core.catalogue.db, source_name, _text(request, "event_type"))


def op_register_instances(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    """What ``add_obs_librarian.py`` sends: full paths on a store with their size, md5 and
    type. Copies already known are skipped; new ones are checked by the fixity audit first
    (never verified)."""
    core.check_ingest_allowed()
    store = core.catalogue.store(_text(request, "store_name"))
    file_info = request.get("file_info")
    if not isinstance(file_info, dict):
        raise InvalidRequest("'file_info' must be an object of full path to file information")
    prefix = store["path"].rstrip("/") + "/"
    paths, specs = [], []
    for full_path in sorted(file_info):
        info = file_info[full_path]
        if not full_path.startswith(prefix):
            raise InvalidRequest(f"file path {full_path!r} should start with {prefix!r}")
        if not isinstance(info, dict) or not isinstance(info.get("md5"), str) \
                or not isinstance(info.get("size"), int):
            raise InvalidRequest(f"{full_path!r}: the information needs 'md5' and 'size'")
        rel = full_path[len(prefix):]
        paths.append(rel)
        specs.append(FileSpec(name=os.path.basename(rel), size=info["size"],
                              checksums={"md5": info["md5"]}, source=source,
                              is_directory=os.path.isdir(full_path),
                              obsid=info.get("obsid") if isinstance(info.get("obsid"), int)
                              else None))
    known = core.catalogue.known_instances(store["name"], paths)
    new = [(p, sp) for p, sp in zip(paths, specs) if p not in known]
    if new:
        core.catalogue.register([sp for _, sp in new], store=store["name"],
                                paths=[p for p, _ in new])
    return {}


def op_set_one_file_deletion_policy(core: Core, request: dict[str, Any], source: str
                                    ) -> dict[str, Any]:
    core.stewardship.set_policy(_text(request, "file_name"), request.get("deletion_policy"),
                                store=_text(request, "restrict_to_store", optional=True))
    return {}


def op_delete_file_instances(core: Core, request: dict[str, Any], source: str
                             ) -> dict[str, Any]:
    result = core.stewardship.delete(
        _text(request, "file_name"), store=_text(request, "restrict_to_store", optional=True),
        dry_run=_mode(request), context=f"librarian:{source}")
    return {k: result[k] for k in ("n_deleted", "n_kept", "n_error", "instances")}


def op_delete_file_instances_matching_query(core: Core, request: dict[str, Any], source: str
                                            ) -> dict[str, Any]:
    stats = core.stewardship.delete_matching(
        _search(request, "query"), store=_text(request, "restrict_to_store", optional=True),
        dry_run=_mode(request), context=f"librarian:{source}")
    return {"stats": stats}


def op_launch_file_copy(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    """A transfer job sending the file to the peer named ``connection_name``; the peer files
    it under the path it has here (``remote_store_path`` and pre-staged uploads are v1's
    ssh copies, which our site-to-site protocol does not need)."""
    name, peer = _text(request, "file_name"), _text(request, "connection_name")
    if request.get("known_staging_store") is not None or \
            request.get("known_staging_subdir") is not None:
        raise InvalidRequest("pre-staged copies (known_staging_store) are not supported: the "
                             "peer pulls the bytes itself")
    core.catalogue.locate(name)  # NotFound when there is no usable copy to send
    job = core.transfer(peer, names=[name], via="librarian")
    return {"job_id": job["id"]}


def op_initiate_offload(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    return core.stewardship.offload(_text(request, "source_store_name"),
                                    _text(request, "dest_store_name"))


def op_initiate_upload(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    core.check_ingest_allowed()
    return v1upload.initiate(core.catalogue, request, source)


def op_complete_upload(core: Core, request: dict[str, Any], source: str) -> dict[str, Any]:
    core.check_ingest_allowed()
    return v1upload.complete(core.catalogue, request, source)


OPERATIONS: dict[str, Callable[[Core, dict[str, Any], str], dict[str, Any]]] = {
    "ping": op_ping,
    "search": op_search,
    "locate_file_instance": op_locate_file_instance,
    "create_file_event": op_create_file_event,
    "assign_observing_sessions": op_assign_observing_sessions,
    "describe_session_without_event": op_describe_session_without_event,
    "register_instances": op_register_instances,
    "set_one_file_deletion_policy": op_set_one_file_deletion_policy,
    "delete_file_instances": op_delete_file_instances,
    "delete_file_instances_matching_query": op_delete_file_instances_matching_query,
    "launch_file_copy": op_launch_file_copy,
    "initiate_offload": op_initiate_offload,
    "initiate_upload": op_initiate_upload,
    "complete_upload": op_complete_upload,
}


def _authenticate(core: Core, request: dict[str, Any]) -> str:
    """The source an authenticator acts as. A refusal is a 400, as v1 answered: the stock
    Python 2 client raises on a 401 before it reads the message."""
    try:
        return core.librarian_source(request.get("authenticator"))
    except Unauthorized as exc:
        raise InvalidRequest(f"authentication failed: {exc.message}") from None


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
    source = _authenticate(core, request)
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
