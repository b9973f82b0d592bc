"""The OpenAPI 3.1 document of the native REST API (served at ``GET openapi.json``), generated
from the request models (``models.py``), the reply models (``replies.py``) and the operations
below, one per served route and method.

``tests/test_auth.py`` keeps it true: its paths and methods must be exactly the routes and
verbs of ``routes.NATIVE_ROUTES``, and real replies must validate against it.
``python -m hera_stage_ext.api.openapi FILE`` writes it for the panel's TypeScript types
(``labextension/openapi.json``, kept current by ``tests/test_openapi_file.py``).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from ..catalogue.search import MAX_LIMIT
from ..version import __version__
from . import models as rq
from . import replies as rp

REF_TEMPLATE = "#/components/schemas/{model}"

ERROR_MEANINGS = {
    400: "Invalid request (message names the problem)",
    403: "Not authenticated, or not allowed",
    404: "Not found",
    409: "Conflicts with what is stored",
    413: "Request body too large",
    416: "Range not satisfiable",
    502: "The peer refused this site (e.g. a wrong secret)",
    503: "Cancelled after the search time limit (narrow the search), or a store or peer cannot "
         "be reached now",
    507: "Not enough free space at the destination",
}
#: The schema of a path parameter, by its name in the route template.
PATH_PARAMETERS = {"name": {"type": "string"}, "job_id": {"type": "integer"}}
ANY_OBJECT: dict[str, Any] = {"type": "object"}

Reply = type[BaseModel] | dict[str, Any]


@dataclass(frozen=True)
class Operation:
    """One verb of one route: what it does, its body, its replies and its errors."""

    summary: str
    replies: Mapping[int, Reply]
    errors: tuple[int, ...] = (403,)
    body: type[rq.RequestModel] | None = None
    body_required: bool = True
    query: type[rq.QueryModel] | None = None
    #: Error statuses whose description says more than ``ERROR_MEANINGS``.
    error_notes: Mapping[int, str] = field(default_factory=dict)


OPERATIONS: dict[str, dict[str, Operation]] = {
    "/status": {"get": Operation("What this server is and holds", {200: rp.Status})},
    "/stores": {"get": Operation("Configured stores", {200: rp.StoreList})},
    "/search": {"post": Operation(
        "Search files, instances, observations or sessions", {200: rp.SearchReply},
        (400, 403, 413, 503), rq.SearchRequest)},
    "/files/{name}": {"get": Operation(
        "A file with its instances, observation and events", {200: rp.FileDetail},
        (400, 403, 404))},
    "/files/{name}/content": {"get": Operation(
        "Download a file (HTTP Range supported); a directory as a tar stream",
        {200: {"description": "The bytes", "content": {"application/octet-stream": {},
                                                       "application/x-tar": {}}},
         206: {"description": "The requested range",
               "content": {"application/octet-stream": {}}}},
        (400, 403, 404, 416))},
    "/files/{name}/members": {"get": Operation(
        "What a directory data set holds: member paths, sizes and types", {200: rp.Members},
        (400, 403, 404))},
    "/ingest": {"post": Operation(
        "Register what lies on a store (when ingest is allowed)", {200: rp.IngestReply},
        (400, 403, 404, 413), rq.IngestRequest)},
    "/stage": {"post": Operation(
        "Stage files into a folder of yours (or preview with dry_run)",
        {200: rp.DryRun, 202: rp.Job}, (400, 403, 404, 409, 413, 503, 507), rq.StageRequest)},
    "/jobs": {"get": Operation("Your jobs, newest first", {200: rp.JobList})},
    "/jobs/{job_id}": {
        "get": Operation("One job with its progress", {200: rp.Job}, (400, 403, 404)),
        "delete": Operation("Forget a finished job: its record and its log (not the files it "
                            "staged)", {200: rp.JobDeleted}, (400, 403, 404, 409)),
    },
    "/jobs/{job_id}/cancel": {"post": Operation(
        "Cancel a job (its worker stops within seconds)", {200: rp.Job}, (400, 403, 404))},
    "/jobs/{job_id}/retry": {"post": Operation(
        "Queue again the files a finished job did not stage (failed, unfinished, or missing "
        "then and available now); files staged already are not copied again",
        {202: rp.Job}, (400, 403, 404, 409, 507), rq.RetryRequest, body_required=False)},
    "/jobs/{job_id}/log": {"get": Operation(
        "The job's log from a byte offset (whole lines)", {200: rp.JobLog}, (400, 403, 404),
        query=rq.JobLogQuery)},
    "/peers": {"get": Operation(
        "Sites this one sends to (c.StagingApp.peers), each pinged with this site's secret, and "
        "the sites it accepts transfers from (c.StagingApp.peer_secrets)", {200: rp.PeerList})},
    "/transfers": {"post": Operation(
        "Send files to a peer: a transfer job (GET jobs/{job_id} follows it like a staging "
        "job; destination 'peer:<name>')", {202: rp.Job}, (400, 403, 404, 413, 502),
        rq.TransferRequest)},
    "/upload": {"post": Operation(
        "Upload a directory's files (by glob) into a store or to a peer: checksummed, copied "
        "and verified in parallel batches, registered, with a manifest; a re-run skips what "
        "is there already", {202: rp.Job}, (400, 403, 404, 409, 413, 503), rq.UploadRequest,
        error_notes={409: "An unfinished (queued or running) upload job writes the same "
                          "manifest (symlinks resolved) or uploads into the same folder of the "
                          "store: its id is in 'job_id'; nothing was written. Run again once "
                          "it has finished."})},
    "/standing-orders": {
        "get": Operation("Your standing orders", {200: rp.StandingOrderList}),
        "post": Operation(
            "Create a standing order: what its search matches is sent to the peer (one "
            "transfer job per evaluation) when files are ingested here and periodically; files "
            "at the peer already are never sent again", {201: rp.StandingOrder},
            (400, 403, 404, 409, 413), rq.StandingOrderRequest),
    },
    "/standing-orders/{name}": {
        "get": Operation("One standing order, with what its last evaluation did",
                         {200: rp.StandingOrder}, (400, 403, 404)),
        "delete": Operation("Delete a standing order (the jobs it launched run on)",
                            {200: rp.OrderDeleted}, (400, 403, 404)),
    },
    "/standing-orders/{name}/pause": {"post": Operation(
        "Pause a standing order: it is not evaluated until resumed", {200: rp.StandingOrder},
        (400, 403, 404))},
    "/standing-orders/{name}/resume": {"post": Operation(
        "Resume a standing order: evaluated at once, sending what matched while it was paused",
        {200: rp.StandingOrder}, (400, 403, 404))},
    "/fixity": {"get": Operation(
        "Copies by what their last fixity check found (default: bad and missing), with a "
        "count of every state and the oldest check", {200: rp.FixityReport}, (400, 403, 404),
        query=rq.FixityQuery)},
    "/fixity/audit": {"post": Operation(
        "Run one round of the periodic fixity audit now (within its budget)",
        {200: rp.FixityChecks}, (400, 403))},
    "/files/{name}/fixity": {"post": Operation(
        "Re-hash the file's copies on online stores now", {200: rp.FixityChecks},
        (400, 403, 404, 413), rq.StoreChoice, body_required=False)},
    "/files/{name}/repair": {"post": Operation(
        "Replace the file's bad or missing copies with the bytes of a good copy at this site "
        "(re-verified; every step an event)", {200: ANY_OBJECT}, (400, 403, 404, 409, 413),
        rq.StoreChoice, body_required=False)},
    "/files/{name}/deletion-policy": {"post": Operation(
        "Set the deletion policy of one copy (the first, on 'store' if given) or of every "
        "copy ('all')", {200: ANY_OBJECT}, (400, 403, 404, 413), rq.DeletionPolicyRequest)},
    "/delete-instances": {"post": Operation(
        "Delete copies of files (names, a search or a query) that the deletion rule allows: "
        "policy 'allowed' and enough other verified copies; a file's last copy never",
        {200: ANY_OBJECT}, (400, 403, 404, 413, 503), rq.DeleteInstancesRequest)},
    "/offload": {"post": Operation(
        "Move the copies of one store onto another, verified, then delete the source copies "
        "under the deletion rule", {200: ANY_OBJECT}, (400, 403, 404, 409, 413),
        rq.OffloadRequest)},
    "/staged": {"get": Operation(
        "Your staged folders (sizes, expiry, whether still intact) and how much staged data "
        "you hold where, with your quota", {200: rp.StagedListing})},
    "/staged/clean": {"post": Operation(
        "Remove expired or chosen staged folders of yours: only what is still the staged data "
        "(checked by checksum), never anything else", {200: rp.CleanReport}, (400, 403, 404),
        rq.StagedCleanRequest)},
    "/staged/records": {"get": Operation(
        "The records of your staged folders (what each must still hold); what a server in "
        "site mode checks your folders against", {200: ANY_OBJECT})},
    "/staged/records/cleaned": {"post": Operation(
        "Record that the folders of these finished jobs of yours were cleaned (sent by your "
        "server in site mode)", {200: ANY_OBJECT}, (400, 403), rq.StagedCleanedRequest)},
    "/openapi.json": {"get": Operation("This document", {200: ANY_OBJECT})},
}


class _Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema without a title on every field (the name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


@lru_cache(maxsize=1)
def component_schemas() -> dict[str, Any]:
    """Every model's JSON Schema by name (replies without defaults: a reply states none)."""
    models = [*rq.REQUEST_MODELS, *rp.REPLY_MODELS]
    _, top = models_json_schema([(m, "validation") for m in models],
                                ref_template=REF_TEMPLATE, schema_generator=_Schemas)
    schemas: dict[str, Any] = top["$defs"]
    for model in rp.REPLY_MODELS:
        for prop in schemas[model.__name__].get("properties", {}).values():
            prop.pop("default", None)
    return schemas


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query_parameters(model: type[rq.QueryModel]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI query parameters."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, schema_generator=_Schemas)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        parameter = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            parameter["description"] = prop.pop("description")
        parameters.append({**parameter, "schema": prop})
    return parameters


def _operation(template: str, op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, reply in op.replies.items():
        if isinstance(reply, dict) and "description" in reply:
            responses[str(status)] = reply  # not JSON: the whole response object
        elif isinstance(reply, dict):
            responses[str(status)] = _json(reply, op.summary)
        else:
            responses[str(status)] = _json(_ref(reply), (reply.__doc__ or reply.__name__)
                                           .strip().splitlines()[0])
    for status in op.errors:
        responses[str(status)] = _json(_ref(rp.Error),
                                       op.error_notes.get(status, ERROR_MEANINGS[status]))
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": PATH_PARAMETERS[name]}
                  for name in re.findall(r"\{(\w+)\}", template)]
    if op.query is not None:
        parameters += _query_parameters(op.query)
    out: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required,
                              "content": {"application/json": {"schema": _ref(op.body)}}}
    return out


@lru_cache(maxsize=1)
def _paths() -> dict[str, Any]:
    return {template: {verb: _operation(template, op) for verb, op in verbs.items()}
            for template, verbs in OPERATIONS.items()}


def openapi_document(version: str, max_search_limit: int | None = None) -> dict[str, Any]:
    """The document; ``max_search_limit`` (this server's ``c.StagingApp.max_search_limit``,
    what ``SearchRequest`` and ``FixityQuery`` enforce) becomes the maximum of their
    ``limit``."""
    schemas, paths = copy.deepcopy(component_schemas()), copy.deepcopy(_paths())
    if max_search_limit is not None:
        schemas["SearchRequest"]["properties"]["limit"]["maximum"] = max_search_limit
        for parameter in paths["/fixity"]["get"]["parameters"]:
            if parameter["name"] == "limit":
                parameter["schema"]["maximum"] = max_search_limit
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
        "paths": paths,
    }


def main(argv: list[str]) -> None:
    """Write the document (this package's version, the default search limit) to ``argv[0]``,
    or to standard output."""
    text = json.dumps(openapi_document(__version__, MAX_LIMIT), indent=2) + "\n"
    if argv:
        with open(argv[0], "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
