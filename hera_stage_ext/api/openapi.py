"""The OpenAPI 3 document of the native REST API (served at ``GET openapi.json``).

Written by hand next to the handlers; ``tests/test_openapi.py`` keeps it true: its paths must be
exactly the routes of ``routes.NATIVE_ROUTES``, and real replies must validate against it.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "Invalid request (message names the problem)",
        403: "Not authenticated, or not allowed",
        404: "Not found",
        409: "Conflicts with what is stored",
        413: "Request body too large",
        416: "Range not satisfiable",
        502: "The peer refused this site (e.g. a wrong secret)",
        503: "Cancelled after the search time limit (narrow the search), or a store or peer "
             "cannot be reached now",
        507: "Not enough free space at the destination",
    }
    return {str(c): _json(ERROR, meaning[c]) for c in codes}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "Checksums": {
        "type": "object",
        "description": "Algorithm ('md5', 'xxh3-128') to lowercase hex digest.",
        "additionalProperties": {"type": "string"},
    },
    "Instance": {
        "type": "object",
        "required": ["file", "store", "path", "full_path", "available", "deletion_policy"],
        "properties": {
            "file": {"type": "string"},
            "store": {"type": "string"},
            "path": {"type": "string", "description": "Relative to the store's root."},
            "full_path": {"type": "string"},
            "available": {"type": "boolean"},
            "store_kind": {"type": "string", "enum": ["online", "cold"]},
            "deletion_policy": {"type": "string", "enum": ["allowed", "disallowed"]},
            "create_time": {"type": "string", "format": "date-time"},
            "fixity": {"type": "string", "enum": ["unchecked", "ok", "bad", "missing"],
                       "description": "What the copy's last fixity check found; a bad or "
                                      "missing copy is unavailable."},
            "verified_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "File": {
        "type": "object",
        "required": ["name", "size", "type", "obsid", "create_time", "checksums"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string"},
            "size": {"type": "integer"},
            "is_directory": {"type": "boolean"},
            "checksums": {"$ref": "#/components/schemas/Checksums"},
            "create_time": {"type": "string", "format": "date-time"},
            "obsid": {"type": ["integer", "null"]},
            "source": {"type": "string"},
            "metadata": {"type": "object"},
            "instances": {"type": "array", "items": {"$ref": "#/components/schemas/Instance"}},
        },
    },
    "Observation": {
        "type": "object",
        "required": ["obsid", "start_time_jd", "stop_time_jd", "start_lst_hr", "session_id"],
        "properties": {
            "obsid": {"type": "integer"},
            "start_time_jd": {"type": "number"},
            "stop_time_jd": {"type": "number"},
            "start_lst_hr": {"type": "number"},
            "session_id": {"type": ["integer", "null"]},
        },
    },
    "Session": {
        "type": "object",
        "required": ["id", "start_time_jd", "stop_time_jd"],
        "properties": {
            "id": {"type": "integer"},
            "start_time_jd": {"type": "number"},
            "stop_time_jd": {"type": "number"},
        },
    },
    "Event": {
        "type": "object",
        "required": ["type", "time", "payload"],
        "properties": {
            "type": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "payload": {"type": "object"},
        },
    },
    "FileDetail": {
        "allOf": [
            {"$ref": "#/components/schemas/File"},
            {
                "type": "object",
                "required": ["instances", "observation", "events"],
                "properties": {
                    "observation": {
                        "oneOf": [{"$ref": "#/components/schemas/Observation"}, {"type": "null"}]
                    },
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                },
            },
        ]
    },
    "Store": {
        "type": "object",
        "required": ["name", "path", "kind", "available"],
        "properties": {
            "name": {"type": "string"},
            "path": {"type": "string"},
            "kind": {"type": "string", "enum": ["online", "cold"]},
            "available": {"type": "boolean"},
            "ssh_host": {"type": "string"},
            "options": {"type": "object", "description": "a cold store's buffer, "
                        "buffer_bytes and volume_key"},
            "instances": {"type": "integer"},
        },
    },
    "Status": {
        "type": "object",
        "required": ["version", "site_name", "database", "counts", "allow_ingest"],
        "properties": {
            "version": {"type": "string"},
            "site_name": {"type": "string"},
            "database": {"type": "string", "enum": ["sqlite", "postgresql"]},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "allow_ingest": {"type": "boolean"},
            "user": {"type": ["string", "null"]},
        },
    },
    "SearchRequest": {
        "type": "object",
        "description": "Exactly one of 'search' (the Librarian JSON language, as an object or "
        "as JSON text) or 'query' (the one-line syntax).",
        "properties": {
            "search": {"type": ["object", "array", "string"]},
            "query": {"type": "string"},
            "kind": {"type": "string", "enum": ["files", "instances", "observations", "sessions"],
                     "default": "files"},
            "limit": {"type": "integer", "minimum": 1, "default": 100},
            "cursor": {"type": ["string", "null"]},
            "count": {"type": "boolean", "default": False},
            "sort": {"type": ["string", "null"],
                     "description": "A column such as 'name', 'obsid', 'size', 'create_time'; "
                     "a leading '-' sorts descending."},
        },
    },
    "SearchReply": {
        "type": "object",
        "required": ["kind", "results", "next_cursor", "total", "search"],
        "properties": {
            "kind": {"type": "string"},
            "results": {"type": "array", "items": {"type": "object"}},
            "next_cursor": {"type": ["string", "null"]},
            "total": {"type": ["integer", "null"]},
            "search": {"description": "The JSON search that ran (a 'query' translated)."},
        },
    },
    "IngestRequest": {
        "type": "object",
        "required": ["store"],
        "properties": {
            "store": {"type": "string"},
            "globs": {"type": "array", "items": {"type": "string"}, "default": ["*"]},
            "plan": {"type": "boolean", "description": "Only list the new paths."},
            "paths": {"type": "array", "items": {"type": "string"},
                      "description": "Ingest exactly these store-relative paths."},
        },
    },
    "IngestReply": {
        "type": "object",
        "required": ["errors"],
        "properties": {
            "matched": {"type": "integer"},
            "unchanged": {"type": "integer"},
            "registered": {"type": "integer"},
            "instances_added": {"type": "integer"},
            "store": {"type": "string"},
            "todo": {"type": "array", "items": {"type": "string"}},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    },
}

SCHEMAS["StageRequest"] = {
    "type": "object",
    "required": ["destination"],
    "description": "Exactly one of 'names', 'search' (JSON) or 'query' (one-line text); the "
    "search is resolved to file names at launch, and the job stages exactly those.",
    "properties": {
        "names": {"type": "array", "items": {"type": "string"}},
        "search": {"type": ["object", "array", "string"]},
        "query": {"type": "string"},
        "destination": {"type": "string",
                        "description": "A folder, relative to the server's root directory "
                        "(method contents: a contents path, relative to the contents "
                        "manager's root)."},
        "method": {"type": "string",
                   "enum": ["copy", "hardlink", "symlink", "reflink", "contents"],
                   "default": "copy",
                   "description": "contents: through the server's contents manager, in "
                   "chunks (for contents not on a local file system)."},
        "dry_run": {"type": "boolean", "default": False},
        "force": {"type": "boolean", "default": False,
                  "description": "Launch even when free space looks too small."},
        "with_items": {"type": "boolean", "default": False,
                       "description": "Dry run at the site service (set by the user's "
                       "server): also list the items, for the user's server to look at "
                       "the destination."},
        "expires_in": {"type": ["number", "string"],
                       "description": "When the staged folder expires (`POST staged/clean` "
                       "with expired: true may then remove it): seconds, or text such as "
                       "'7d', '12h', '90m', '2w'. Default: the site's staged_expiry_days."},
        "expires_at": {"type": "string", "format": "date-time",
                       "description": "The same as an ISO 8601 time (UTC unless it says)."},
    },
}
SCHEMAS["TransferRequest"] = {
    "type": "object",
    "required": ["peer"],
    "description": "Exactly one of 'names', 'search' (JSON) or 'query' (one-line text), "
    "resolved to file names at launch; the job sends exactly those to the peer.",
    "properties": {
        "names": {"type": "array", "items": {"type": "string"}},
        "search": {"type": ["object", "array", "string"]},
        "query": {"type": "string"},
        "peer": {"type": "string", "description": "A configured peer (GET peers)."},
    },
}
SCHEMAS["DryRun"] = {
    "type": "object",
    "required": ["destination", "method", "files", "bytes", "missing", "free_bytes", "fits"],
    "properties": {
        "destination": {"type": "string"},
        "method": {"type": "string"},
        "files": {"type": "integer"},
        "bytes": {"type": "integer"},
        "missing": {"type": "array", "items": {"type": "string"}},
        "bytes_needed": {"type": "integer"},
        "already_there": {"type": ["integer", "null"], "description":
                          "Files found at their place in the destination with the catalogue's "
                          "size (or, for symlink, linked to their instance): the job checks "
                          "and skips them. Null where the destination is not a local folder."},
        "free_bytes": {"type": ["integer", "null"],
                       "description": "null: not a local file system (method contents with "
                       "a manager that is not file-based), free space unknown."},
        "fits": {"type": "boolean"},
        "already_there": {"type": ["integer", "null"],
                          "description": "Files whose final name already holds them (same "
                          "size and checksum): the job skips them. null: the destination "
                          "cannot be looked at from here."},
        "already_there_bytes": {"type": ["integer", "null"]},
        "conflicts": {"type": ["integer", "null"],
                      "description": "Final names holding something else: those files fail "
                      "(nothing is overwritten)."},
        "not_checked": {"type": "integer",
                        "description": "Files not looked at (the preview's work is bounded: "
                        "10,000 names, 256 MiB hashed); the job still skips or refuses each "
                        "as it comes."},
        "busy_job": {"type": ["integer", "null"],
                     "description": "An unfinished job already staging into this folder: a "
                     "launch is refused until it ends (or is cancelled)."},
    },
}
SCHEMAS["Job"] = {
    "type": "object",
    "required": ["id", "owner", "kind", "state", "destination", "method", "files_total",
                 "bytes_total", "files_done", "bytes_done", "files_failed", "files_skipped",
                 "missing"],
    "properties": {
        "id": {"type": "integer"},
        "owner": {"type": "string"},
        "kind": {"type": "string"},
        "state": {"type": "string",
                  "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "destination": {"type": "string"},
        "method": {"type": "string"},
        "search": {},
        "files_total": {"type": "integer"},
        "bytes_total": {"type": "integer"},
        "files_done": {"type": "integer"},
        "bytes_done": {"type": "integer"},
        "bytes_moving": {"type": "integer", "description": "Bytes written (or received by "
                         "the peer) and not yet committed: progress inside files, never "
                         "counted in bytes_done; 0 unless the job is running. Progress in "
                         "bytes is bytes_done + bytes_moving (rate_bytes_per_s and eta_s "
                         "use it)."},
        "files_failed": {"type": "integer"},
        "files_skipped": {"type": "integer"},
        "missing": {"type": "array", "items": {"type": "string"}},
        "error": {"type": ["string", "null"]},
        "created_at": {"type": ["string", "null"]},
        "started_at": {"type": ["string", "null"]},
        "finished_at": {"type": ["string", "null"]},
        "rate_bytes_per_s": {"type": ["number", "null"]},
        "eta_s": {"type": ["number", "null"]},
        "marker": {"type": ["string", "null"],
                   "enum": ["STAGING-IN-PROGRESS", "STAGING-SUCCEEDED", "STAGING-ERRORS", None],
                   "description": "the marker file in the destination now (GET jobs and "
                                  "jobs/{job_id} only); null: none"},
    },
}

SCHEMAS["UploadRequest"] = {
    "type": "object",
    "required": ["directory", "glob"],
    "additionalProperties": False,
    "properties": {
        "directory": {"type": "string", "description": "A folder inside the allowed roots "
                      "(relative: to the server's root directory)."},
        "glob": {"type": "string", "description": "Pattern relative to the directory, e.g. "
                 "'**/*.uvh5'."},
        "store": {"type": "string", "description": "Upload into this store (give this or "
                  "peer)."},
        "peer": {"type": "string", "description": "Upload to this peer, through the local "
                 "c.StagingApp.upload_store."},
        "batch": {"type": "integer", "minimum": 1, "default": 16,
                  "description": "Files a stream claims at a time."},
        "parallel": {"type": ["integer", "null"], "minimum": 1,
                     "description": "Streams (default: the worker's)."},
        "manifest": {"type": "string", "description": "Where the manifest JSON is written "
                     "(inside the allowed roots; default: upload-manifest.json in the "
                     "directory)."},
    },
}

SCHEMAS["Peer"] = {
    "type": "object",
    "required": ["name", "url", "reachable", "site", "error", "accepts_from"],
    "properties": {
        "name": {"type": "string"},
        "url": {"type": ["string", "null"],
                "description": "null: a site that only sends here, or an rclone peer"},
        "reachable": {"type": ["boolean", "null"],
                      "description": "an authenticated ping answered (null: not pinged)"},
        "site": {"type": ["string", "null"], "description": "the site name it answered with"},
        "error": {"type": "string"},
        "accepts_from": {"type": "boolean",
                         "description": "this site accepts transfers from it"},
        "type": {"type": "string", "enum": ["rclone"],
                 "description": "only on a peer reached with rclone"},
        "remote": {"type": "string", "description": "an rclone peer's remote and path"},
    },
}

SCHEMAS["StandingOrderRequest"] = {
    "type": "object",
    "required": ["name", "peer"],
    "additionalProperties": False,
    "description": "Exactly one of 'search' (JSON) or 'query' (one-line text), validated now; "
    "the order sends what it matches, as files arrive, until deleted.",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
        "peer": {"type": "string", "minLength": 1,
                 "description": "A configured peer (GET peers)."},
        "search": {"type": ["object", "array", "string"]},
        "query": {"type": "string"},
    },
}
SCHEMAS["StandingOrder"] = {
    "type": "object",
    "required": ["name", "owner", "peer", "search", "query", "paused", "created_at",
                 "last_evaluated_at", "last_launched_at", "last_job_id", "last_files",
                 "last_message"],
    "properties": {
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "peer": {"type": "string"},
        "search": {"type": ["object", "array"], "description": "The JSON search it runs."},
        "query": {"type": "string", "description": "The one-line text it was given as ('' "
                  "when given as JSON)."},
        "paused": {"type": "boolean"},
        "created_at": {"type": "string"},
        "last_evaluated_at": {"type": ["string", "null"]},
        "last_launched_at": {"type": ["string", "null"]},
        "last_job_id": {"type": ["integer", "null"],
                        "description": "The transfer job its last launch created."},
        "last_files": {"type": "integer", "description": "Files that job sends."},
        "last_message": {"type": "string", "description": "What the last evaluation did."},
    },
}

SCHEMAS["StoreChoice"] = {
    "type": "object", "properties": {"store": {"type": "string"}},
}
SCHEMAS["FixityFinding"] = {
    "type": "object", "required": ["name", "store", "path", "state", "detail"],
    "properties": {
        "name": {"type": "string"}, "store": {"type": "string"}, "path": {"type": "string"},
        "state": {"type": "string", "enum": ["unchecked", "ok", "bad", "missing"]},
        "detail": {"type": "string"},
        "verified_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
SCHEMAS["FixityReport"] = {
    "type": "object", "required": ["instances", "summary", "oldest_check"],
    "properties": {
        "instances": {"type": "array", "items": {"$ref": "#/components/schemas/FixityFinding"}},
        "summary": {"type": "object", "additionalProperties": {"type": "integer"}},
        "oldest_check": {"type": ["string", "null"], "format": "date-time"},
    },
}
SCHEMAS["FixityChecks"] = {
    "type": "object", "required": ["instances"],
    "properties": {
        "instances": {"type": "array", "items": {"$ref": "#/components/schemas/FixityFinding"}},
    },
}

NAME_PARAMETER = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
JOB_PARAMETER = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}


def openapi_document(version: str, max_search_limit: int | None = None) -> dict[str, Any]:
    """The document; ``max_search_limit`` (this server's ``c.StagingApp.max_search_limit``)
    becomes the maximum of a search request's ``limit``."""
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    schemas = SCHEMAS
    if max_search_limit is not None:
        request = SCHEMAS["SearchRequest"]
        limit = {**request["properties"]["limit"], "maximum": max_search_limit}
        schemas = {**SCHEMAS, "SearchRequest": {
            **request, "properties": {**request["properties"], "limit": limit}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hera_stage_ext",
            "version": version,
            "description": "Search a HERA-style archive, stage files, move data between sites.",
        },
        "servers": [{"url": "/hera-stage/api"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "'token <Jupyter server token>'"},
            },
        },
        "security": [{"token": []}],
        "paths": {
            "/status": {"get": {
                "summary": "What this server is and holds",
                "responses": {"200": _json(ref("Status"), "Status"), **_errors(403)},
            }},
            "/stores": {"get": {
                "summary": "Configured stores",
                "responses": {
                    "200": _json({"type": "object", "required": ["stores"], "properties": {
                        "stores": {"type": "array", "items": ref("Store")}}}, "Stores"),
                    **_errors(403),
                },
            }},
            "/search": {"post": {
                "summary": "Search files, instances, observations or sessions",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("SearchRequest")}}},
                "responses": {"200": _json(ref("SearchReply"), "One page of results"),
                              **_errors(400, 403, 413, 503)},
            }},
            "/files/{name}": {"get": {
                "summary": "A file with its instances, observation and events",
                "parameters": [NAME_PARAMETER],
                "responses": {"200": _json(ref("FileDetail"), "The file"),
                              **_errors(400, 403, 404)},
            }},
            "/files/{name}/content": {"get": {
                "summary": "Download a file (HTTP Range supported); a directory as a tar stream",
                "parameters": [NAME_PARAMETER,
                               {"name": "Range", "in": "header", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The bytes", "content": {
                        "application/octet-stream": {}, "application/x-tar": {}}},
                    "206": {"description": "The requested range",
                            "content": {"application/octet-stream": {}}},
                    **_errors(400, 403, 404, 416),
                },
            }},
            "/files/{name}/members": {"get": {
                "summary": "What a directory data set holds: member paths, sizes and types",
                "parameters": [NAME_PARAMETER],
                "responses": {"200": _json({
                    "type": "object", "required": ["name", "members", "truncated"],
                    "properties": {
                        "name": {"type": "string"}, "truncated": {"type": "boolean"},
                        "members": {"type": "array", "items": {
                            "type": "object", "required": ["path", "size", "type"],
                            "properties": {
                                "path": {"type": "string"},
                                "size": {"type": ["integer", "null"]},
                                "type": {"enum": ["file", "folder", "link"]}}}}}},
                    "The members (at most 10,000)"), **_errors(400, 403, 404)},
            }},
            "/ingest": {"post": {
                "summary": "Register what lies on a store (when ingest is allowed)",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("IngestRequest")}}},
                "responses": {"200": _json(ref("IngestReply"), "What was registered"),
                              **_errors(400, 403, 404, 413)},
            }},
            "/stage": {"post": {
                "summary": "Stage files into a folder of yours (or preview with dry_run)",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("StageRequest")}}},
                "responses": {
                    "200": _json(ref("DryRun"), "What the job would do (dry_run)"),
                    "202": _json(ref("Job"), "The job, queued"),
                    **_errors(400, 403, 404, 409, 413, 503, 507),
                },
            }},
            "/jobs": {"get": {
                "summary": "Your jobs, newest first",
                "responses": {
                    "200": _json({"type": "object", "required": ["jobs"], "properties": {
                        "jobs": {"type": "array", "items": ref("Job")}}}, "Jobs"),
                    **_errors(403),
                },
            }},
            "/jobs/{job_id}": {
                "get": {
                    "summary": "One job with its progress",
                    "parameters": [JOB_PARAMETER],
                    "responses": {"200": _json(ref("Job"), "The job"), **_errors(400, 403, 404)},
                },
                "delete": {
                    "summary": "Forget a finished job: its record and its log (not the files "
                               "it staged)",
                    "parameters": [JOB_PARAMETER],
                    "responses": {
                        "200": _json({"type": "object", "required": ["deleted"],
                                      "properties": {"deleted": {"type": "integer"}}},
                                     "The id of the job forgotten"),
                        **_errors(400, 403, 404, 409),
                    },
                },
            },
            "/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel a job (its worker stops within seconds)",
                "parameters": [JOB_PARAMETER],
                "responses": {"200": _json(ref("Job"), "The job"), **_errors(400, 403, 404)},
            }},
            "/jobs/{job_id}/retry": {"post": {
                "summary": "Queue again the files a finished job did not stage (failed, "
                           "unfinished, or missing then and available now); files staged "
                           "already are not copied again",
                "parameters": [JOB_PARAMETER],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"force": {
                        "type": "boolean", "description": "retry even if the free space "
                                                          "looks too small"}}}}}},
                "responses": {
                    "202": _json(ref("Job"), "The job, queued again"),
                    **_errors(400, 403, 404, 409, 507),
                },
            }},
            "/jobs/{job_id}/log": {"get": {
                "summary": "The job's log from a byte offset (whole lines)",
                "parameters": [JOB_PARAMETER,
                               {"name": "offset", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 0}}],
                "responses": {
                    "200": _json({"type": "object", "required": ["text", "next_offset"],
                                  "properties": {"text": {"type": "string"},
                                                 "next_offset": {"type": "integer"}}}, "Log"),
                    **_errors(400, 403, 404),
                },
            }},
            "/peers": {"get": {
                "summary": "Sites this one sends to (c.StagingApp.peers), each pinged with "
                           "this site's secret, and the sites it accepts transfers from "
                           "(c.StagingApp.peer_secrets)",
                "responses": {
                    "200": _json({"type": "object", "required": ["peers"], "properties": {
                        "peers": {"type": "array", "items": ref("Peer")}}}, "Peers"),
                    **_errors(403),
                },
            }},
            "/transfers": {"post": {
                "summary": "Send files to a peer: a transfer job (GET jobs/{job_id} follows "
                           "it like a staging job; destination 'peer:<name>')",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": ref("TransferRequest")}}},
                "responses": {
                    "202": _json(ref("Job"), "The job, queued"),
                    **_errors(400, 403, 404, 413, 502),
                },
            }},
            "/upload": {"post": {
                "summary": "Upload a directory's files (by glob) into a store or to a peer: "
                           "checksummed, copied and verified in parallel batches, registered, "
                           "with a manifest; a re-run skips what is there already",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ref("UploadRequest")}}},
                "responses": {
                    "202": _json(ref("Job"), "The upload job, queued"),
                    **_errors(400, 403, 404, 413, 503),
                    "409": _json(ERROR, "An unfinished (queued or running) upload job writes "
                                 "the same manifest (symlinks resolved) or uploads into the "
                                 "same folder of the store: its id is in 'job_id'; nothing was "
                                 "written. Run again once it has finished."),
                },
            }},
            "/standing-orders": {
                "get": {
                    "summary": "Your standing orders",
                    "responses": {
                        "200": _json({"type": "object", "required": ["standing_orders"],
                                      "properties": {"standing_orders": {
                                          "type": "array", "items": ref("StandingOrder")}}},
                                     "Standing orders, by name"),
                        **_errors(403),
                    },
                },
                "post": {
                    "summary": "Create a standing order: what its search matches is sent to "
                               "the peer (one transfer job per evaluation) when files are "
                               "ingested here and periodically; files at the peer already "
                               "are never sent again",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": ref("StandingOrderRequest")}}},
                    "responses": {
                        "201": _json(ref("StandingOrder"), "The order"),
                        **_errors(400, 403, 404, 409, 413),
                    },
                },
            },
            "/standing-orders/{name}": {
                "get": {
                    "summary": "One standing order, with what its last evaluation did",
                    "parameters": [NAME_PARAMETER],
                    "responses": {"200": _json(ref("StandingOrder"), "The order"),
                                  **_errors(400, 403, 404)},
                },
                "delete": {
                    "summary": "Delete a standing order (the jobs it launched run on)",
                    "parameters": [NAME_PARAMETER],
                    "responses": {
                        "200": _json({"type": "object", "required": ["deleted"],
                                      "properties": {"deleted": {"type": "string"}}},
                                     "The name of the order deleted"),
                        **_errors(400, 403, 404),
                    },
                },
            },
            "/standing-orders/{name}/pause": {"post": {
                "summary": "Pause a standing order: it is not evaluated until resumed",
                "parameters": [NAME_PARAMETER],
                "responses": {"200": _json(ref("StandingOrder"), "The order"),
                              **_errors(400, 403, 404)},
            }},
            "/standing-orders/{name}/resume": {"post": {
                "summary": "Resume a standing order: evaluated at once, sending what matched "
                           "while it was paused",
                "parameters": [NAME_PARAMETER],
                "responses": {"200": _json(ref("StandingOrder"), "The order"),
                              **_errors(400, 403, 404)},
            }},
            "/fixity": {"get": {
                "summary": "Copies by what their last fixity check found (default: bad and "
                           "missing), with a count of every state and the oldest check",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {
                        "type": "string", "enum": ["unchecked", "ok", "bad", "missing"]}},
                    {"name": "store", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {"200": _json(ref("FixityReport"), "Findings"),
                              **_errors(400, 403, 404)},
            }},
            "/fixity/audit": {"post": {
                "summary": "Run one round of the periodic fixity audit now (within its budget)",
                "responses": {"200": _json(ref("FixityChecks"), "What it checked"),
                              **_errors(400, 403)},
            }},
            "/files/{name}/fixity": {"post": {
                "summary": "Re-hash the file's copies on online stores now",
                "parameters": [NAME_PARAMETER],
                "requestBody": {"content": {"application/json": {"schema": ref("StoreChoice")}}},
                "responses": {"200": _json(ref("FixityChecks"), "What each check found"),
                              **_errors(400, 403, 404, 413)},
            }},
            "/files/{name}/repair": {"post": {
                "summary": "Replace the file's bad or missing copies with the bytes of a good "
                           "copy at this site (re-verified; every step an event)",
                "parameters": [NAME_PARAMETER],
                "requestBody": {"content": {"application/json": {"schema": ref("StoreChoice")}}},
                "responses": {"200": _json({"type": "object"}, "Repaired and failed copies"),
                              **_errors(400, 403, 404, 409, 413)},
            }},
            "/files/{name}/deletion-policy": {"post": {
                "summary": "Set the deletion policy of one copy (the first, on 'store' if "
                           "given) or of every copy ('all')",
                "parameters": [NAME_PARAMETER],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["policy"], "properties": {
                        "policy": {"type": "string", "enum": ["allowed", "disallowed"]},
                        "store": {"type": "string"}, "all": {"type": "boolean"}}}}}},
                "responses": {"200": _json({"type": "object"}, "The copies changed"),
                              **_errors(400, 403, 404, 413)},
            }},
            "/delete-instances": {"post": {
                "summary": "Delete copies of files (names, a search or a query) that the "
                           "deletion rule allows: policy 'allowed' and enough other verified "
                           "copies; a file's last copy never",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "properties": {
                        "names": {"type": "array", "items": {"type": "string"}},
                        "search": {}, "query": {"type": "string"},
                        "store": {"type": "string"}, "dry_run": {"type": "boolean"}}}}}},
                "responses": {"200": _json({"type": "object"}, "Per file, each copy's outcome"),
                              **_errors(400, 403, 404, 413, 503)},
            }},
            "/offload": {"post": {
                "summary": "Move the copies of one store onto another, verified, then delete "
                           "the source copies under the deletion rule",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["source", "dest"], "properties": {
                        "source": {"type": "string"}, "dest": {"type": "string"},
                        "wait": {"type": "boolean"}}}}}},
                "responses": {"200": _json({"type": "object"}, "Launched, or what it did"),
                              **_errors(400, 403, 404, 409, 413)},
            }},
            "/staged": {"get": {
                "summary": "Your staged folders (sizes, expiry, whether still intact) and how "
                           "much staged data you hold where, with your quota",
                "responses": {"200": _json({"type": "object", "properties": {
                    "folders": {"type": "array", "items": {"type": "object"}},
                    "total_bytes": {"type": "integer"}, "expired_bytes": {"type": "integer"},
                    "unexpired_bytes": {"type": "integer"},
                    "quota_bytes": {"type": ["integer", "null"]},
                    "by_root": {"type": "object"}}}, "Staged folders"),
                              **_errors(403)},
            }},
            "/staged/clean": {"post": {
                "summary": "Remove expired or chosen staged folders of yours: only what is "
                           "still the staged data (checked by checksum), never anything else",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "properties": {
                        "expired": {"type": "boolean"},
                        "folders": {"type": "array", "items": {"type": "string"}},
                        "dry_run": {"type": "boolean"}}}}}},
                "responses": {"200": _json({"type": "object"}, "Per folder, what was (or "
                                           "would be) removed and what was kept, and why"),
                              **_errors(400, 403, 404)},
            }},
            "/staged/records": {"get": {
                "summary": "The records of your staged folders (what each must still hold); "
                           "what a server in site mode checks your folders against",
                "responses": {"200": _json({"type": "object"}, "Records"), **_errors(403)},
            }},
            "/staged/records/cleaned": {"post": {
                "summary": "Record that the folders of these finished jobs of yours were "
                           "cleaned (sent by your server in site mode)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["jobs"], "properties": {
                        "jobs": {"type": "array", "items": {"type": "integer"}}}}}}},
                "responses": {"200": _json({"type": "object"}, "The jobs marked"),
                              **_errors(400, 403)},
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document"),
                              **_errors(403)},
            }},
        },
    }
