"""The API's one contract: the OpenAPI document is generated from the request and reply models
and the served routes; the copy the panel's TypeScript types are built from is current; the
search page limit the document advertises is the one a search is held to."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jsonschema
import pytest
from tornado.web import RequestHandler

from hera_stage_ext.api.models import StagedCleanRequest, StageRequest
from hera_stage_ext.api.openapi import main, openapi_document
from hera_stage_ext.api.routes import NATIVE_ROUTES
from hera_stage_ext.catalogue.search import MAX_LIMIT
from hera_stage_ext.errors import InvalidRequest
from hera_stage_ext.states import FixityState, FolderState, JobState

from .api_fixtures import *  # noqa: F403

COMMITTED = Path(__file__).resolve().parents[1] / "labextension" / "openapi.json"
VERBS = ("get", "post", "put", "patch", "delete")
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_the_panels_copy_of_the_document_is_current():
    """labextension/openapi.json is what the TypeScript types are generated from (at build
    time, without a server): it must be today's document."""
    committed = json.loads(COMMITTED.read_text())
    assert committed == openapi_document(committed["info"]["version"], MAX_LIMIT), (
        "labextension/openapi.json is stale: run "
        "`python -m hera_stage_ext.api.openapi labextension/openapi.json`")


@pytest.mark.parametrize(("schema", "field", "states"), [
    ("Job", "state", JobState), ("Instance", "fixity", FixityState),
    ("FixityFinding", "state", FixityState), ("StagedFolder", "state", FolderState),
    ("CleanedFolder", "state", FolderState)])
def test_the_document_lists_every_state_a_reply_holds(schema, field, states):
    """The reply models spell the states out for the document (a Literal: inline, as the
    panel's types expect); they are ``states.py``'s, every one, so a reply never holds a state
    the document does not list."""
    document = openapi_document("0", MAX_LIMIT)
    assert document["components"]["schemas"][schema]["properties"][field]["enum"] == [
        state.value for state in states]


def test_main_writes_the_document(tmp_path):
    out = tmp_path / "openapi.json"
    main([str(out)])
    document = json.loads(out.read_text())
    assert document == openapi_document(document["info"]["version"], MAX_LIMIT)


def test_every_verb_served_is_documented_and_nothing_else():
    document = openapi_document("0")
    for template, handler in NATIVE_ROUTES.items():
        served = {verb for verb in VERBS
                  if getattr(handler, verb) is not getattr(RequestHandler, verb)}
        assert set(document["paths"][template]) == served, template


def test_a_bad_body_names_its_field():
    with pytest.raises(InvalidRequest, match="'dry_run' must be true or false"):
        StageRequest.parse({"names": ["a"], "destination": "d", "dry_run": "yes"})
    with pytest.raises(InvalidRequest, match=r"'names' must be a non-empty list"):
        StageRequest.parse({"names": ["a", 3], "destination": "d"})
    with pytest.raises(InvalidRequest, match="exactly one of 'names'"):
        StageRequest.parse({"names": ["a"], "query": "x", "destination": "d"})
    # A path no file system holds is refused before any folder is looked for (was a 500).
    with pytest.raises(InvalidRequest, match="'folders' entry must not contain NUL"):
        StagedCleanRequest.parse({"folders": ["ok", "a\x00b"], "expired": True})


@pytest.fixture
def staging_config():
    return {"max_search_limit": 20_000}


@sqlite_only
async def test_a_configured_search_limit_is_advertised_and_enforced(api, ingested):
    """c.StagingApp.max_search_limit above the default: the document says it and a search
    may ask for that many (on main the catalogue refused anything over 10,000)."""
    code, document = await api("GET", "openapi.json")
    assert code == 200
    limit = document["components"]["schemas"]["SearchRequest"]["properties"]["limit"]
    assert limit["maximum"] == 20_000
    code, reply = await api("POST", "search", {"query": "zen.*", "limit": 15_000})
    assert code == 200, reply
    assert reply["results"] and reply["next_cursor"] is None
    code, reply = await api("POST", "search", {"query": "zen.*", "limit": 20_001})
    assert code == 400 and "'limit' must be an integer from 1 to 20000" in reply["message"]


@sqlite_only
async def test_a_staged_listing_is_as_documented(api, ingested):
    """GET staged after a job staged a folder, and a clean of it (dry run, then done): the
    replies the staged-data view reads validate against the document's StagedListing and
    CleanReport."""
    code, job = await api("POST", "stage", {"query": "session:2457646", "destination": "one"})
    assert code == 202, job
    deadline = time.monotonic() + 60
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)
        _, job = await api("GET", f"jobs/{job['id']}")
    assert job["state"] == "succeeded", job
    _, document = await api("GET", "openapi.json")

    def check(value: object, schema: str) -> None:
        jsonschema.validate(value, {**document, "$ref": f"#/components/schemas/{schema}"},
                            cls=jsonschema.Draft202012Validator)

    code, listing = await api("GET", "staged")
    assert code == 200 and [f["state"] for f in listing["folders"]] == ["intact"], listing
    check(listing, "StagedListing")
    folder = document["components"]["schemas"]["StagedFolder"]
    assert set(folder["required"]) <= set(listing["folders"][0])
    for dry_run in (True, False):
        code, report = await api("POST", "staged/clean", {"folders": ["one"],
                                                          "dry_run": dry_run})
        assert code == 200 and report["dry_run"] is dry_run, report
        check(report, "CleanReport")
    assert report["removed_files"] == job["files_total"] and report["cleaned_jobs"] == [job["id"]]
